"""A held-out share of a fine-tune's examples: its loss every epoch, an early stop, and the
weights of the best epoch kept.

transformers' `EarlyStoppingCallback` needs `load_best_model_at_end`, which writes a full
checkpoint (weights and optimizer state, ~1.6 GB at 135M) every epoch; `KeepBest` holds the
best epoch's weights in memory instead (hand-written for that reason).
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback


def split_heldout(dataset, fraction: float, seed: int):
    """(train, held-out) by a seeded shuffle; held-out is None when `fraction` is 0.
    At least one example on each side once the fraction is above 0."""
    if fraction <= 0:
        return dataset, None
    n = len(dataset)
    if n < 2:
        raise ValueError(f"a held-out share needs at least 2 examples, got {n}")
    k = min(max(1, round(n * fraction)), n - 1)
    parts = dataset.train_test_split(test_size=k, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


class KeepBest(TrainerCallback):
    """After each evaluation: remember the weights if the held-out loss is the lowest so far;
    stop after `patience` evaluations without improvement (0: never stop early). At the end
    of training, load the best weights when `restore`."""

    def __init__(self, patience: int = 0, restore: bool = True):
        self.patience, self.restore = patience, restore
        self.best, self.best_epoch, self.bad = math.inf, None, 0
        self.history: list[float] = []
        self._state: dict[str, torch.Tensor] | None = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        self.history.append(float(loss))
        if loss < self.best:
            self.best, self.best_epoch, self.bad = float(loss), state.epoch, 0
            if self.restore and model is not None:
                self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1
            if self.patience and self.bad >= self.patience:
                control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.restore and self._state is not None and model is not None:
            model.load_state_dict(self._state)
            self._state = None
