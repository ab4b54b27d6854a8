"""kill -9 and SIGTERM during a merge and during a sweep (issue #12).

A merge killed while writing leaves the old output untouched; SIGTERM removes its
temporaries and exits 143; after kill -9 the next run removes the dead writer's debris.
A sweep killed half-way resumes from its cache and ends with the same numbers.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from pvutils.merging import merge_from_config
from pvutils.outputs import MARKER
from pvutils.vectors import save_vector

ROOT = Path(__file__).resolve().parents[1]


def child_env(home: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT),
            "PVUTILS_HOME": str(home), "OMP_NUM_THREADS": "1"}


def wait_for(condition, timeout: float = 120.0, proc=None) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the child ended first (exit {proc.returncode}): "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.002)


def temporaries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def digest(directory: Path) -> dict[str, str]:
    """Every file's hash but the marker's (it records the writer's pid and time)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != MARKER}


# --- merge ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merge_inputs(tmp_path_factory, tiny_llama_factory):
    """A ~10M-parameter Llama (40 MB) and two vectors: a TIES merge takes a second."""
    root = tmp_path_factory.mktemp("interrupt-merge")
    model = tiny_llama_factory(0, hidden_size=256, intermediate_size=1024, vocab_size=16000,
                               num_hidden_layers=2)
    model.save_pretrained(root / "base")
    gen = torch.Generator().manual_seed(1)
    entries = []
    for i in range(2):
        vec = {n: torch.randn(p.shape, generator=gen) * 0.01 for n, p in model.named_parameters()}
        save_vector(vec, root / f"v{i}.safetensors", {})
        entries.append({"vector": str(root / f"v{i}.safetensors"),
                        "parameters": {"weight": 0.5 + i, "density": 0.3}})
    config = root / "merge.yml"
    config.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": str(root / "base"),
                                      "models": entries, "max_shard_size": "40MB"}))
    return root, config


def start_merge(config: Path, out: Path, home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pvutils", "merge", str(config), str(out),
                             "--overwrite"], env=child_env(home), cwd=out.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_an_interrupted_merge_keeps_the_old_output_and_leaves_no_debris(
        merge_inputs, tmp_path, isolated_home, sig):
    _, config = merge_inputs
    parent = tmp_path / "outputs"
    out = merge_from_config(config, parent / "merged")  # the old output, to keep intact
    old = digest(out)
    proc = start_merge(config, out, isolated_home)
    wait_for(lambda: any(".merged.tmp-" in n for n in temporaries(parent)), proc=proc)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    assert digest(out) == old  # the old output is intact, whatever the signal
    if sig == signal.SIGTERM:
        assert code == 143 and "SIGTERM" in proc.stderr.read()
        assert temporaries(parent) == []  # cleaned up by the dying process itself
    else:
        assert code == -signal.SIGKILL
        assert any(f".tmp-{proc.pid}-" in n for n in temporaries(parent))  # debris...
    merge_from_config(config, parent / "second")  # ... until the next run in that directory
    assert temporaries(parent) == []
    assert digest(parent / "second") == old  # the same merge, complete this time


def test_a_live_writers_temporaries_are_kept(tmp_path):
    from pvutils.outputs import remove_stale_temporaries, temporary_beside

    mine = temporary_beside(tmp_path / "x")
    mine.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    theirs = tmp_path / f".x.tmp-{int(dead.stdout)}-0123abcd"
    theirs.mkdir()
    assert remove_stale_temporaries(tmp_path) == [theirs]
    assert mine.exists() and not theirs.exists()


# --- sweep ----------------------------------------------------------------------------

SWEEP = textwrap.dedent('''
    """An α sweep of a tiny model with a cheap measure (mean log-probability of a fixed text),
    through the chapters' driver: one cached file per point under `<home>/test-sweep/<key>`."""
    import json, os, sys, time
    import torch
    from transformers import LlamaForCausalLM
    from pvutils import sweeps
    from pvutils.cache import Stage
    from pvutils.merging import applied
    from pvutils.outputs import run_cli
    from pvutils.profiles import get_profile

    ALPHAS = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    STAGE = Stage("test-sweep", ("seed",))

    def sweep(home, model_dir, pause=0.0):
        os.environ["PVUTILS_HOME"] = str(home)
        model = LlamaForCausalLM.from_pretrained(model_dir).eval()
        gen = torch.Generator().manual_seed(7)
        vector = {n: torch.randn(p.shape, generator=gen) * 0.05
                  for n, p in model.named_parameters()}
        ids = torch.arange(1, 17)[None]

        def measure(point):
            time.sleep(pause)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits, -1)
            return {"score": float(logp.gather(-1, ids[..., None]).mean())}

        plan = (STAGE, [{"alpha": a, "_uses": ["v"]} for a in ALPHAS], ())
        return sweeps.run_sweep(plan, get_profile("smoke"), measure,
                                sweeps.applying(model, {"v": vector}), {"v": vector})

    def main(argv):
        print(json.dumps(sweep(argv[0], argv[1], pause=float(argv[2]))["score"].tolist()))
        return 0

    if __name__ == "__main__":
        sys.exit(run_cli(main, sys.argv[1:]))
''')


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_an_interrupted_sweep_resumes_with_the_same_numbers(tmp_path, isolated_home, sig,
                                                          tiny_llama_dir):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    namespace: dict = {}
    exec(compile(SWEEP, str(script), "exec"), namespace)  # the same sweep, uninterrupted
    expected = namespace["sweep"](tmp_path / "reference", tiny_llama_dir)["score"].tolist()
    home = tmp_path / "home"

    def points_dirs() -> list[Path]:
        return list((home / "test-sweep").glob("*/points"))

    def finished() -> int:
        return sum(1 for d in points_dirs() for f in d.glob("*.json"))

    proc = subprocess.Popen([sys.executable, str(script), str(home), str(tiny_llama_dir),
                             "0.3"],
                            env=child_env(isolated_home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: finished() >= 3, proc=proc)
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
    done_before = finished()
    assert 3 <= done_before < len(expected)  # stopped half-way
    resumed = namespace["sweep"](home, tiny_llama_dir)  # the next run, from the same cache
    assert resumed["score"].tolist() == expected  # exactly
    assert finished() == len(expected)
    assert all(temporaries(d) == [] for d in points_dirs())
