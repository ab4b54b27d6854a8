"""`python -m pvutils COMMAND ...`: each command lives beside the code it drives."""

from __future__ import annotations

import importlib
import sys

from . import configure_torch_env
from .outputs import exit_on_sigterm, run_cli

# command -> (module, function taking argv and returning an exit code)
COMMANDS = {
    "provision": ("pvutils.models", "cli_provision", "download and convert the embedded model"),
    "extract": ("pvutils.vectors", "cli_extract", "personality vector = fine-tuned - base"),
    "merge": ("pvutils.merging", "cli_merge", "merge from a mergekit-style YAML config"),
    "train-vectors": ("pvutils.training", "cli_train_vectors", "data + fine-tunes + vectors"),
    "score": ("pvutils.evaluation", "cli_score", "Big Five scores of a (merged) model"),
    "book": ("pvutils.book", "cli_book", "execute the notebooks and build the book"),
    "publish": ("pvutils.publish", "cli_publish", "copy a finished run to results/<profile>/"),
    "cache": ("pvutils.cache", "cli_cache", "list and prune the cached artifacts"),
    "dial": ("pvutils.calibrate", "cli_dial", "the alpha that gives a wanted trait score"),
    "ablate": ("pvutils.ablation", "cli_ablate", "train recipe variants, compare their dials"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
        print("usage: python -m pvutils COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func, _ = COMMANDS[argv[0]]
    configure_torch_env()  # before the command's module imports torch
    command = getattr(importlib.import_module(module), func)
    return run_cli(command, argv[1:])  # bad input: one line, exit 1; SIGTERM: cleanup, 143


if __name__ == "__main__":
    exit_on_sigterm()
    sys.exit(main())
