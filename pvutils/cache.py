"""Cached stages: what each one reads, its key, where it lives, and the `cache` command.

A stage (the data of a condition, a fine-tune, a sweep) declares once, beside its code,
the profile fields it reads. Its key hashes its code version (the source of its
functions), those fields' values and the identity of its inputs (the key of the stage that
made a file, else a hash of its bytes; never a time stamp). The stage then reads the
profile through `Stage.view`, which raises on any other field, so a declaration cannot
silently be incomplete. An entry lives at `<artifacts>/<stage>/<key>/` with a `meta.json`
(what it is, which profiles used it, when) that `python -m pvutils cache` lists and prunes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import inspect
import shutil
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .artifacts import artifacts_dir, fingerprint, read_json, write_json

META = "meta.json"
ALWAYS_READABLE = ("name",)  # the profile's label: recorded in meta.json, never in a key


class UndeclaredField(AttributeError):
    """A stage read a profile field it does not declare (so its key would not hold it)."""


@dataclass(frozen=True)
class Stage:
    """One cached stage. `fields` change its result and go into its key; `grid` fields only
    choose which points run (each point is cached on its own, so a longer grid reuses the
    points already done); `after` are the stages whose inputs it makes itself (a fine-tune
    generates its data) and whose fields it may therefore read; `code` are the functions or
    modules whose source is its version."""

    name: str
    fields: tuple[str, ...]
    grid: tuple[str, ...] = ()
    code: tuple[Callable | types.ModuleType, ...] = ()
    after: tuple[Stage, ...] = ()

    def readable(self) -> frozenset[str]:
        up = frozenset().union(*(s.readable() for s in self.after))
        return frozenset(self.fields) | frozenset(self.grid) | frozenset(ALWAYS_READABLE) | up

    def view(self, profile: Any) -> ProfileView:
        return ProfileView(profile, self)

    def key(self, profile: Any, *inputs: Any) -> str:
        """Code version + declared field values + input identities."""
        p = unwrap(profile)
        values = {f: getattr(p, f) for f in self.fields}
        return fingerprint(self.name, code_version(self.code), values, list(inputs))

    def entry(self, key: str) -> Path:
        return artifacts_dir() / self.name / key


class ProfileView:
    """A profile that only lets a stage read what the stage declares."""

    def __init__(self, profile: Any, stage: Stage):
        object.__setattr__(self, "_profile", unwrap(profile))
        object.__setattr__(self, "_stage", stage)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._stage.readable():
            raise UndeclaredField(f"stage {self._stage.name!r} read profile.{name}, which it "
                                  f"does not declare; add it to its fields in pvutils")
        return getattr(self._profile, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self._profile, f) for f in sorted(self._stage.readable())}

    def __repr__(self) -> str:
        return f"ProfileView({self._profile.name!r}, stage={self._stage.name!r})"


def unwrap(profile: Any) -> Any:
    """The Profile behind a view (a view handed to another stage is re-viewed)."""
    return object.__getattribute__(profile, "_profile") if isinstance(profile, ProfileView) \
        else profile


@functools.cache
def _source_hash(obj: Callable | types.ModuleType) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:12]


def code_version(code: tuple[Callable | types.ModuleType, ...]) -> list[str]:
    """The stage's code version: a hash of each function's (or module's) source."""
    return [_source_hash(inspect.unwrap(c)) for c in code]


# --- identity of inputs ------------------------------------------------------------------


def identity(x: Any) -> str:
    """What a point's input *is*: for an artifact file, the key its producer recorded in
    the JSON beside it; for another file, a hash of its bytes; for tensors, of theirs."""
    if isinstance(x, (str, Path)):
        path = Path(x)
        side = path.with_suffix(".json")
        if side.exists():
            key = read_json(side).get("key")
            if key:
                return str(key)
        return _file_hash(path)
    if isinstance(x, Mapping):
        h = hashlib.sha256()
        for name in sorted(x):
            t = x[name]
            h.update(name.encode())
            h.update(t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
                     if isinstance(t, torch.Tensor) else repr(t).encode())
        return h.hexdigest()[:16]
    return fingerprint(x)


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()[:16]


# --- entry metadata ----------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def touch(entry: Path, stage: str, profile: str, summary: Mapping[str, Any]) -> None:
    """Record (or refresh) an entry's meta.json: stage, summary, profiles, last used."""
    meta_file = entry / META
    meta = read_json(meta_file) if meta_file.exists() else {
        "stage": stage, "summary": dict(summary), "profiles": [], "created": _now()}
    if profile not in meta["profiles"]:
        meta["profiles"].append(profile)
    meta["last_used"] = _now()
    write_json(meta_file, meta)


def entries(root: Path | None = None) -> list[dict[str, Any]]:
    """Every stored entry with its meta, path and size in bytes, oldest use first."""
    root = root or artifacts_dir()
    out = []
    for meta_file in sorted(root.glob(f"*/*/{META}")):
        entry = meta_file.parent
        meta = read_json(meta_file)
        size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file() and not
                   f.is_symlink())
        out.append({**meta, "key": entry.name, "path": entry, "size": size})
    return sorted(out, key=lambda e: e["last_used"])


