"""Sweep-side throughput of the embedded model on one device: merge, in-place apply, score,
generate (run by benchmarks/gpu_check.sh; works on CPU too, for comparison).

    python benchmarks/bench_gpu.py --device cuda --out /tmp/bench_gpu.json

- merge: `merging.merge_vectors` of 3 synthetic vectors (TA, TIES density 0.2), seconds.
- apply: `merging.applied` enter + exit with one vector (reuse_buffers, as the sweeps),
  median of 5, and whether the weights came back bitwise.
- RQ1 / RQ2 points per minute: apply + contrast score of one trait / all five traits.
- generation: the 44 interview questions, sampled at 0.6, 48 new tokens, one batch: new
  tokens per second (transformers backend).
- interview (`--parts interview`): the RQ1 interview sweep (`plans.interview_sweep`, the
  persona judge) over 2 points (base, alpha 1 of a synthetic vector), 5 samples x 8
  questions x <= 64 tokens, on the transformers backend and, where vLLM imports and the
  device is CUDA, on vLLM (`generation_backend="vllm"`, eager mode: no CUDA graphs, so a
  lower bound on its speed): the sweep's seconds, one trait's interview (40 replies),
  the vLLM start and the in-place weight sync, and the share of the 44 greedy answers that
  are identical on both backends.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
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


def synthetic_vectors(model, n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [{name: 1e-3 * torch.randn(p.shape, generator=gen)
             for name, p in model.named_parameters()} for _ in range(n)]


def merge_part(model, tok, rows: dict) -> None:
    params = dict(model.named_parameters())
    vecs = synthetic_vectors(model, 3)
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
    system, items = evaluation.interview_script()
    convos = [[{"role": "system", "content": system}, {"role": "user", "content": it.question}]
              for it in items]
    seconds = timed(lambda: models.chat(model, tok, convos, max_new_tokens=48, temperature=0.6,
                                        batch_size=44, progress=False))
    rows["generation, 44 x 48 tokens (new tok/s)"] = 44 * 48 / seconds  # upper bound: no early EOS


def interview_part(model, tok, path: str, device: str, rows: dict) -> None:
    from pvutils import vectors
    from pvutils.profiles import get_profile

    home = Path(tempfile.mkdtemp(prefix="bench_interview."))
    os.environ["PVUTILS_HOME"] = str(home)  # a fresh point cache: every point is computed
    vec = {"extraversion_high": str(vectors.save_vector(
        synthetic_vectors(model, 1)[0], home / "xh.safetensors",
        {"condition": "extraversion_high"}))}
    P = get_profile("smoke", model=path, device=device, n_samples=5, eval_max_new_tokens=64,
                    interview_alphas=(1.0,))
    names = ["transformers"]
    if importlib.util.find_spec("vllm") is not None and device.startswith("cuda"):
        names.append("vllm")
    greedy = {name: backend_rows(P.replace(generation_backend=name), model, tok, vec, rows)
              for name in names}
    if len(greedy) == 2:
        same = sum(a == b for a, b in zip(*greedy.values()))
        rows["greedy answers identical on both backends"] = f"{same} of {len(greedy['vllm'])}"


def backend_rows(P, model, tok, vec, rows: dict) -> list[str]:
    """One backend's interview rows; its 44 greedy answers."""
    from pvutils import backends, plans

    name = P.generation_backend
    if name == "vllm":
        t = time.perf_counter()
        engine = backends.VLLMChat.start(P.model, dtype=P.dtype, seed=P.seed,
                                         gpu_memory_utilization=0.3, enforce_eager=True)
        rows["vllm: engine start (s)"] = time.perf_counter() - t
        backends.use_engine(P, engine)
        rows["vllm: weight sync, 135M params (s)"] = timed(lambda: engine.load_weights(model),
                                                           repeats=3)
    tables = []
    rows[f"{name}: interview sweep, 2 points (s)"] = timed(
        lambda: tables.append(plans.interview_sweep(model, tok, vec, P, ["persona"])))
    rows[f"{name}: sweep rows, all scores finite"] = \
        f"{len(tables[0])}, {bool(tables[0]['score'].notna().all())}"
    rows[f"{name}: one trait, 40 x <=64 tokens (s)"] = timed(lambda: evaluation.interview(
        backends.generator(P, model), tok, n_samples=5, temperature=0.6, max_new_tokens=64,
        seed=1, dimensions=["extraversion"], progress=False), repeats=2)
    return list(evaluation.interview(backends.generator(P, model), tok, n_samples=1,
                                     temperature=0.0, max_new_tokens=32,
                                     progress=False)["answer"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--parts", default="merge", help="comma-separated: merge, interview")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    path = str(models.resolve_model_dir(args.model))
    model = models.load_model(path, device=args.device)
    tok = models.load_tokenizer(path)
    rows: dict[str, object] = {"device": args.device, "torch": torch.__version__,
                               "gpu": torch.cuda.get_device_name() if args.device == "cuda"
                               else None}
    parts = args.parts.split(",")
    if "merge" in parts:
        merge_part(model, tok, rows)
    if "interview" in parts:
        interview_part(model, tok, path, args.device, rows)
    width = max(map(len, rows))
    for key, value in rows.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"| {key:<{width}} | {shown} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0 if rows.get("restored bitwise", True) else 1


if __name__ == "__main__":
    sys.exit(main())
