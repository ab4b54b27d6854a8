"""How many α points per minute the likelihood-contrast BFI scores on this machine.

An α point = change the weights in place (here: add α·δ to every MLP down projection, a
stand-in for `merging.applied`), score, restore. Measured for one trait (extraversion, 8
items) and for all five (44 items), with the prefix-sharing path and the plain padded path.
Targets (2 CPU cores, SmolLM2-135M): >= 6 points/min for one trait, >= 2 for all five.

    .venv/bin/python benchmarks/bench_contrast.py [--repeats 3] [--plain]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pvutils.artifacts import REPO_ROOT, write_json
from pvutils.evaluation import contrast_scores
from pvutils.models import load_model, load_tokenizer


def alpha_point(model, tokenizer, deltas, alpha, dimensions, share_prefix):
    with torch.no_grad():
        for p, d in deltas:
            p.add_(d, alpha=alpha)
    try:
        return contrast_scores(model, tokenizer, dimensions, share_prefix=share_prefix)
    finally:
        with torch.no_grad():
            for p, d in deltas:
                p.sub_(d, alpha=alpha)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--plain", action="store_true", help="also time the unshared padded path")
    args = ap.parse_args()
    model, tok = load_model(args.model), load_tokenizer(args.model)
    torch.manual_seed(0)
    deltas = [(p, 1e-3 * torch.randn_like(p)) for n, p in model.named_parameters()
              if n.endswith("mlp.down_proj.weight")]
    contrast_scores(model, tok, ["extraversion"])  # warm-up
    rows = []
    paths = [True, False] if args.plain else [True]
    for share in paths:
        for label, dims in (("one trait", ["extraversion"]), ("all five", None)):
            times, cpu, scores = [], [], []
            for k in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                scores.append(alpha_point(model, tok, deltas, 0.5 * (k + 1), dims, share))
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            per_point, cpu_point = sorted(times)[len(times) // 2], sorted(cpu)[len(cpu) // 2]
            rows.append(dict(scope=label, share_prefix=share, seconds_per_point=per_point,
                             points_per_minute=60 / per_point, cpu_seconds_per_point=cpu_point,
                             times=times, cpu_times=cpu, load_average=os.getloadavg()[0],
                             threads=torch.get_num_threads(), scores=scores))
            # on a busy machine wall time measures the neighbours; CPU time (all threads)
            # is what one point costs: with one thread it is the wall time of an idle core
            print(f"{label:9s} share_prefix={share!s:5s}  wall {per_point:6.2f} s/point "
                  f"({60 / per_point:5.1f}/min)  CPU {cpu_point:6.2f} s/point "
                  f"({60 / cpu_point:5.1f}/min per core)  load avg {os.getloadavg()[0]:.1f}, "
                  f"{torch.get_num_threads()} threads", flush=True)
    out = REPO_ROOT / "benchmarks" / "out" / "bench_contrast.json"
    write_json(out, {"model": args.model, "cpus": os.cpu_count(), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
