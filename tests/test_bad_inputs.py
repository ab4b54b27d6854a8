"""Bad input, tried as a new user would, through every entry point (issue #12).

Each case runs `python -m pvutils ...` in-process (`pvutils.__main__.main`) from a fresh
working directory. Every one must exit 1 (a refused input) or 2 (argparse), print its
error as one line naming what is wrong (no traceback), and create or delete nothing: the
listing of the working directory and of the inputs is the same before and after.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml

from pvutils.__main__ import main
from pvutils.merging import applied
from pvutils.outputs import MARKER
from pvutils.tensorio import MergeError
from pvutils.vectors import extract_vector, load_vector, save_vector, vector_metadata


def perturbed(model, seed: int, scale: float = 0.01):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def forge_header(path: Path, edit) -> Path:
    """Rewrite a safetensors header with `edit(header)`; the data bytes stay as they are."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    return path


@pytest.fixture(scope="session")
def world(tmp_path_factory, tiny_chat_model, tiny_llama_factory):
    """Inputs: a tiny chat-model base (with tokenizer), good and bad vectors and models."""
    root = tmp_path_factory.mktemp("world")
    _, tok = tiny_chat_model
    vocab = len(tok)

    def save(model, name):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        return root / name

    base = save(tiny_llama_factory(0, vocab_size=vocab), "base")
    ft = save(perturbed(tiny_llama_factory(0, vocab_size=vocab), 1), "ft")
    other = save(perturbed(tiny_llama_factory(5, vocab_size=vocab), 2), "other-base")
    other_ft = save(perturbed(tiny_llama_factory(5, vocab_size=vocab), 3), "other-ft")
    good = extract_vector(base, ft, root / "good.safetensors")
    vec = load_vector(good)
    meta = vector_metadata(good)
    extract_vector(other, other_ft, root / "foreign.safetensors")
    save_vector({k: v for k, v in vec.items() if "layers.2" not in k},
                root / "missing-keys.safetensors", meta)
    save_vector({k: v.bfloat16() for k, v in vec.items()}, root / "bf16.safetensors", meta)
    save_vector({k: v * 1e5 for k, v in vec.items()}, root / "big.safetensors", meta)
    nan = dict(vec)
    nan["model.norm.weight"] = nan["model.norm.weight"].clone()
    nan["model.norm.weight"][0] = float("nan")
    from safetensors.torch import save_file  # NaN on purpose: save_vector refuses it

    save_file(nan, str(root / "nan.safetensors"))
    shutil.copy(ft / "model.safetensors", root / "full-model.safetensors")
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((base / "config.json").read_text())
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    first, second = list(vec)[:2]
    shutil.copy(good, root / "same-range.safetensors")
    forge_header(root / "same-range.safetensors", lambda h: h[second].update(
        data_offsets=h[first]["data_offsets"], shape=h[first]["shape"]))
    shutil.copy(good, root / "short-end.safetensors")
    forge_header(root / "short-end.safetensors", lambda h: h[first].update(
        data_offsets=[h[first]["data_offsets"][0], h[first]["data_offsets"][1] - 4]))
    shutil.copy(good, root / "no-offsets.safetensors")
    forge_header(root / "no-offsets.safetensors", lambda h: h[first].pop("data_offsets"))
    data = good.read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) - 100])
    corrupt = shutil.copytree(base, root / "corrupt-model")
    (corrupt / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes()[:-64])
    (root / "binary.yml").write_bytes(bytes(range(256)) * 4)
    (root / "a-directory.yml").mkdir()
    foreign_dir = root / "not-ours"
    foreign_dir.mkdir()
    (foreign_dir / "notes.txt").write_text("precious")
    ours = root / "ours"
    ours.mkdir()
    (ours / MARKER).write_text("{}")
    return root


def config(world: Path, tmp: Path, entries=None, **extra) -> str:
    cfg = {"merge_method": "task_arithmetic", "base_model": str(world / "base"),
           "models": entries or [{"vector": str(world / "good.safetensors"),
                                  "parameters": {"weight": 0.5}}], **extra}
    path = tmp / "merge.yml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def vector_entry(world, name, **params):
    return [{"vector": str(world / name), "parameters": {"weight": 0.5, **params}}]


