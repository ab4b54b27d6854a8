"""RQ4's vision-language case: merge a vector into the language model of a VLM only.

A LLaVA is a vision tower, a projector and a language model with its head; the paper
transfers a personality vector to "the language part of a VLM only". mergekit-style
`include` patterns select those tensors (`merging.merge_from_config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForImageTextToText

from . import merging, vectors

LANGUAGE_MODEL = ("*language_model*", "lm_head*")  # a LLaVA's language model and its head


def language_only_merge(base, tuned, workdir: str | Path,
                        include: Sequence[str] = LANGUAGE_MODEL) -> pd.Series:
    """Merge `tuned - base` (two VLMs of one architecture, in memory) into `base` with only
    the `include` tensors, and return the share of tensors changed per part (vision tower,
    projector, language model, head): the language model alone should move."""
    workdir = Path(workdir)
    base.save_pretrained(workdir / "base")
    tuned.save_pretrained(workdir / "tuned")
    phi = vectors.extract_vector(workdir / "base", workdir / "tuned", workdir / "phi.safetensors")
    merging.merge_from_config({"merge_method": "task_arithmetic",
                               "base_model": str(workdir / "base"),
                               "models": [{"vector": str(phi), "parameters": {"weight": 1.0}}],
                               "include": list(include), "dtype": "float32"},
                              workdir / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(workdir / "merged")
    before = dict(base.named_parameters())
    changed = pd.Series({name: not torch.equal(p, before[name])
                         for name, p in merged.named_parameters()})
    part = changed.index.str.extract(r"^(model\.\w+|lm_head)")[0].values
    return changed.groupby(part).mean().rename("share of tensors changed")
