"""pvutils: the small library behind the Personality Vector companion book.

One module per concern, pure functions over tensors and state dicts where possible:
`models` (loading, generation), `profiles` (parameter sets), `artifacts` (cache, atomic
writes), `vectors`, `merging`, `data`, `training`, `evaluation`, `baselines`, `analysis`.
"""

from .profiles import CONDITIONS, LEVELS, TRAITS, get_profile

__all__ = ["CONDITIONS", "LEVELS", "TRAITS", "get_profile"]
__version__ = "0.1.0"