def prune(older_than_days: float | None = None, profile: str | None = None,
          stage: str | None = None, root: Path | None = None,
          dry_run: bool = False) -> list[dict]:
    """Forget the entries that match. With `profile`, an entry another profile also uses
    only loses that profile's name; it is deleted once no profile uses it."""
    cutoff = None
    if older_than_days is not None:
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=older_than_days)
    removed = []
    for e in entries(root):
        if stage is not None and e["stage"] != stage:
            continue
        if cutoff is not None and datetime.datetime.fromisoformat(e["last_used"]) >= cutoff:
            continue
        if profile is not None and profile not in e["profiles"]:
            continue
        rest = [p for p in e["profiles"] if p != profile] if profile is not None else []
        if dry_run:
            if not rest:
                removed.append(e)
            continue
        if rest:
            meta = read_json(e["path"] / META)
            write_json(e["path"] / META, {**meta, "profiles": rest})
            continue
        shutil.rmtree(e["path"])
        removed.append(e)
    return removed


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _table(rows: list[dict]) -> str:
    lines = [f"{'stage':<16} {'key':<12} {'summary':<44} {'profiles':<12} {'size':>9}  last used"]
    for e in rows:
        summary = ", ".join(f"{k}={v}" for k, v in e["summary"].items())
        lines.append(f"{e['stage']:<16} {e['key'][:12]:<12} {summary[:44]:<44} "
                     f"{','.join(e['profiles'])[:12]:<12} {_size(e['size']):>9}  "
                     f"{e['last_used']}")
    lines.append(f"{len(rows)} entries, {_size(sum(e['size'] for e in rows))} in total")
    return "\n".join(lines)


def cli_cache(argv: list[str]) -> int:
    """`python -m pvutils cache [list|prune] [--profile P] [--stage S] [--older-than D]`."""
    parser = argparse.ArgumentParser(prog="python -m pvutils cache")
    parser.add_argument("action", nargs="?", choices=("list", "prune"), default="list")
    parser.add_argument("--profile", help="only entries this profile used")
    parser.add_argument("--stage", help="only this stage (e.g. train, rq1-contrast)")
    parser.add_argument("--older-than", type=float, metavar="DAYS",
                        help="only entries last used more than DAYS ago")
    parser.add_argument("--all-profiles", action="store_true",
                        help="prune entries of every profile (otherwise --profile is needed)")
    parser.add_argument("--dry-run", action="store_true", help="show what prune would delete")
    args = parser.parse_args(argv)
    if args.action == "list":
        rows = [e for e in entries() if (args.stage in (None, e["stage"]))
                and (args.profile is None or args.profile in e["profiles"])]
        print(_table(rows))
        return 0
    if args.profile is None and not args.all_profiles:
        print("error: prune needs --profile P (or --all-profiles): it never touches another "
              "profile's entries unless asked", file=sys.stderr)
        return 2
    gone = prune(args.older_than, args.profile, args.stage, dry_run=args.dry_run)
    print(("would delete:\n" if args.dry_run else "deleted:\n") + _table(gone))
    return 0
