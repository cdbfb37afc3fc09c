"""``python -m research <command>``: the commands that make the project's data and figures.

Commands live in ``cli_bench`` (generate, pretrain, benchmark), ``cli_reproduce`` (reproduce), ``cli_study`` (study)
and ``cli_perf`` (bench, the speed of an update); each validates all of its input before it trains or writes
anything. Logging, bad input (``error: ...``, exit status 2) and the exit statuses are the product's
(``wilss.cli.run_command``).
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from research import cli_bench, cli_perf, cli_reproduce, cli_study
from wilss.cli import run_command
from wilss.cli_common import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m research",
        description="Generate the project's data (the procedural world, the demo's samples), train its shipped "
                    "networks, and produce its figures: protocol benchmarks, reproductions, studies and the speed "
                    "of an update. The product's commands (add-class, evaluate, predict, export) are "
                    "'python -m wilss'.",
        epilog="typical use:\n"
               "  python -m research generate --samples samples/\n"
               "  python -m research benchmark world --quick\n"
               "Run 'python -m research COMMAND --help' for a command's options.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli_bench.register(commands)      # generate, pretrain, benchmark
    cli_reproduce.register(commands)  # reproduce
    cli_study.register(commands)      # study
    cli_perf.register(commands)       # bench
    order = ["generate", "pretrain", "benchmark", "reproduce", "study", "bench"]
    commands._choices_actions.sort(key=lambda a: order.index(a.dest))  # help lists them in workflow order
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 a goal or the training failed, 2 bad input)."""
    return run_command(build_parser(), argv, loggers=("wilss", "research"))