W, T = "{world}", "{tmp}"
# (id, argv with {world} / {tmp} placeholders or a config builder, words the message must hold)
CASES = [
    ("merge-into-cwd", ["merge", "CFG", "."], "current directory"),
    ("merge-into-parent-of-cwd", ["merge", "CFG", ".."], "parent of it"),
    ("merge-into-the-base", ["merge", "CFG", f"{W}/base"], "is or contains the input"),
    ("merge-inside-the-base", ["merge", "CFG", f"{W}/base/merged"], "lies inside the input"),
    ("merge-over-non-empty", ["merge", "CFG", f"{W}/not-ours"], "--overwrite"),
    ("merge-overwrite-not-ours", ["merge", "CFG", f"{W}/not-ours", "--overwrite"],
     "not written by pvutils"),
    ("merge-over-a-file", ["merge", "CFG", f"{W}/good.safetensors"], "is or contains the input"),
    ("config-is-a-directory", ["merge", f"{W}/a-directory.yml", f"{T}/out"],
     "no such merge config"),
    ("config-is-binary", ["merge", f"{W}/binary.yml", f"{T}/out"], "not a text file"),
    ("config-missing", ["merge", f"{T}/nope.yml", f"{T}/out"], "no such merge config"),
    ("config-malformed", ["merge", "RAW:merge_method: [unclosed", f"{T}/out"], "malformed YAML"),
    ("shard-size-negative", ["merge", "CFG:max_shard_size=-1", f"{T}/out"], "max_shard_size"),
    ("shard-size-words", ["merge", "CFG:max_shard_size=lots", f"{T}/out"], "max_shard_size"),
    ("include-a-number", ["merge", "CFG:include=5", f"{T}/out"], "include: "),
    ("weight-beyond-float32", ["merge", "VEC:good.safetensors:weight=1.0e+39", f"{T}/out"],
     "float32"),
    ("weight-overflows-result", ["merge", "VEC:big.safetensors:weight=1e36", f"{T}/out"],
     "NaN or Inf"),
    ("weight-beyond-float16", ["merge", "VEC:good.safetensors:weight=1.0e+5,dtype", f"{T}/out"],
     "float16"),
    ("weight-not-a-number", ["merge", "VEC:good.safetensors:weight=big", f"{T}/out"],
     "weight: Input should be a valid number"),
    ("lambda-beyond-float32", ["merge", "CFG:parameters={'lambda': 1.0e+39}", f"{T}/out"],
     "lambda"),
    ("density-above-one", ["merge", "VEC:good.safetensors:density=1.5", f"{T}/out"], "density"),
    ("unknown-method", ["merge", "CFG:merge_method=slerp", f"{T}/out"],
     "merge_method: unknown merge method; choose one of"),
    ("vector-missing-keys", ["merge", "VEC:missing-keys.safetensors", f"{T}/out"], "lacks"),
    ("vector-bf16-for-f32", ["merge", "VEC:bf16.safetensors", f"{T}/out"], "bfloat16"),
    ("vector-is-model-dir", ["merge", "VEC:ft", f"{T}/out"], "model directory"),
    ("vector-is-full-model", ["merge", "VEC:full-model.safetensors", f"{T}/out"], "full model"),
    ("vector-foreign-base", ["merge", "VEC:foreign.safetensors", f"{T}/out"], "other-base"),
    ("vector-with-nan", ["merge", "VEC:nan.safetensors", f"{T}/out"], "NaN"),
    ("model-pickle-only", ["merge", "MODEL:pickled", f"{T}/out"], "pickle"),
    ("header-same-range", ["merge", "VEC:same-range.safetensors", f"{T}/out"], "safetensors"),
    ("header-short-end", ["merge", "VEC:short-end.safetensors", f"{T}/out"], "safetensors"),
    ("header-no-offsets", ["merge", "VEC:no-offsets.safetensors", f"{T}/out"], "data_offsets"),
    ("vector-truncated", ["merge", "VEC:truncated.safetensors", f"{T}/out"], "safetensors"),
    ("base-mistyped-path", ["merge", "CFG:base_model={rel}/bsae", f"{T}/out"], "does not exist"),
    ("base-mistyped-dot-path", ["merge", "CFG:base_model=./base", f"{T}/out"], "does not exist"),
    ("threads-zero", ["merge", "CFG", f"{T}/out", "--threads", "0"], "--threads"),
    ("extract-into-the-base", ["extract", "--base", f"{W}/base", "--finetuned", f"{W}/ft",
                               "--out", f"{W}/base/v.safetensors"], "inside the input"),
    ("extract-missing-finetuned", ["extract", "--base", f"{W}/base", "--finetuned",
                                   f"{W}/nope", "--out", f"{T}/v.safetensors"], "nope"),
    ("extract-bad-dtype", ["extract", "--base", f"{W}/base", "--finetuned", f"{W}/ft",
                           "--out", f"{T}/v.safetensors", "--dtype", "int8"], "dtype"),
    ("extract-over-existing", ["extract", "--base", f"{W}/base", "--finetuned", f"{W}/ft",
                               "--out", f"{W}/full-model.safetensors"], "--overwrite"),
    ("extract-overwrite-not-ours", ["extract", "--base", f"{W}/base", "--finetuned", f"{W}/ft",
                                    "--out", f"{W}/full-model.safetensors", "--overwrite"],
     "not written by pvutils"),
    ("score-corrupt-model", ["score", f"{W}/corrupt-model"], "safetensors"),
    ("score-mistyped-path", ["score", "{rel}/bsae"], "does not exist"),
    ("score-mistyped-dot-path", ["score", "./base"], "does not exist"),
    ("score-vector-missing-keys", ["score", f"{W}/base", "--vector",
                                   f"{W}/missing-keys.safetensors", "--alpha", "1"], "lacks"),
    ("score-vector-bf16", ["score", f"{W}/base", "--vector", f"{W}/bf16.safetensors",
                           "--alpha", "1"], "bfloat16"),
    ("score-vector-pickle-dir", ["score", f"{W}/base", "--vector", f"{W}/pickled", "--alpha", "1"],
     "model directory"),
    ("score-vector-full-model", ["score", f"{W}/base", "--vector",
                                 f"{W}/full-model.safetensors", "--alpha", "1"], "full model"),
    ("score-vector-foreign", ["score", f"{W}/base", "--vector", f"{W}/foreign.safetensors",
                              "--alpha", "1"], "other-base"),
    ("score-alpha-overflows", ["score", f"{W}/base", "--vector", f"{W}/big.safetensors",
                               "--alpha", "1e36"], "NaN or Inf"),
    ("score-alpha-overflows-activations", ["score", f"{W}/base", "--vector",
                                           f"{W}/good.safetensors", "--alpha", "1e30"],
     "outputs"),
    ("score-alpha-nan", ["score", f"{W}/base", "--vector", f"{W}/good.safetensors",
                         "--alpha", "nan"], "finite"),
    ("score-alpha-without-vector", ["score", f"{W}/base", "--alpha", "2"], "--alpha needs"),
    ("train-unknown-profile", ["train-vectors", "--profile", "nosuch"], "nosuch"),
]


