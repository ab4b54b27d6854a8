"""pvutils: the small library behind the Personality Vector companion book.

One module per concern, pure functions over tensors and state dicts where possible:
`models` (loading, generation), `profiles` (parameter sets), `artifacts` (cache, atomic
writes), `vectors`, `merging`, `data`, `training`, `evaluation`, `baselines`, `analysis`.

Importing pvutils sets two environment defaults that torch reads once, when it loads, so
they only apply if torch is not imported yet, and a value already in the environment wins:
`THP_MEM_ALLOC_ENABLE=1` (huge pages for big CPU tensors: merging allocates many fresh
100 MB tensors whose page faults cost more than the arithmetic on them) and
`OMP_WAIT_POLICY=PASSIVE` (idle OpenMP threads sleep instead of spinning; on a busy 2-core
machine spinning made generation up to 9x slower).
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .profiles import CONDITIONS, LEVELS, TRAITS, get_profile

__all__ = ["CONDITIONS", "LEVELS", "TRAITS", "get_profile"]
__version__ = "0.1.0"
