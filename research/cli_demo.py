"""``benchmark demo``: the app's one-click demo, timed and scored.

    python -m research benchmark demo [--base CKPT] [--samples DIR] [--device auto] [--out FILE] [--quick]
                                   [--curve N]

Runs the demo's update exactly as the app does (``research.demo.run_demo``), then prints the demo class's IoU and mIoU
old / new / all before and after, on the generated world's test split and on ``samples/heldout.zip``, and the wall
time of the update.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from models import DEFAULT_CHECKPOINT
from research import demo, recipes
from research.experiment_setup import quick
from wilss.cli_common import (REPO_ROOT, CliError, ProgressBar, check_new_file, open_checkpoint, update_config,
                              write_report)
from wilss.engine import resolve_device

DEFAULT_SAMPLES = REPO_ROOT / "samples"


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def score_table(title: str, before: dict, after: dict, class_names) -> list[str]:
    """A markdown table: mIoU old / new / all and every class's IoU, before and after (%)."""
    lines = [f"### {title}", "", "| % | before | after |", "| --- | --- | --- |"]
    lines += [f"| mIoU {k} | {_fmt(before['summary'][k])} | {_fmt(after['summary'][k])} |"
              for k in ("old", "new", "all")]
    lines += [f"| IoU {n} | {_fmt(before['iou'].get(n))} | {_fmt(after['iou'].get(n))} |" for n in class_names]
    return lines


def cmd_benchmark_demo(args: argparse.Namespace) -> int:
    base_path = Path(args.base) if args.base is not None else DEFAULT_CHECKPOINT
    samples = Path(args.samples) if args.samples is not None else DEFAULT_SAMPLES
    if args.out is not None:
        check_new_file(args.out, overwrite=args.overwrite)
    base = open_checkpoint(base_path)
    names = demo.demo_class_names()
    if list(base.class_names) != names[:-1]:
        raise CliError(f"--base {base_path} has classes {base.class_names}; the demo adds '{recipes.DEMO_CLASS}' "
                       f"to a base of {names[:-1]}")
    device = str(resolve_device(args.device))
    before_world = demo.world_test_scores(base.model, device=device)
    heldout = samples / demo.HELDOUT_FILE
    pairs = demo.read_heldout(heldout)[1] if heldout.is_file() else None
    before_heldout = demo.scores(base.model, pairs, names, [recipes.DEMO_CLASS], device=device) if pairs else None
    cfg = update_config(args, recipes.DEMO_UPDATE)
    if args.quick:
        cfg = quick(cfg)
    curve: list[tuple[int, float, dict]] = []        # (iteration, seconds of the update so far, scores)
    clock = {"start": time.perf_counter(), "scoring": 0.0}

    def probe(progress, model) -> None:   # run_demo leaves the scoring time out of its own count, and so does this
        now = time.perf_counter()
        curve.append((progress.iteration, now - clock["start"] - clock["scoring"],
                      demo.world_test_scores(model, device=device)))
        clock["scoring"] += time.perf_counter() - now

    with ProgressBar(quiet=args.quiet) as bar:
        run = demo.run_demo(base, samples, cfg=cfg, device=device, on_progress=lambda p: bar.update(p, "demo"),
                            probe=probe if args.curve else None, probe_every=args.curve or 0)
    after_world = demo.world_test_scores(run.model, device=device)
    new = recipes.DEMO_CLASS
    title = f"## Demo: add '{new}' to {base_path.name} from {samples} ({run.iterations} iterations, {device})"
    lines = [title + (" (quick smoke run)" if args.quick else ""), "",
             f"{new} IoU {_fmt(after_world['iou'][new])} · mIoU old {_fmt(after_world['summary']['old'])} "
             f"(base {_fmt(before_world['summary']['old'])}) · new {_fmt(after_world['summary']['new'])} · "
             f"all {_fmt(after_world['summary']['all'])} · wall time {run.seconds:.1f} s   (world test split)", ""]
    if curve:
        lines += [f"### Learning curve (world test split every {args.curve} iterations; training seconds)", "",
                  f"| iteration | seconds | {new} IoU | mIoU old |", "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {it} | {secs:.0f} | {_fmt(sc['iou'][new])} | {_fmt(sc['summary']['old'])} |"
                  for it, secs, sc in curve]
        lines += [f"| {run.iterations} | {run.seconds:.0f} | {_fmt(after_world['iou'][new])} | "
                  f"{_fmt(after_world['summary']['old'])} |", ""]
    lines += score_table(f"World test split ({recipes.WORLD_COUNTS['test']} images)", before_world, after_world,
                         names)
    if pairs:
        after_heldout = demo.scores(run.model, pairs, names, [new], device=device)
        lines += [""] + score_table(f"samples/{demo.HELDOUT_FILE} ({len(pairs)} images, what the app shows)",
                                    before_heldout, after_heldout, names)
    text = "\n".join(lines)
    print(text)
    write_report(args.out, text, overwrite=args.overwrite)
    return 0
