"""`python -m pvutils COMMAND ...`: each command lives beside the code it drives."""

from __future__ import annotations

import importlib
import sys

# command -> (module, function taking argv and returning an exit code)
COMMANDS = {
    "provision": ("pvutils.models", "cli_provision", "download and convert the embedded model"),
    "extract": ("pvutils.vectors", "cli_extract", "personality vector = fine-tuned - base"),
    "merge": ("pvutils.merging", "cli_merge", "merge from a mergekit-style YAML config"),
    "train-vectors": ("pvutils.training", "cli_train_vectors", "data + fine-tunes + vectors"),
    "score": ("pvutils.evaluation", "cli_score", "Big Five scores of a (merged) model"),
    "book": ("pvutils.book", "cli_book", "execute the notebooks and build the book"),
    "dial": ("pvutils.calibrate", "cli_dial", "the alpha that gives a wanted trait score"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
        print("usage: python -m pvutils COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module, func, _ = COMMANDS[argv[0]]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
