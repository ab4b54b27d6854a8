"""The artifacts directory: where expensive products live, keyed by what made them.

Everything expensive (the converted model, data sets, vectors, scores, judge replies) is
written here atomically (a temporary sibling renamed into place), so a killed run never
leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .outputs import remove_stale_temporaries, replace_dir, temporary_beside

REPO_ROOT = Path(__file__).resolve().parents[1]


def artifacts_dir() -> Path:
    """`$PVUTILS_HOME`, else `<repo>/artifacts` in a source checkout, else `./artifacts`."""
    env = os.environ.get("PVUTILS_HOME")
    if env:
        root = Path(env).expanduser()
    elif (REPO_ROOT / "pyproject.toml").exists():
        root = REPO_ROOT / "artifacts"
    else:
        root = Path.cwd() / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return root


def results_dir(profile: str) -> Path:
    """Where notebooks write their key numbers: beside the executed copies
    (`$PVUTILS_RESULTS/<profile>`, set by the book driver; else `_build/executed/<profile>`).
    `results/<profile>/` is only written by `python -m pvutils publish`."""
    default = REPO_ROOT / "_build" / "executed"
    root = Path(os.environ.get("PVUTILS_RESULTS", default)) / profile
    root.mkdir(parents=True, exist_ok=True)
    return root


def fingerprint(*parts: Any, length: int = 12) -> str:
    """A short stable hash of JSON-able inputs: the cache key of whatever they produce."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` only if the block succeeds.

    The temporary carries this process's pid (dead processes' ones are removed first); an
    existing `final` is swapped out and removed only after the new one is in place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent)
    tmp = temporary_beside(final)
    try:  # created inside: an interruption just after mkdir still removes it
        tmp.mkdir()
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final.parent, final.name)
    tmp = temporary_beside(final)
    try:  # created inside: an interruption just after touch still removes it
        tmp.touch()  # created with the umask's permissions (mkstemp would give 0600)
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return Path(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(obj: Any) -> Any:
    # numpy / torch scalars and arrays, paths
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
