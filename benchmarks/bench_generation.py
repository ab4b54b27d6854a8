"""New tokens per second of guided data generation: transformers' CFG path vs pvutils.sampling.

Both paths get the same rows (persona / anti-persona chats of several conditions over the
training prompts, as `data._guided` builds them) and the cpu profile's settings (guidance
γ 2 so scale 3, temperature 0.7, top-p 0.9). The old path is `models.chat(...,
batched_guidance=False)`: `model.generate` with a second, separate forward per step for the
negative prompt. The new one is `sampling.guided_chat`, one forward over 2B rows per step.
The machine is shared: each is run `--repeats` times, interleaved, and the minimum wall time
counts; the load average is printed beside every run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_generation.py [--rows 96] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from pvutils.data import _condition_personas, training_prompts
from pvutils.models import chat, load_model, load_tokenizer
from pvutils.profiles import get_profile
from pvutils.sampling import guided_chat


def rows(n: int, conditions: list[str]) -> tuple[list, list]:
    bank = training_prompts()
    convs, negs = [], []
    for k in range(n):
        persona, anti = _condition_personas(conditions[k % len(conditions)])
        user = {"role": "user", "content": bank[k % len(bank)]}
        convs.append([{"role": "system", "content": persona}, user])
        negs.append([{"role": "system", "content": anti}, user])
    return convs, negs


def new_tokens(tokenizer, replies: list[str]) -> int:
    """Tokens of the replies (+1 per reply for its EOS or the cut): the same count for both."""
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in replies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=56)
    ap.add_argument("--old-batch", type=int, default=40, help="the cpu profile's gen_batch_size")
    ap.add_argument("--new-batches", type=int, nargs="+", default=[48, 96])
    args = ap.parse_args()
    prof = get_profile("cpu")
    model, tok = load_model(args.model), load_tokenizer(args.model)
    conds = ["agreeableness_low", "conscientiousness_low", "extraversion_low",
             "openness_high", "neuroticism_high", "extraversion_high"]
    convs, negs = rows(args.rows, conds)
    kw = dict(guidance_scale=1.0 + prof.guidance_gamma, max_new_tokens=args.max_new_tokens,
              temperature=prof.gen_temperature, top_p=prof.gen_top_p, seed=0, progress=False)
    paths = {f"old models.chat (generate+CFG, batch {args.old_batch})":
             lambda: chat(model, tok, convs, negative_conversations=negs,
                          batch_size=args.old_batch, batched_guidance=False, **kw)}
    for b in args.new_batches:
        paths[f"new sampling.guided_chat (batch {b})"] = (
            lambda b=b: guided_chat(model, tok, convs, negs, batch_size=b, **kw))
    print(f"{args.rows} rows, {args.max_new_tokens} new tokens max, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    best: dict[str, float] = {}
    for rep in range(args.repeats):
        for name, run in paths.items():
            load = os.getloadavg()[0]
            t = time.perf_counter()
            replies = run()
            sec = time.perf_counter() - t
            rate = new_tokens(tok, replies) / sec
            best[name] = max(best.get(name, 0.0), rate)
            print(f"run {rep}  {name:<48} {sec:7.1f} s  {rate:7.1f} tok/s  load {load:.2f}",
                  flush=True)
    old = next(iter(best.values()))
    print("\nbest of runs (min wall time):")
    for name, rate in best.items():
        print(f"  {name:<48} {rate:7.1f} tok/s  x{rate / old:.2f}")


if __name__ == "__main__":
    main()
