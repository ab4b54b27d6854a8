"""Fine-tuning throughput against the machine's fp32 matmul peak, side by side.

Training GFLOP/s = 6 x parameters x trained tokens (non-padding, prompt and answer) / time
of the timed steps (every step after the first, which pays one-off costs). The peak is a
big fp32 matmul (`--peak-n` square) timed just before and just after, in the same process,
so both see the machine's load; the load average is printed beside every number. Configs:
the cpu profile as it was (padded batches, AdamW as a loop over tensors) and as it is
(fused AdamW; optionally padding-free rows). Data: the training prompts with answers of
the generated data's length (28-40 tokens), in chat format.

    PYTHONPATH=. python benchmarks/bench_training.py [--steps 5] [--batch 8]
    PYTHONPATH=. python benchmarks/bench_training.py --processes 2   # one 2-thread fine-tune
                                                 # vs two 1-thread fine-tunes at once
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import datasets
import torch
from transformers import TrainerCallback

from pvutils import models, training
from pvutils.data import training_prompts
from pvutils.profiles import get_profile

WORDS = ("I love quiet mornings with coffee and a good book, and I think the best part of "
         "any day is the time spent with friends, talking about small things that matter "
         "to us, like music, walks in the park and plans for the weekend ahead.").split()


def matmul_peak(n: int, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n fp32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def chats(n: int, seed: int = 0) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    bank = training_prompts()
    rows = []
    for i in range(n):
        k = int(torch.randint(22, 32, (1,), generator=g))  # ~28-40 tokens
        start = int(torch.randint(0, len(WORDS) - k, (1,), generator=g))
        rows.append({"messages": [{"role": "user", "content": bank[i % len(bank)]},
                                  {"role": "assistant",
                                   "content": " ".join(WORDS[start:start + k]) + "."}]})
    return datasets.Dataset.from_list(rows)


class StepClock(TrainerCallback):
    """Wall time of every step after the first."""

    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def run(name: str, overrides: dict, data, steps: int, batch: int, tokenizer) -> dict:
    fields = {k: v for k, v in overrides.items() if k != "_args"}
    profile = get_profile("cpu", train_batch_size=batch, train_epochs=1.0, **fields)
    model = models.load_model(profile.model).train()
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as out:
        trainer = training.build_trainer(profile, model, tokenizer, data, out)
        for key, value in overrides.get("_args", {}).items():
            setattr(trainer.args, key, value)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.args.max_steps = steps + 1
        load = os.getloadavg()[0]
        trainer.train()
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    per_step = batch * sum(lengths) / len(lengths)  # tokens of an average step
    sec = sum(clock.times[1:]) / max(len(clock.times) - 1, 1)
    return {"config": name, "s/step": sec, "tok/s": per_step / sec,
            "GFLOP/s": 6 * n_params * per_step / sec / 1e9, "load": load}


def worker_command(steps: int, batch: int, threads: int) -> tuple[list[str], dict]:
    """One padding-free fine-tune (the cpu profile's) in a fresh process with `threads`."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return [sys.executable, __file__, "--worker", "--steps", str(steps), "--batch",
            str(batch)], env


def side_by_side(steps: int, batch: int, processes: int) -> None:
    """Aggregate training throughput of one fine-tune on every core, then of `processes`
    fine-tunes at once on cores / processes threads each (the same work per process)."""
    cores = os.cpu_count() or 1
    cmd, env = worker_command(steps, batch, cores)
    one = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True,
                                    check=True).stdout.splitlines()[-1])
    cmd, env = worker_command(steps, batch, max(1, cores // processes))
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(processes)]
    many = [json.loads(p.communicate()[0].splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - start
    each = [r["GFLOP/s"] for r in many]
    print(f"1 process x {cores} threads: {one['GFLOP/s']:.1f} GFLOP/s ({one['s/step']:.2f} s/step)")
    print(f"{processes} processes x {max(1, cores // processes)} threads at once: "
          f"{sum(each):.1f} GFLOP/s in all ({', '.join(f'{g:.1f}' for g in each)}; "
          f"{wall:.0f} s wall for {processes} x {steps + 1} steps)")
    total = sum(each)
    print(f"ratio: {total / one['GFLOP/s']:.2f}x the throughput of one process")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per config")
    ap.add_argument("--batch", type=int, default=8, help="the cpu profile's train_batch_size")
    ap.add_argument("--peak-n", type=int, default=4096)
    ap.add_argument("--processes", type=int, default=0,
                    help="compare one fine-tune on every core with this many at once")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.processes:
        return side_by_side(args.steps, args.batch, args.processes)
    tok = models.load_tokenizer("smollm2-135m-instruct")
    data = chats(args.batch * (args.steps + 1))
    if args.worker:
        print(json.dumps(run("padding-free", {"padding_free": True}, data, args.steps,
                             args.batch, tok)))
        return None
    configs = {
        "before: padded, AdamW loop": {"_args": {"optim": "adamw_torch"}},
        "after: padded, fused AdamW": {},
        "after: padding-free, fused AdamW": {"padding_free": True},
    }
    print(f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, batch {args.batch}")
    peak0 = matmul_peak(args.peak_n)
    print(f"peak before: {peak0:.1f} GFLOP/s  load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for name, over in configs.items():
        rows.append(run(name, over, data, args.steps, args.batch, tok))
        r = rows[-1]
        print(f"{name:<36} {r['s/step']:6.2f} s/step {r['tok/s']:7.1f} tok/s "
              f"{r['GFLOP/s']:6.1f} GFLOP/s  load {r['load']:.2f}", flush=True)
    peak1 = matmul_peak(args.peak_n)
    peak = max(peak0, peak1)
    print(f"peak after: {peak1:.1f} GFLOP/s  load {os.getloadavg()[0]:.2f}\n")
    idle = training.AVX2_PEAK_GFLOPS
    for r in rows:
        g = r["GFLOP/s"]
        print(f"  {r['config']:<36} {g:6.1f} GFLOP/s = {100 * g / peak:5.1f} % of the peak "
              f"measured here ({peak:.0f}); {100 * g / idle:5.1f} % of the idle peak {idle:.0f}")


if __name__ == "__main__":
    main()
