"""New tokens per second of guided data generation: transformers' CFG path vs pvutils.sampling
(`--plain`: unguided interview generation, `model.generate` vs the same sampler).

Every path gets the same rows (persona / anti-persona chats of the data stage's eleven
conditions over the training prompts, as `data._guided` builds them) and the cpu profile's
settings (guidance γ 2 so scale 3, temperature 0.7, top-p 0.9). transformers' own path, which
the data stage used until now, is `models.chat(..., sampler="transformers")`:
`model.generate(guidance_scale=3, negative_prompt_ids=...)`, a second, separate forward per
step for the negative prompt. `--old-sampler REV` adds `sampling.guided_chat` as it was at git
revision REV. The new one is `sampling.guided_chat`. The machine is shared: each path runs
`--repeats` times, interleaved, the best rate counts, and the load average is printed beside
every run.

    PYTHONPATH=. python benchmarks/bench_generation.py [--rows 88] [--old-sampler 8669257]
    PYTHONPATH=. python benchmarks/bench_generation.py --plain --rows 44 --old-batch 44 \
        --new-batches 44
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import torch

from pvutils.data import _condition_personas, training_prompts
from pvutils.evaluation import interview_script
from pvutils.models import chat, load_model, load_tokenizer
from pvutils.profiles import CONDITIONS, get_profile
from pvutils.sampling import guided_chat

# the data stage's conditions: the ten and the domain vector's character
DATA_CONDITIONS = [*CONDITIONS, "domain_captain_mara"]


def rows(n: int, conditions: list[str]) -> tuple[list, list]:
    bank = training_prompts()
    convs, negs = [], []
    for k in range(n):
        persona, anti = _condition_personas(conditions[k % len(conditions)])
        user = {"role": "user", "content": bank[k % len(bank)]}
        convs.append([{"role": "system", "content": persona}, user])
        negs.append([{"role": "system", "content": anti}, user])
    return convs, negs


def interview_rows(n: int) -> list:
    """The interview's chats (the real-person system prompt, each BFI question in turn)."""
    system, items = interview_script()
    return [[{"role": "system", "content": system},
             {"role": "user", "content": items[k % len(items)].question}] for k in range(n)]


def sampler_at(rev: str):
    """`pvutils/sampling.py` as it was at git revision `rev`, imported under another name."""
    src = subprocess.run(["git", "show", f"{rev}:pvutils/sampling.py"], check=True,
                         capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "pvutils_sampling_old.py")
    with open(path, "w") as f:
        f.write(src.replace("from .progress import", "from pvutils.progress import"))
    spec = importlib.util.spec_from_file_location("pvutils_sampling_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def new_tokens(tokenizer, replies: list[str]) -> int:
    """Tokens of the replies (+1 per reply for its EOS or the cut): the same count for both."""
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) + 1 for r in replies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=88)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=40, help="the cpu profile's")
    ap.add_argument("--old-batch", type=int, default=40, help="the old cpu gen_batch_size")
    ap.add_argument("--new-batches", type=int, nargs="+", default=[88])
    ap.add_argument("--old-sampler", metavar="REV", help="also time guided_chat as of REV")
    ap.add_argument("--plain", action="store_true",
                    help="unguided interview rows (the interview's settings) instead")
    args = ap.parse_args()
    prof = get_profile("cpu")
    model, tok = load_model(args.model), load_tokenizer(args.model)
    convs, negs = rows(args.rows, DATA_CONDITIONS)
    kw = dict(guidance_scale=1.0 + prof.guidance_gamma, max_new_tokens=args.max_new_tokens,
              temperature=prof.gen_temperature, top_p=prof.gen_top_p, seed=0, progress=False)
    if args.plain:  # the interview's rows and settings (evaluation.interview): no guidance
        convs, negs = interview_rows(args.rows), None
        kw.update(guidance_scale=1.0, temperature=prof.eval_temperature, top_p=1.0)
    paths = {f"transformers generate{'' if args.plain else '+CFG'} (batch {args.old_batch})":
             lambda: chat(model, tok, convs, negative_conversations=negs,
                          batch_size=args.old_batch, sampler="transformers", **kw)}
    if args.old_sampler:
        old = sampler_at(args.old_sampler)
        paths[f"guided_chat @{args.old_sampler} (batch {args.old_batch})"] = (
            lambda: old.guided_chat(model, tok, convs, negs, batch_size=args.old_batch, **kw))
    for b in args.new_batches:
        paths[f"new sampling.guided_chat (batch {b})"] = (
            lambda b=b: guided_chat(model, tok, convs, negs, batch_size=b, **kw))
    print(f"{args.rows} rows, {args.max_new_tokens} new tokens max, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    for rep in range(args.repeats):
        for name, run in paths.items():
            load = os.getloadavg()[0]
            t, cpu = time.perf_counter(), time.process_time()
            replies = run()
            sec, cpu = time.perf_counter() - t, time.process_time() - cpu
            n = new_tokens(tok, replies)
            best[name] = max(best.get(name, 0.0), n / sec)
            best_cpu[name] = max(best_cpu.get(name, 0.0), n / cpu)
            # CPU seconds (all threads) stay meaningful when the machine is oversubscribed
            print(f"run {rep}  {name:<48} {sec:7.1f} s  {n / sec:7.1f} tok/s  "
                  f"{n / cpu:7.1f} tok/CPU-s  load {load:.2f}", flush=True)
    ref = next(iter(best.values()))
    print("\nbest of runs (min wall time), ratio against transformers generate:")
    ref_cpu = next(iter(best_cpu.values()))
    for name, rate in best.items():
        print(f"  {name:<48} {rate:7.1f} tok/s  x{rate / ref:.2f}   "
              f"{best_cpu[name]:7.1f} tok/CPU-s  x{best_cpu[name] / ref_cpu:.2f}")


if __name__ == "__main__":
    main()
