"""Merging: equal to mergekit 0.1.5, and how much faster / leaner (issue #3).

    .venv/bin/python benchmarks/bench_merge.py                # all three parts
    .venv/bin/python benchmarks/bench_merge.py --parts equivalence

(a) equivalence: the same YAML through mergekit and through `python -m pvutils merge`, on
    small random Llamas, for task arithmetic, per-tensor TIES (normalize true / false) and
    Model Breadcrumbs (with and without TIES's sign election);
    reports the max |difference| over all tensors.
(b) performance: SmolLM2-135M-Instruct with 5 synthetic fine-tunes (base + small random
    deltas, float32): wall time and peak RSS (/usr/bin/time -v) of mergekit vs ours for task
    arithmetic and TIES (density 0.2), and the time of `applied` (in place + restore).
(c) paper scale, simulated: sharded bf16 checkpoints shaped like Llama-3.1-8B layers
    (hidden 4096, intermediate 14336, vocab 128256, 2 layers): our peak RSS vs tensor sizes.

mergekit lives in its own venv ($MERGEKIT_VENV, default benchmarks/out/mergekit-venv):
torch==2.13.0 first (the CPU build), then mergekit==0.1.5. Results go to
benchmarks/out/bench_merge.json and a Markdown table on stdout (copied into
benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
VENV = Path(os.environ.get("MERGEKIT_VENV", OUT / "mergekit-venv"))  # mergekit's own venv
PY = sys.executable
sys.path.insert(0, str(ROOT))

from pvutils.vectors import StreamingSafetensorsWriter, load_vector  # noqa: E402


def log(*args) -> None:
    print(*args, flush=True)


# --- tools ----------------------------------------------------------------------------


def ensure_mergekit() -> Path:
    """The mergekit-yaml executable of a private venv (created on first use)."""
    exe = VENV / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    log(f"creating {VENV} (torch==2.13.0 first, then mergekit==0.1.5)")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["mergekit==0.1.5"], check=True)
    return exe


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command under /usr/bin/time -v: wall seconds and peak RSS (GB)."""
    full = ["/usr/bin/time", "-v", *cmd]
    start = time.perf_counter()
    done = subprocess.run(full, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(rss_kb / 1e6, 3)}


