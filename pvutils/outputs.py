"""The output policy every command follows: nothing lost, nothing half-written, no secrets.

- Never destroy: an existing non-empty output is refused unless `--overwrite`, and even then
  only a directory this tool wrote (it holds `MARKER`) is replaced; an output that is,
  contains or lies inside an input, the current directory or a parent of it is refused.
- Write beside, swap, remove the old one last; temporaries are named
  `.NAME.tmp-<pid>-<random>` so a later run can remove those of dead processes (never a
  live one's).
- SIGTERM (what `timeout`, schedulers and CI send) unwinds like Ctrl-C, so the same
  cleanup runs; the command then exits 143.
- Every message a user sees goes through `redact` (API keys, URL passwords).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

MARKER = ".pvutils-output.json"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 130, 143


class PolicyError(ValueError):
    """An output or path the policy refuses; the message names the path and the rule."""


OutputError = PolicyError


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, like KeyboardInterrupt on SIGINT."""


# --- never destroy --------------------------------------------------------------------


def check_output(out: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False,
                 ours: Callable[[Path], bool] | None = None) -> Path:
    """Refuse an output that would destroy something; return it as given.

    `ours(path)` says whether an existing output was written by pvutils (default: a
    directory holding `MARKER`)."""
    out = Path(out).expanduser()
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise OutputError(f"output {out} is the current directory or a parent of it; "
                          "give a new directory")
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if target == source or target in source.parents:
            raise OutputError(f"output {out} is or contains the input {item}; give a new path")
        if source in target.parents:
            raise OutputError(f"output {out} lies inside the input {item}; give a path outside")
    if not (out.exists() or out.is_symlink()):
        return out
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return out
    if not overwrite:
        raise OutputError(f"output {out} already exists and is not empty; pass --overwrite to "
                          "replace it (only outputs pvutils wrote are replaced)")
    is_ours = ours or (lambda p: p.is_dir() and (p / MARKER).is_file())
    if out.is_symlink() or not is_ours(out):
        raise OutputError(f"output {out} was not written by pvutils (no {MARKER}); refusing to "
                          "replace it even with --overwrite")
    return out


def write_marker(directory: str | Path, command: str) -> None:
    """Mark a directory as written by pvutils: `--overwrite` may replace it later."""
    record = {"written_by": "pvutils", "command": command, "pid": os.getpid(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (Path(directory) / MARKER).write_text(json.dumps(record) + "\n")


# --- temporaries ----------------------------------------------------------------------


def temporary_beside(final: Path, kind: str = "tmp") -> Path:
    """A fresh sibling name carrying this process's pid."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(parent: str | Path, name: str | None = None) -> list[Path]:
    """Remove temporaries of dead processes in `parent` (only those of `name` if given).

    A dead writer's `.old-` copy is put back when its output is missing (it died between
    the two renames of a swap), else removed."""
    parent, removed = Path(parent), []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        found = _TEMPORARY.match(entry.name)
        if not found or (name is not None and found["name"] != name):
            continue
        if pid_alive(int(found["pid"])):
            continue
        path, final = Path(entry.path), parent / found["name"]
        if found["kind"] == "old" and not (final.exists() or final.is_symlink()):
            os.rename(path, final)
            continue
        _remove(path)
        removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back for a few system calls that must not be split (a
    handler raising between two renames would leave `final` missing): inside, a signal is
    only noted; it is raised again, to the handlers as they were, when the block ends.
    (Python runs handlers in the main thread only, so a noting handler defers them all;
    a thread's signal mask would not: another thread can take the signal.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    kinds = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in kinds}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


def replace_dir(tmp: Path, final: Path) -> None:
    """Put `tmp` at `final`: swap in the new one, then remove the old one (last), with
    signals held so that an interruption lands before or after the swap, never inside."""
    with deferred_signals():
        if not (final.exists() or final.is_symlink()):
            os.rename(tmp, final)
            return
        old = temporary_beside(final, "old")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(old, final)
            raise
        _remove(old)


# --- interruptions --------------------------------------------------------------------


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one unwinding; a second TERM waits for it
    raise Terminated()


def run_cli(command: Callable[[list[str]], int | None], argv: list[str]) -> int:
    """Run a command with the policy's exits: bad input 1 (one line), Ctrl-C 130, SIGTERM 143.

    Errors raised by pvutils' own checks (exception classes defined in pvutils) are bad
    input; anything else is an internal error and keeps its traceback."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(command(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted; temporary files removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("terminated (SIGTERM); temporary files removed", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as err:
        if not type(err).__module__.startswith("pvutils"):
            raise
        return report_error(err)
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_on_sigterm() -> None:
    """For a command-line process: a SIGTERM outside a running command (nothing half-written
    then) exits 143 at once. Without it, one arriving just after a command finished — when
    `run_cli` has put back the default handler — would kill the process with -15."""
    def _exit(signum, frame):
        print("terminated (SIGTERM)", file=sys.stderr, flush=True)
        os._exit(EXIT_TERMINATED)

    signal.signal(signal.SIGTERM, _exit)


def report_error(err: BaseException | str) -> int:
    """Print `error: <one line, redacted>` to stderr; return the bad-input exit code."""
    print(f"error: {one_line(redact(str(err)))}", file=sys.stderr)
    return EXIT_BAD_INPUT


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# --- secrets --------------------------------------------------------------------------

_SECRETS: set[str] = set()
_SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.IGNORECASE)
_PATTERNS = [
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://)([^/\s:@]+):([^/\s@]+)@", re.IGNORECASE),
     r"\1\2:***@"),                                               # URL user:password@
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),               # OpenAI-style keys
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_***"),                 # Hugging Face tokens
    (re.compile(r"(Bearer\s+)[^\s\"']+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+", re.IGNORECASE), r"\1***"),
]


def register_secret(value: str | None) -> None:
    """Remember a secret (an API key given as an argument) so `redact` hides it too."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """`text` with API keys, tokens and URL passwords replaced by ***."""
    text = str(text)
    known = set(_SECRETS)
    known.update(v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6)
    for value in sorted(known, key=len, reverse=True):
        text = text.replace(value, "***")
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# --- paths ----------------------------------------------------------------------------


def looks_like_path(text: str) -> bool:
    """A name meant as a local path (so a missing one is reported as missing, never sent
    to the hub): absolute, ~, ./ or ../, or its first component exists here."""
    text = str(text)
    if text.startswith(("/", "~", "./", "../", ".\\")) or os.sep * 2 in text:
        return True
    first = Path(text).parts[0] if Path(text).parts else ""
    return bool(first) and "/" in text and Path(first).exists()


def check_local_path(text: str, field: str, error: type[ValueError] = PolicyError) -> None:
    """Refuse a path-shaped name that does not exist (one line naming the field)."""
    if looks_like_path(text) and not Path(text).expanduser().exists():
        raise error(f"{field}: {text} does not exist (no such file or directory)")
