"""Command line of the trainer: demo, inspect and plot (``python -m trainer <command> ...``).

Commands are registered in :data:`COMMANDS`: name -> function adding the subparser (which sets
``func``, called with the parsed namespace and returning an exit code). To add a command, add one
entry.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from trainer.checkpoints import CheckpointError
from trainer.demo import add_demo_parser
from trainer.inspect import add_inspect_parser
from trainer.plot import add_plot_parser

COMMANDS: dict[str, Callable[[Any], argparse.ArgumentParser]] = {
    "demo": add_demo_parser,
    "inspect": add_inspect_parser,
    "plot": add_plot_parser,
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    description = (__doc__ or "").splitlines()[0].replace("``", "")
    parser = argparse.ArgumentParser(prog="python -m trainer", description=description)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_parser in COMMANDS.values():
        add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `python -m trainer inspect X | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error while Python flushes stdout
        return 0


if __name__ == "__main__":
    sys.exit(main())
