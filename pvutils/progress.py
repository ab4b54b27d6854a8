"""Progress of long stages, for the terminal and never for the pages.

A notebook's own stderr ends up in its executed copy, so when the book driver names a file
in `$PVUTILS_PROGRESS`, every bar and stage line goes there instead and the driver tails
it to the terminal. Without the variable (a notebook opened by hand) they go to stderr,
which the book build removes (`nb_output_stderr: remove`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

ENV = "PVUTILS_PROGRESS"


@functools.cache
def _open(path: str) -> TextIO:
    return open(path, "a", buffering=1)  # line-buffered: the tail sees each line at once


def stream() -> TextIO:
    """The progress file named by `$PVUTILS_PROGRESS`, else stderr."""
    path = os.environ.get(ENV)
    return _open(path) if path else sys.stderr


def bar(iterable: Iterable | None = None, desc: str = "", total: int | None = None,
        **kw: Any) -> tqdm:
    """A plain-text tqdm bar (rate and ETA) on the progress stream (no notebook widget)."""
    return tqdm(iterable, desc=desc, total=total, file=stream(), ncols=100, mininterval=1.0,
                **kw)


def log(message: str) -> None:
    """One line on the progress stream, e.g. which stage runs or what a cache held."""
    print(message, file=stream(), flush=True)


def trainer_callback(desc: str):
    """A `TrainerCallback`: one bar over the optimisation steps, the loss in its postfix.

    It replaces TRL's own tqdm, notebook table and printed log dicts (see `training`),
    which would otherwise land in the executed pages.
    """
    from transformers import TrainerCallback  # heavy; only needed when training

    class _Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.bar = bar(desc=desc, total=state.max_steps, unit="step")

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

        def on_train_end(self, args, state, control, **kw):
            self.bar.close()

    return _Bar()


@contextlib.contextmanager
def tail(path: Path, out=sys.stderr, every: float = 0.5) -> Iterator[None]:
    """Copy what is appended to `path` to `out` while the block runs (the progress stream
    the kernels write; papermill's own log would only show cell outputs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    stop = threading.Event()

    def pump() -> None:
        with open(path, errors="replace") as f:
            f.seek(0, os.SEEK_END)
            while True:
                chunk = f.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                elif stop.is_set():
                    return
                else:
                    stop.wait(every)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
