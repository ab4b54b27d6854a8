"""pvutils: the small library behind the Personality Vector companion book.

One module per concern, pure functions over tensors and state dicts where possible;
CONTRIBUTING.md lists every module in one line.

Importing pvutils changes nothing in the process. Entry points that run models call
`configure_torch_env()` first (the CLI does; notebooks do in their first code cell).
"""

import os as _os
import sys as _sys
import warnings as _warnings

from .profiles import CONDITIONS, LEVELS, TRAITS, get_profile

__all__ = ["CONDITIONS", "LEVELS", "TRAITS", "configure_torch_env", "get_profile"]
__version__ = "0.1.0"

TORCH_ENV = {
    # huge pages for big CPU tensors: merging allocates many fresh 100 MB tensors whose
    # page faults cost more than the arithmetic on them
    "THP_MEM_ALLOC_ENABLE": "1",
    # idle OpenMP threads sleep instead of spinning; on a busy 2-core machine spinning
    # made generation up to 9x slower
    "OMP_WAIT_POLICY": "PASSIVE",
}


def configure_torch_env() -> dict[str, str]:
    """Set `TORCH_ENV`'s defaults in `os.environ` (a value already there wins) and return
    what was set. Torch reads them once, when it loads, so this only acts before the first
    `import torch`; afterwards it sets nothing and returns {}. It also hides tqdm's notice
    that ipywidgets is missing: the bars are text on purpose (`progress.bar`), and
    `tqdm.auto`, which transformers and datasets use, would print it into every page."""
    _warnings.filterwarnings("ignore", message="IProgress not found")
    if "torch" in _sys.modules:
        return {}
    set_now = {k: v for k, v in TORCH_ENV.items() if k not in _os.environ}
    _os.environ.update(set_now)
    return set_now