def write_yaml(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def max_abs_diff(dir_a: Path, dir_b: Path) -> dict:
    """Max |a − b| over the tensors both model directories hold (and which differ in keys)."""
    from pvutils.vectors import SafetensorsSource

    a, b = SafetensorsSource(dir_a), SafetensorsSource(dir_b)
    common = sorted(set(a.keys()) & set(b.keys()))
    worst, worst_name, ref = 0.0, None, 0.0
    for name in common:
        x, y = a.get(name).float(), b.get(name).float()
        diff = float((x - y).abs().max())
        ref = max(ref, float(x.abs().max()))
        if diff > worst:
            worst, worst_name = diff, name
    return {"max_abs_diff": worst, "worst_tensor": worst_name, "max_abs_value": ref,
            "only_in_mergekit": sorted(set(a.keys()) - set(b.keys())),
            "only_in_ours": sorted(set(b.keys()) - set(a.keys()))}


def perturbed_copy(base_dir: Path, out_dir: Path, seed: int, scale: float) -> Path:
    """A synthetic 'fine-tune': base + scale · N(0, 1), written tensor by tensor."""
    from pvutils.vectors import SafetensorsSource

    if (out_dir / "model.safetensors").exists():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = SafetensorsSource(base_dir)
    names = src.keys()
    specs = [(n, src.shape(n), src.dtype(n)) for n in names]
    gen = torch.Generator().manual_seed(seed)
    writer = StreamingSafetensorsWriter(tmp / "model.safetensors", specs, {"format": "pt"})
    for name in names:
        t = src.get(name)
        writer.write(name, (t.float() + scale * torch.randn(t.shape, generator=gen)).to(t.dtype))
    writer.close()
    for f in base_dir.iterdir():
        if f.is_file() and f.name.endswith(".json") and "index" not in f.name and \
                not f.name.startswith("pvutils"):
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def ours_cmd(cfg: Path, out: Path) -> list[str]:
    return [PY, "-m", "pvutils", "merge", str(cfg), str(out)]


def mergekit_cmd(cfg: Path, out: Path) -> list[str]:
    return [str(ensure_mergekit()), str(cfg), str(out), "--lazy-unpickle"]


# --- (a) equivalence ------------------------------------------------------------------


def part_equivalence() -> list[dict]:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = OUT / "equivalence"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=344,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(root / "base")
    models = [perturbed_copy(root / "base", root / f"ft{i}", seed=100 + i, scale=0.02)
              for i in range(3)]
    weights, densities = [0.6, -0.4, 1.1], [0.2, 0.5, 0.9]
    cases = {  # label: (method, shared parameters, extra per-model parameters)
        "task_arithmetic": ("task_arithmetic", {}, {}),
        "task_arithmetic normalize=true": ("task_arithmetic", {"normalize": True}, {}),
        "ties (normalize=true)": ("ties", {}, {}),
        "ties normalize=false": ("ties", {"normalize": False}, {}),
        "ties normalize=true lambda=0.7": ("ties", {"normalize": True, "lambda": 0.7}, {}),
        "breadcrumbs gamma=0.05": ("breadcrumbs", {}, {"gamma": 0.05}),
        "breadcrumbs (gamma=0.01) lambda=0.7": ("breadcrumbs", {"lambda": 0.7}, {}),
        "breadcrumbs_ties gamma=0.05": ("breadcrumbs_ties", {}, {"gamma": 0.05}),
    }
    rows = []
    for label, (method, params, extra) in cases.items():
        entries = []
        for m, w, d in zip(models, weights, densities, strict=True):
            p = {"weight": w} if method == "task_arithmetic" else {"weight": w, "density": d}
            entries.append({"model": str(m), "parameters": {**p, **extra}})
        cfg = {"merge_method": method, "base_model": str(root / "base"), "models": entries,
               "dtype": "float32"}
        if params:
            cfg["parameters"] = params
        slug = re.sub(r"\W+", "_", label)
        path = write_yaml(root / f"{slug}.yml", cfg)
        measured(mergekit_cmd(path, root / f"mk_{slug}"))
        measured(ours_cmd(path, root / f"pv_{slug}"))
        diff = max_abs_diff(root / f"mk_{slug}", root / f"pv_{slug}")
        log(f"  {label}: max |mergekit − ours| = {diff['max_abs_diff']:.3g} "
            f"(largest |value| {diff['max_abs_value']:.3g}; worst {diff['worst_tensor']})")
        rows.append({"case": label, **diff})
    return rows


# --- (b) performance on SmolLM2-135M ----------------------------------------------------


def part_performance(repeats: int, merges: list[str] | None = None) -> dict:
    from pvutils.models import provision_embedded

    base = provision_embedded("smollm2-135m-instruct")
    root = OUT / "performance"
    root.mkdir(parents=True, exist_ok=True)
    models = [perturbed_copy(base, root / f"ft{i}", seed=200 + i, scale=1e-3) for i in range(5)]
    for path in [base, *models]:  # warm the page cache so both tools read from memory
        for f in Path(path).glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(1 << 26):
                    pass
    weights = [0.3, -0.2, 0.5, 0.25, 0.4]
    configs = {
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(base),
                            "models": [{"model": str(m), "parameters": {"weight": w}}
                                       for m, w in zip(models, weights, strict=True)],
                            "dtype": "float32"},
        "ties density 0.2": {"merge_method": "ties", "base_model": str(base),
                             "models": [{"model": str(m),
                                         "parameters": {"weight": w, "density": 0.2}}
                                        for m, w in zip(models, weights, strict=True)],
                             "dtype": "float32"},
    }
    results = {}
    for label, cfg in configs.items():
        if merges and not any(label.startswith(m) for m in merges):
            continue
        slug = re.sub(r"\W+", "_", label)
        path = write_yaml(root / f"{slug}.yml", cfg)
        row = {}
        for tool, make in (("mergekit", mergekit_cmd), ("ours", ours_cmd)):
            runs = []
            for _ in range(repeats):
                out = root / f"{tool}_{slug}"
                shutil.rmtree(out, ignore_errors=True)
                runs.append(measured(make(path, out)))
            row[tool] = {"wall_s": min(r["wall_s"] for r in runs),
                         "peak_rss_gb": max(r["peak_rss_gb"] for r in runs), "runs": runs}
            log(f"  {label} {tool}: {row[tool]['wall_s']} s, {row[tool]['peak_rss_gb']} GB")
        row["diff"] = max_abs_diff(root / f"mergekit_{slug}", root / f"ours_{slug}")
        row["wall_ratio"] = round(row["ours"]["wall_s"] / row["mergekit"]["wall_s"], 3)
        row["rss_ratio"] = round(row["ours"]["peak_rss_gb"] / row["mergekit"]["peak_rss_gb"], 3)
        log(f"  {label}: ours/mergekit wall {row['wall_ratio']}, memory {row['rss_ratio']}, "
            f"max |diff| {row['diff']['max_abs_diff']:.3g}")
        results[label] = row
    results["applied"] = time_applied(base, models[0], root)
    return results


