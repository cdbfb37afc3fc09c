"""``benchmark world --sequence SPEC``: a long sequence of weak steps on the generated world (e.g. 7-1-1 or
5-1-1-1-1, the world recipe's setting), every step scored, as a table of forgetting: old mIoU after each step per
method (WILSS, WILSS + HRHF replay, WILSS + ILT output distillation...), new and all after the last step.
Issue 21's goal for replay is reported below the table (not an exit status)."""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

from research import recipes
from research.experiment_setup import (check_step_images, shortened_schedules, step_images, step_images_title,
                                       world_encoder)
from research.experiments import Benchmark, Row
from research.sequence import METHODS, format_forgetting, format_steps, run_sequence
from wilss.cli_common import CliError, ProgressBar, check_new_file, open_checkpoint, update_config, write_report
from wilss.metrics import percent
from wilss.recipes import WORLD_CLASSES
from wilss.tasks import parse_task


def replay_goal_checks(rows: list[Row]) -> list[tuple[str, bool]]:
    """Issue 21: after the last step, WILSS + HRHF keeps old mIoU >= WILSS's + 5 and new >= WILSS's - 2."""
    by = {r.method: r for r in rows}
    w, h = by.get("wilss"), by.get("hrhf")
    if w is None or h is None:
        return []
    return [(f"HRHF old {percent(h.old)} >= WILSS old + 5 ({percent(w.old + 5)})", h.old >= w.old + 5),
            (f"HRHF new {percent(h.new)} >= WILSS new - 2 ({percent(w.new - 2)})", h.new >= w.new - 2)]


def cmd_sequence(args: argparse.Namespace) -> int:
    """Base (``--base``, or trained by the world recipe), then every weak step of ``--sequence`` for each method."""
    if args.dataset != "world":
        raise CliError("--sequence is for the world benchmark")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise CliError(f"--sequence runs {', '.join(METHODS)}; not {', '.join(unknown)}")
    if args.arch is not None or args.task is not None or args.samples is not None or args.curve is not None:
        raise CliError("--arch, --task, --samples and --curve are not for --sequence (the task is its SPEC)")
    if args.tags_base or args.save_base is not None:
        raise CliError("--tags-base and --save-base are for the one-step benchmark, not --sequence")
    try:
        task = parse_task(args.sequence, len(WORLD_CLASSES))
    except ValueError as err:
        raise CliError(f"--sequence: {err}") from None
    if task.num_steps < 3:
        raise CliError(f"--sequence {args.sequence}: give at least two weak steps (e.g. 7-1-1 or 5-1-1-1-1)")
    protocol = replace(recipes.world_protocol(), task=task)
    title = f"world {args.sequence} {protocol.setting}{step_images_title(args)}: old mIoU after each step"
    pretrain_cfg, update_cfg, title = shortened_schedules(
        args, recipes.WORLD_PRETRAIN, update_config(args, recipes.WORLD_UPDATE), title)
    base = None
    if args.base is not None:
        base = open_checkpoint(args.base)
        if base.class_names != protocol.model_class_names(0):
            raise CliError(f"--base {args.base} has classes {base.class_names}, not step 0's of --sequence "
                           f"{args.sequence}: {protocol.model_class_names(0)}")
    if args.out is not None:
        check_new_file(args.out, overwrite=args.overwrite)
    init = world_encoder(args)
    train, test = recipes.world_splits()
    start = time.perf_counter()
    with ProgressBar(quiet=args.quiet) as bar:
        bench = Benchmark(protocol, train, test, pretrain_cfg=pretrain_cfg, update_cfg=update_cfg, arch="tiny",
                          device=args.device, on_progress=lambda name, p: bar.update(p, name), init_model=init,
                          **step_images(args))
        check_step_images(bench)
        rows, results = run_sequence(bench, base=base, methods=args.methods, score_each_step=True)
    report = [format_forgetting(rows, results, title), "", "Per step:", "", format_steps(results)]
    checks = replay_goal_checks(rows)
    if checks:
        report += ["", "Goals (issue 21; reported, not an exit status):"]
        report += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
    text = "\n".join(report)
    print(text)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    write_report(args.out, text, overwrite=args.overwrite)
    return 0
