"""Sweep-side throughput of the embedded model on one device: merge, in-place apply, score,
generate (run by benchmarks/gpu_check.sh; works on CPU too, for comparison).

    python benchmarks/bench_gpu.py --device cuda --out /tmp/bench_gpu.json

- merge: `merging.merge_vectors` of 3 synthetic vectors (TA, TIES density 0.2), seconds.
- apply: `merging.applied` enter + exit with one vector (reuse_buffers, as the sweeps),
  median of 5, and whether the weights came back bitwise.
- RQ1 / RQ2 points per minute: apply + contrast score of one trait / all five traits.
- generation: the 44 interview questions, sampled at 0.6, 48 new tokens, one batch: new
  tokens per second (transformers backend).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pvutils import evaluation, merging, models  # noqa: E402


def timed(fn, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model = models.load_model(args.model, device=args.device)
    tok = models.load_tokenizer(args.model)
    gen = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    vecs = [{n: 1e-3 * torch.randn(p.shape, generator=gen) for n, p in params.items()}
            for _ in range(3)]
    rows: dict[str, object] = {"device": args.device, "torch": torch.__version__,
                               "gpu": torch.cuda.get_device_name() if args.device == "cuda"
                               else None}
    rows["merge TA, 3 vectors (s)"] = timed(lambda: merging.merge_vectors(vecs, [0.3, -0.2, 0.5]))
    rows["merge TIES 0.2, 3 vectors (s)"] = timed(lambda: merging.merge_vectors(
        vecs, [0.3, -0.2, 0.5], method="ties", density=0.2))
    before = {n: p.detach().clone() for n, p in params.items()}

    def apply_once():
        with merging.applied(model, [vecs[0]], [1.0], reuse_buffers=True):
            pass

    apply_once()  # first call allocates the reused buffers
    rows["apply + restore, 1 vector (s)"] = timed(apply_once, repeats=5)
    rows["restored bitwise"] = all(torch.equal(p, before[n]) for n, p in params.items())

    def point(traits):
        with merging.applied(model, [vecs[0]], [1.0], reuse_buffers=True):
            evaluation.contrast_scores(model, tok, traits)

    point(["extraversion"])  # warm-up (kernels, caches)
    rows["RQ1 points/min (1 trait)"] = 60 / timed(lambda: point(["extraversion"]), repeats=3)
    rows["RQ2 points/min (5 traits)"] = 60 / timed(lambda: point(None), repeats=2)
    convos = [[{"role": "system", "content": evaluation.REAL_PERSON_PROMPT},
               {"role": "user", "content": q}] for q in evaluation.interview_questions()]
    seconds = timed(lambda: models.chat(model, tok, convos, max_new_tokens=48, temperature=0.6,
                                        batch_size=44, progress=False))
    rows["generation, 44 x 48 tokens (new tok/s)"] = 44 * 48 / seconds  # upper bound: no early EOS
    width = max(map(len, rows))
    for key, value in rows.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"| {key:<{width}} | {shown} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0 if rows["restored bitwise"] else 1


if __name__ == "__main__":
    sys.exit(main())
