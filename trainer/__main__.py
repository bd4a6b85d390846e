"""Command line: ``python -m trainer <command> ...``.

Commands are registered in :data:`COMMANDS`: name -> function adding the subparser (which sets
``func``, called with the parsed namespace and returning an exit code). To add a command, add one
entry.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from trainer.checkpoints import CheckpointError
from trainer.demo import add_demo_parser
from trainer.inspect import add_inspect_parser

COMMANDS: dict[str, Callable[[Any], argparse.ArgumentParser]] = {
    "demo": add_demo_parser,
    "inspect": add_inspect_parser,
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
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
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