def time_applied(base: Path, finetuned: Path, root: Path) -> dict:
    """Enter + exit `applied` with one vector on the loaded model (TA, weight 1): a fresh
    merged tensor per call, and with `reuse_buffers=True` as the sweeps use it."""
    from pvutils.merging import applied, release_buffers
    from pvutils.models import load_model
    from pvutils.vectors import extract_vector

    vec_path = extract_vector(base, finetuned, root / "vector0.safetensors")
    model = load_model(base)
    vector = load_vector(vec_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = {"in_memory_vector": (vector, False), "vector_file": (vec_path, False),
             "in_memory_vector_reuse_buffers": (vector, True)}
    timings = {kind: [] for kind in cases}
    for _ in range(7):
        for kind, (source, reuse) in cases.items():
            start = time.perf_counter()
            with applied(model, [source], [1.0], reuse_buffers=reuse):
                pass
            timings[kind].append(time.perf_counter() - start)
    release_buffers(model)
    restored = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    out = {k: round(statistics.median(v), 4) for k, v in timings.items()}
    out["restored_bitwise"] = restored
    log(f"  applied + restore (median of 7): {out}")
    return out


def part_applied() -> dict:
    from pvutils.models import provision_embedded

    base = provision_embedded("smollm2-135m-instruct")
    root = OUT / "performance"
    root.mkdir(parents=True, exist_ok=True)
    return time_applied(base, perturbed_copy(base, root / "ft0", seed=200, scale=1e-3), root)


# --- (c) paper-scale memory -------------------------------------------------------------

LLAMA8B = dict(hidden=4096, intermediate=14336, vocab=128256, heads=32, kv_heads=8)


def llama8b_like_specs(layers: int) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    h, i, v = LLAMA8B["hidden"], LLAMA8B["intermediate"], LLAMA8B["vocab"]
    kv = h // LLAMA8B["heads"] * LLAMA8B["kv_heads"]
    specs = [("model.embed_tokens.weight", (v, h))]
    for n in range(layers):
        p = f"model.layers.{n}."
        specs += [(p + "input_layernorm.weight", (h,)),
                  (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                  (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                  (p + "post_attention_layernorm.weight", (h,)),
                  (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                  (p + "mlp.down_proj.weight", (h, i))]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return [(n, s, torch.bfloat16) for n, s in specs]


def write_sharded(out: Path, specs, seed: int, base: Path | None, scale: float,
                  shard_bytes: int = 1 << 30) -> Path:
    """A sharded bf16 checkpoint (index json), one tensor in memory at a time."""
    from pvutils.merging import plan_shards
    from pvutils.vectors import SafetensorsSource

    if (out / "model.safetensors.index.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    src = SafetensorsSource(base) if base else None
    weight_map = {}
    for shard, shard_specs in plan_shards(specs, shard_bytes):
        writer = StreamingSafetensorsWriter(tmp / shard, shard_specs, {"format": "pt"})
        for name, shape, dtype in shard_specs:
            if src is None:
                t = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
            else:
                t = (src.get(name).float() + scale * torch.randn(shape, generator=gen)).to(dtype)
            writer.write(name, t)
            weight_map[name] = shard
            del t
        writer.close()
    total = sum(math.prod(s) * 2 for _, s, _ in specs)
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    h = LLAMA8B
    (tmp / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h["hidden"],
        "intermediate_size": h["intermediate"], "vocab_size": h["vocab"],
        "num_attention_heads": h["heads"], "num_key_value_heads": h["kv_heads"],
        "num_hidden_layers": sum(1 for n, _, _ in specs if n.endswith("q_proj.weight")),
        "torch_dtype": "bfloat16", "tie_word_embeddings": False}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def part_scale(layers: int) -> dict:
    root = OUT / "scale"
    root.mkdir(parents=True, exist_ok=True)
    specs = llama8b_like_specs(layers)
    base = write_sharded(root / "base", specs, seed=1, base=None, scale=0)
    models = [write_sharded(root / f"ft{i}", specs, seed=10 + i, base=base, scale=1e-3)
              for i in range(2)]
    model_gb = sum(math.prod(s) * 2 for _, s, _ in specs) / 1e9
    largest = max(specs, key=lambda s: math.prod(s[1]))
    largest_gb = math.prod(largest[1]) * 2 / 1e9
    log(f"  model: {model_gb:.2f} GB bf16 ({layers} layers); largest tensor {largest[0]} "
        f"{list(largest[1])} = {largest_gb:.2f} GB bf16, {2 * largest_gb:.2f} GB float32")
    results = {"model_gb_bf16": round(model_gb, 3), "largest_tensor": largest[0],
               "largest_tensor_gb_bf16": round(largest_gb, 3), "layers": layers}
    for label, method, extra in (("task_arithmetic", "task_arithmetic", {}),
                                 ("ties density 0.2", "ties", {"density": 0.2})):
        cfg = {"merge_method": method, "base_model": str(base), "dtype": "bfloat16",
               "models": [{"model": str(m), "parameters": {"weight": 0.5, **extra}}
                          for m in models]}
        slug = re.sub(r"\W+", "_", label)
        path = write_yaml(root / f"{slug}.yml", cfg)
        out = root / f"ours_{slug}"
        shutil.rmtree(out, ignore_errors=True)
        results[label] = measured(ours_cmd(path, out))
        log(f"  {label}: {results[label]}")
        shutil.rmtree(out, ignore_errors=True)
    return results


# --- report -----------------------------------------------------------------------------


def applied_line(a: dict) -> str:
    return (f"`applied` (one vector, enter + exit, median of 7): "
            f"{a['in_memory_vector']} s with the vector in memory, "
            f"{a['in_memory_vector_reuse_buffers']} s with `reuse_buffers=True` (as in the "
            f"sweeps), {a['vector_file']} s reading it from its file; "
            f"restored bitwise: {a['restored_bitwise']}.")


def markdown(res: dict) -> str:
    lines = [f"Run {res['date']} on {res['machine']} (`{res['command']}`); load average "
             f"(1, 5, 15 min) {res.get('load_before')} before, {res.get('load_after')} after.",
             ""]
    if "equivalence" in res:
        lines += ["**(a) Equivalence with mergekit 0.1.5** (random Llama, 3 models, weights "
                  "0.6 / −0.4 / 1.1, densities 0.2 / 0.5 / 0.9, float32)", "",
                  "| case | max abs diff | largest abs value |", "| --- | --- | --- |"]
        lines += [f"| {r['case']} | {r['max_abs_diff']:.3g} | {r['max_abs_value']:.3g} |"
                  for r in res["equivalence"]]
        lines.append("")
    if "performance" in res:
        p = res["performance"]
        lines += ["**(b) SmolLM2-135M-Instruct, 5 synthetic fine-tunes, float32** "
                  "(min wall / max peak RSS over repeats, page cache warm)", "",
                  "| merge | mergekit wall | ours wall | ratio | mergekit peak RSS | "
                  "ours peak RSS | ratio | max abs diff |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label in [m for m in ("task_arithmetic", "ties density 0.2") if m in p]:
            r = p[label]
            lines.append(f"| {label} | {r['mergekit']['wall_s']} s | {r['ours']['wall_s']} s | "
                         f"{r['wall_ratio']} | {r['mergekit']['peak_rss_gb']} GB | "
                         f"{r['ours']['peak_rss_gb']} GB | {r['rss_ratio']} | "
                         f"{r['diff']['max_abs_diff']:.3g} |")
        lines += ["", applied_line(p["applied"]), ""]
    if "applied" in res:
        lines += [applied_line(res["applied"]), ""]
    if "scale" in res:
        s = res["scale"]
        lines += [f"**(c) Paper scale, simulated**: base + 2 models shaped like "
                  f"Llama-3.1-8B ({s['layers']} layers, {s['model_gb_bf16']} GB bf16 each, "
                  f"sharded 1 GB), largest tensor {s['largest_tensor']} "
                  f"{s['largest_tensor_gb_bf16']} GB bf16", "",
                  "| merge | wall | peak RSS |", "| --- | --- | --- |"]
        for label in ("task_arithmetic", "ties density 0.2"):
            lines.append(f"| {label} | {s[label]['wall_s']} s | {s[label]['peak_rss_gb']} GB |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="equivalence,performance,scale")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--merges", nargs="*",
                        help="in (b): only these merges, e.g. task_arithmetic")
    parser.add_argument("--layers", type=int, default=2, help="layers in part (c)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    res: dict = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                 "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, torch "
                            f"{torch.__version__}, {torch.get_num_threads()} threads",
                 "command": "python benchmarks/bench_merge.py " + " ".join(sys.argv[1:]),
                 "load_before": [round(x, 2) for x in os.getloadavg()]}
    if "equivalence" in parts:
        log("(a) equivalence with mergekit")
        res["equivalence"] = part_equivalence()
    if "performance" in parts:
        log("(b) performance on SmolLM2-135M")
        res["performance"] = part_performance(args.repeats, args.merges)
    if "applied" in parts and "performance" not in parts:
        log("(b') applied on SmolLM2-135M")
        res["applied"] = part_applied()
    if "scale" in parts:
        log("(c) paper-scale memory")
        res["scale"] = part_scale(args.layers)
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    (OUT / "bench_merge.json").write_text(json.dumps(res, indent=2))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
