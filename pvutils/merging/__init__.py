"""Merging personality vectors: task arithmetic, TIES, DARE, Model Breadcrumbs, DELLA.

Read it in this order:

- `functional`: the pure per-tensor steps (sparsify, elect a sign, disjoint merge,
  weighted sum, normalize) with mergekit 0.1.5's semantics, and the one exact magnitude
  threshold (a radix select) they share;
- `registry`: a method is one row (sparsification, consensus, default normalize / rescale);
- `options`: the validated parameters of a merge;
- `engine`: those functions over tensor sources in row blocks, with whole-tensor statistics
  streamed first (and the authors' global TIES trim);
- `api` (`merge_deltas`, `merge_vectors`), `inplace` (`applied` for sweeps), `config` (the
  mergekit YAML schema) and `cli` (`merge_from_config`, `python -m pvutils merge`).
"""

from ..vectors import MergeError
from .api import (
    dare_drop,
    global_thresholds,
    iter_merged_blocks,
    iter_merged_deltas,
    merge_deltas,
    merge_vectors,
    select_names,
    trim_by_magnitude,
)
from .cli import cli_merge, merge_from_config, plan_shards
from .config import MergeConfig, load_config
from .functional import magnitude_threshold
from .inplace import applied, release_buffers
from .options import MergeParams
from .registry import METHODS, Method

__all__ = [
    "METHODS", "MergeConfig", "MergeError", "MergeParams", "Method", "applied", "cli_merge",
    "dare_drop", "global_thresholds", "iter_merged_blocks", "iter_merged_deltas",
    "load_config", "magnitude_threshold", "merge_deltas", "merge_from_config",
    "merge_vectors", "plan_shards", "release_buffers", "select_names", "trim_by_magnitude",
]
