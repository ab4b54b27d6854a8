"""Did fine-tuning do what it was for? Each vector's persona shift on held-out prompts,
judged by the frozen base model, never by the model under test. (How much the role-play
model talks like its character, RQ4's fidelity, is `character`.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import cache, models, sweeps
from . import data as pvdata
from .likelihood import persona_difference
from .merging import applied
from .profiles import Profile
from .training import TrainingError, vector_path


def persona_preference(scorer, tokenizer, condition: str, prompts: Sequence[str],
                       answers: Sequence[str], batch_size: int = 16) -> list[float]:
    """Per answer: log p(answer | condition's persona) − log p(answer | opposite persona).

    Positive means the answer reads more like the condition's persona than its opposite,
    judged by the frozen base model (per-token means, so length does not matter).
    """
    persona, anti = pvdata._condition_personas(condition)
    pairs = list(zip(prompts, answers, strict=True))
    return persona_difference(scorer, tokenizer, persona, anti, pairs, batch_size).tolist()


def persona_shift(profile: Profile, conditions: Sequence[str] | None = None,
                  prompts: Sequence[str] | None = None, alpha: float = 1.0,
                  max_new_tokens: int = 40, batch_size: int = 20):
    """How far each vector moves the base's answers toward its persona (a DataFrame).

    For held-out prompts (never in the training data) the base and the base + α φ answer
    greedily; the frozen base scores every answer by `persona_preference`. `shift` is the
    mean per-prompt difference (tuned − base): > 0 means toward the condition's persona.
    Each condition is one cached point of the `persona-shift` stage (models are loaded only
    when a point is missing).
    """
    P = PERSONA_SHIFT.view(profile)
    conditions = list(conditions or profile.conditions)
    prompts = list(prompts or pvdata.heldout_prompts())
    paths = {c: vector_path(profile, c) for c in conditions}
    for cond, path in paths.items():
        if not path.exists():
            raise TrainingError(f"no vector for {cond!r} at {path}; run train_all_vectors first")
    convs = [[{"role": "user", "content": p}] for p in prompts]
    loaded: dict = {}

    def answer(m) -> list[str]:
        replies = models.chat(m, loaded["tok"], convs, max_new_tokens=max_new_tokens,
                              temperature=0.0, batch_size=batch_size, progress=False)
        return [models.trim_to_sentence(r) for r in replies]

    def setup() -> None:  # the frozen scorer, the model to move, and the base's answers
        if not loaded:
            loaded["scorer"] = models.load_model(P.model, dtype=P.dtype)
            loaded["model"] = models.load_model(P.model, dtype=P.dtype)
            loaded["tok"] = models.load_tokenizer(P.model)
            loaded["base_answers"] = answer(loaded["model"])

    def measure(point: dict) -> dict:
        setup()
        cond, scorer, tok = point["condition"], loaded["scorer"], loaded["tok"]
        with applied(loaded["model"], [paths[cond]], [point["alpha"]], reuse_buffers=True):
            tuned_answers = answer(loaded["model"])
        base = persona_preference(scorer, tok, cond, prompts, loaded["base_answers"], batch_size)
        tuned = persona_preference(scorer, tok, cond, prompts, tuned_answers, batch_size)
        diffs = torch.tensor(tuned) - torch.tensor(base)
        return {"base": float(torch.tensor(base).mean()),
                "tuned": float(torch.tensor(tuned).mean()), "shift": float(diffs.mean()),
                "stderr": float(diffs.std() / math.sqrt(len(diffs))) if len(diffs) > 1 else 0.0,
                "share_up": float((diffs > 0).float().mean()), "n_prompts": len(prompts),
                "example": tuned_answers[0]}

    points = [{"condition": c, "alpha": float(alpha), "_uses": [c]} for c in conditions]
    plan = (PERSONA_SHIFT, points, (prompts, max_new_tokens, batch_size))
    table = sweeps.run_sweep(plan, P, measure, None, paths)
    return table.drop(columns=["alpha"])


PERSONA_SHIFT = cache.Stage("persona-shift", ("model", "dtype", "device"), grid=("conditions",),
                            code=(persona_shift, persona_preference, *models.GENERATION_CODE))