def build_argv(argv: list[str], world: Path, tmp: Path) -> list[str]:
    out = []
    for arg in argv:
        arg = arg.replace(W, str(world)).replace(T, str(tmp))
        arg = arg.replace("{rel}", os.path.relpath(world, tmp))
        if arg == "CFG":
            arg = config(world, tmp)
        elif arg.startswith("RAW:"):
            (tmp / "raw.yml").write_text(arg[4:])
            arg = str(tmp / "raw.yml")
        elif arg.startswith("CFG:"):
            key, value = arg[4:].split("=", 1)
            arg = config(world, tmp, **{key: yaml.safe_load(value)})
        elif arg.startswith(("VEC:", "MODEL:")):
            kind, name, *params = arg.split(":")
            entry = {kind.lower().replace("vec", "vector"): str(world / name),
                     "parameters": {"weight": 0.5}}
            extra = {}
            for item in params[0].split(",") if params else []:
                if item == "dtype":
                    extra["dtype"] = "float16"
                    continue
                key, value = item.split("=")
                entry["parameters"][key] = yaml.safe_load(value)
            arg = config(world, tmp, [entry], **extra)
        out.append(arg)
    return out


def listing(*roots: Path) -> dict[str, int]:
    found = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                found[str(path)] = path.stat().st_size if path.is_file() else -1
    return found


@pytest.mark.parametrize("argv, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(argv, words, world, tmp_path, monkeypatch,
                                                   capsys, isolated_home):
    work = tmp_path / "work"
    work.mkdir()
    argv = build_argv(argv, world, work)
    monkeypatch.chdir(work)
    before = listing(work, world)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (1, 2), err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines()  # not messages: usage, progress bars
             if not line.startswith(("usage:", " ")) and not re.search(r"\d+%\|", line)]
    assert len(lines) == 1 and "error" in lines[0], err
    assert words in lines[0], lines[0]
    assert listing(work, world) == before


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


# --- the same rules for `applied` (the sweeps' entry) ---------------------------------


@pytest.mark.parametrize("name, words", [
    ("missing-keys.safetensors", "lacks"), ("bf16.safetensors", "bfloat16"),
    ("full-model.safetensors", "full model"), ("foreign.safetensors", "other-base"),
    ("pickled", "model directory"), ("same-range.safetensors", "safetensors"),
])
def test_applied_refuses_what_merge_refuses(world, name, words):
    from pvutils.models import load_model

    model = load_model(world / "base")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MergeError, match=words):
        with applied(model, [world / name], [1.0]):
            pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_foreign_base_is_allowed_when_asked(world):
    from pvutils.models import load_model

    model = load_model(world / "base")
    with applied(model, [world / "foreign.safetensors"], [0.5], allow_foreign_base=True):
        pass
    with applied(model, [world / "good.safetensors"], [0.5]):  # its own base: no flag needed
        pass
