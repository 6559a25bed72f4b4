"""The ``dsg-ros`` console script: one entry point, one subcommand per job.

Heavy imports (JAX, rclpy) happen inside each handler so that ``--help`` is
instant and a missing optional dependency only affects its own subcommand.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsg-ros",
        description="Online differentiable mapping: solvers, experiments and benches.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
