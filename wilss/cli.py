"""``python -m wilss <command>``: the command-line entry point.

The only place that configures logging and turns bad input into ``error: ...`` (exit status 2); ``research.cli``
runs its commands through ``run_command`` too. Commands live in ``cli_pretrain`` (pretrain: a base from pixel labels
or tags), ``cli_update`` (add-class) and ``cli_use`` (evaluate, predict, export); each validates all of its input
before it trains or writes anything. The commands that make the project's data and figures (generate, benchmark,
reproduce, study, bench, and pretrain's world and pretext networks) are ``python -m research``'s.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from wilss import cli_pretrain, cli_update, cli_use
from wilss.cli_common import Parser
from wilss.distributed import launched_by_torchrun

log = logging.getLogger(__name__)

# Bad input: data, checkpoints, flag values (our modules raise ValueError subclasses), files in the way.
USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m wilss",
        description="Add new classes to a trained semantic-segmentation model from image-level tags only "
                    "(WILSON, CVPR 2022), and train, score and use such models.",
        epilog="typical use:\n"
               "  python -m wilss pretrain --data VOCdevkit/VOC2012 --out base.pt\n"
               "  python -m wilss add-class --images samples/ --class arrow=#ff8000 --out arrow.pt\n"
               "  python -m wilss predict --checkpoint arrow.pt --input photo.png --out predictions/ --overlay\n"
               "Run 'python -m wilss COMMAND --help' for a command's options.\n"
               "The project's data and figures: 'python -m research --help'.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cli_update.register(commands)  # add-class
    cli_use.register(commands)     # evaluate, predict, export
    cli_pretrain.register(commands)  # pretrain
    order = ["pretrain", "add-class", "evaluate", "predict", "export"]
    commands._choices_actions.sort(key=lambda a: order.index(a.dest))  # help lists them in workflow order
    return parser


def _configure_logging(verbosity: int, loggers: Sequence[str]) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    fmt = "%(levelname)s: %(message)s" if verbosity < 2 else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    for name in loggers:
        logging.getLogger(name).setLevel(level)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 the training failed, 2 bad input)."""
    return run_command(build_parser(), argv)


def run_command(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, *,
                loggers: Sequence[str] = ("wilss",)) -> int:
    """Parse ``argv`` with ``parser`` and run the command it names (``args.run``); returns the exit status (0 ok,
    1 a goal or the training failed, 2 bad input, 130 interrupted). ``loggers`` get the verbosity's level."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0), or a usage error already printed as 'error: ...' (2)
        return stop.code if isinstance(stop.code, int) else 2
    _configure_logging(args.verbose, loggers)
    if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1 and args.command != "add-class":
        print(f"error: only add-class runs on several processes; run '{args.command}' without torchrun",
              file=sys.stderr)  # N copies would each train, and race to write the same files
        return 2
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as err:
        log.debug("details of the error below", exc_info=True)
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # the loss diverged mid-training
        print(f"error: training stopped, nothing was written: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
