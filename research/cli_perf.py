"""``bench``: the speed of one update configuration, optimised path against the plain fp32 eager path.

Each path runs in a fresh subprocess (``--path``) so that peak memory (process RSS on CPU) and FLOPs are comparable.
Timing: on CPU (a machine often shared) both paths' iterations alternate in the parent process, so a change of load
hits both alike; on CUDA each subprocess times its own path. The parent prints one table and the ratio.
``--options`` instead: the cost of each method and option of the update, one row per process (``research.option_cost``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace

from research import option_cost
from research.bench import CONFIGS, GPU_PEAK_TFLOPS, Measurement, build_setup, interleaved_seconds, measure
from wilss.cli_common import (CliError, add_common_flags, device_arg, non_negative_int, positive_float,
                              positive_int)
from wilss.engine import resolve_device
from wilss.runtime import PLAIN, PRECISIONS, RuntimeConfig, optimised

PATHS = ("optimised", "plain")
# Per configuration: iterations, warm-up and device when not given (every CPU configuration alike).
DEFAULTS = {name: dict(iterations=10, warmup=3, device="cpu") for name in CONFIGS if name.startswith("cpu-")}
DEFAULTS["gpu-r101"] = dict(iterations=30, warmup=10, device="auto")


def runtime_of(args: argparse.Namespace, path: str) -> RuntimeConfig:
    """The path's ``RuntimeConfig``: 'plain' is fp32 eager; 'optimised' is the default with the flags applied."""
    if path == "plain":
        return PLAIN
    base = optimised(resolve_device(args.device))
    workers = base.num_workers if args.workers is None else args.workers
    return RuntimeConfig(precision=args.precision, channels_last=not args.no_channels_last, compile=args.compile,
                         num_workers=workers)


def run_one(args: argparse.Namespace, path: str) -> Measurement:
    setup = build_setup(args.config, batch_size=args.batch_size, crop_size=args.crop_size)
    return measure(setup, runtime_of(args, path), path=path, iterations=args.iterations, warmup=args.warmup,
                   device=args.device, count_flops=path == "plain")


def run_in_subprocess(args: argparse.Namespace, path: str, *, short: bool) -> Measurement:
    """``python -m research bench ... --path PATH --json``, in a fresh process; its last stdout line is the result.
    ``short``: two iterations, enough for the peak memory and the FLOPs when the timing is taken elsewhere."""
    return child_measurement(["--path", path, *_child_flags(args, short)], f"the {path} path")


def child_measurement(flags: list[str], what: str) -> Measurement:
    """``python -m research bench FLAGS --json`` in a fresh process (its own peak memory); its last stdout line is
    the ``Measurement``. Raises ``RuntimeError`` naming ``what`` when the process fails."""
    argv = [sys.executable, "-m", "research", "bench", *flags, "--json"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}")
    values = json.loads(done.stdout.strip().splitlines()[-1])
    return Measurement(**{**values, "seconds": tuple(values["seconds"])})


def pooled(runs: list[Measurement]) -> Measurement:
    """One path's rounds as one measurement: all timed iterations, the highest peak, the counted FLOPs."""
    flops = next((m.flops for m in runs if m.flops), None)
    return replace(runs[0], seconds=tuple(t for m in runs for t in m.seconds),
                   peak_bytes=max(m.peak_bytes for m in runs), flops=flops)


def format_report(args: argparse.Namespace, description: str, rows: list[Measurement],
                  peak_tflops: float | None) -> str:
    """The table of ``rows``, the FLOPs line and, with both paths, the ratio plain / optimised."""
    flops = next((m.flops for m in rows if m.flops), None)
    where = ("the paths' iterations alternating in one process" if args.timing == "interleaved" else
             f"each path in its own process, {args.rounds} round(s)")
    lines = [f"bench {args.config}: {description}; device {rows[0].device}",
             f"timing: joint phase, median of {args.iterations * args.rounds} iterations after {args.warmup} "
             f"warm-up, {where}",
             f"{'path':<10} {'dtype':<9} {'ch-last':<7} {'compile':<7} {'workers':>7} {'img/s':>8} "
             f"{'ms/iter':>9} {'peak MiB':>9} {'TFLOP/s':>8} {'MFU':>6}"]
    for m in rows:
        rt = m.runtime
        rate = flops / m.median_s / 1e12 if flops else float("nan")
        mfu = f"{100 * rate / peak_tflops:5.1f}%" if flops and peak_tflops else "   n/a"
        workers = "cfg" if rt["num_workers"] is None else rt["num_workers"]
        lines.append(f"{m.path:<10} {m.dtype:<9} {str(rt['channels_last']):<7} {str(rt['compile']):<7} "
                     f"{workers:>7} {m.images_per_s:8.2f} {1000 * m.median_s:9.1f} {m.peak_bytes / 2**20:9.0f} "
                     f"{rate:8.3f} {mfu:>6}")
    lines.append(f"peak memory: {rows[0].peak_kind}, each path in its own process")
    if flops:
        lines.append(f"FLOPs of one iteration (forward + backward, FlopCounterMode): {flops / 1e9:.1f} GFLOP"
                     + (f"; MFU against {peak_tflops:g} TFLOP/s" if peak_tflops else "; MFU: give --peak-tflops"))
    by_path = {m.path: m for m in rows}
    if set(by_path) == set(PATHS):
        ratio = by_path["plain"].median_s / by_path["optimised"].median_s
        lines.append(f"speed-up of the optimised path (plain ms/iter / optimised ms/iter): {ratio:.2f}x")
    return "\n".join(lines)


def cmd_options(args: argparse.Namespace) -> int:
    """``bench --options``: the cost of each method and option (``research.option_cost``), a row a process."""
    if args.path is not None or args.timing == "interleaved":
        raise CliError("--options times each row in its own process: leave out --path and --timing interleaved")
    rows = args.rows or tuple(option_cost.ROWS)
    base = build_setup(args.config, batch_size=args.batch_size, crop_size=args.crop_size)
    if args.json:   # one row, in this process: what the parent runs for each row
        if len(rows) != 1:
            raise CliError("--options --json prints one row's figures: give --rows with one row")
        setup = option_cost.row_setup(rows[0], base, replay_steps=args.replay_steps)
        result = measure(setup, runtime_of(args, "optimised"), path=rows[0], iterations=args.iterations,
                         warmup=args.warmup, device=args.device)
        print(json.dumps(result.to_dict()))
        return 0
    replay = ["--replay-steps", str(args.replay_steps)] if args.replay_steps else []
    results, failed = [], {}
    for row in rows:
        try:
            flags = ["--options", "--rows", row, *_child_flags(args, False), *replay]
            results.append(child_measurement(flags, f"the {row} row"))
        except RuntimeError as err:   # e.g. out of memory: report it, keep the other rows
            failed[row] = str(err).splitlines()[-1]
    for row, reason in failed.items():
        print(f"{row} row failed: {reason}")
    if results:
        print(option_cost.format_table(results, description=base.description, iterations=args.iterations,
                                       warmup=args.warmup,
                                       inversion=option_cost.inversion_note(base.cfg, args.replay_steps)))
    return 0 if results else 1


def cmd_bench(args: argparse.Namespace) -> int:
    for key, value in DEFAULTS[args.config].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.options:
        return cmd_options(args)
    if args.rows or args.replay_steps:
        raise CliError("--rows and --replay-steps choose the rows of --options: give --options with them")
    if args.json and args.path is None:
        raise CliError("--json prints one path's figures: give --path optimised or --path plain with it")
    if args.compile and resolve_device(args.device).type != "cuda":
        print("note: --compile on CPU compiles for minutes before the first iteration", file=sys.stderr)
    if args.path is not None:
        result = run_one(args, args.path)
        print(json.dumps(result.to_dict()) if args.json else format_report(args, args.config, [result], None))
        return 0
    interleave = args.timing == "interleaved" or (args.timing is None and resolve_device(args.device).type == "cpu")
    runs: dict[str, list[Measurement]] = {path: [] for path in PATHS}
    failed: dict[str, str] = {}
    for _ in range(1 if interleave else args.rounds):  # alternate the paths: a load change hits both
        for path in (p for p in PATHS if p not in failed):
            try:
                runs[path].append(run_in_subprocess(args, path, short=interleave))
            except RuntimeError as err:  # e.g. the fp32 path out of GPU memory: report it, keep the other
                failed[path] = str(err).splitlines()[-1]
    rows = [pooled(runs[path]) for path in PATHS if runs[path]]
    for path, reason in failed.items():
        print(f"{path} path failed: {reason}")
    if not rows:
        return 1
    setup = build_setup(args.config, batch_size=args.batch_size, crop_size=args.crop_size)
    if interleave and not failed:
        # plain first: on CUDA the optimised runtime, built last, leaves cudnn.benchmark on for both
        seconds = interleaved_seconds(setup, {p: runtime_of(args, p) for p in reversed(PATHS)}, device=args.device,
                                      iterations=args.iterations * args.rounds, warmup=args.warmup)
        rows = [replace(row, seconds=seconds[row.path]) for row in rows]
    args.timing = "interleaved" if interleave and not failed else "processes"
    cuda = rows[0].device.startswith("cuda")
    peak = args.peak_tflops or (GPU_PEAK_TFLOPS if cuda else None)
    print(format_report(args, setup.description, rows, peak))
    return 0


def _child_flags(args: argparse.Namespace, short: bool) -> list[str]:
    """The flags that define the measurement, for the subprocess of one path."""
    iterations, warmup = (1, 1) if short else (args.iterations, args.warmup)
    flags = ["--config", args.config, "--iterations", str(iterations), "--warmup", str(warmup),
             "--device", args.device, "--precision", args.precision]
    for flag, value in (("--batch-size", args.batch_size), ("--crop-size", args.crop_size),
                        ("--workers", args.workers)):
        if value is not None:
            flags += [flag, str(value)]
    return flags + ["--no-channels-last"] * args.no_channels_last + ["--compile"] * args.compile


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "bench", help="speed of one update configuration: optimised path vs plain fp32 eager",
        description="Time WeakUpdate iterations (joint phase) of one configuration twice, each path in a fresh "
                    "process: the optimised path (the default of add-class and the app: bf16/fp16 autocast on "
                    "CUDA, channels-last, the old model under inference_mode, DataLoader workers on CUDA) and the "
                    "plain fp32 eager path of the same code. Prints images/s, median ms per iteration, peak "
                    "memory, TFLOP/s and model FLOPs utilisation (FLOPs counted with FlopCounterMode), and the "
                    "ratio of the two paths. See docs/performance.md.",
        epilog="examples:\n"
               "  python -m research bench --config cpu-default\n"
               "  python -m research bench --config gpu-r101 --compile\n"
               "  python -m research bench --options --rows wilss,ilt,hrhf\n"
               "  python -m research bench --config gpu-r101 --batch-size 4 --crop-size 256 --device cpu "
               "--iterations 2")
    p.add_argument("--config", choices=CONFIGS, default="cpu-default",
                   help="cpu-default: the demo add-class (shipped tiny base, samples/, recipe DEMO_UPDATE); "
                        "gpu-r101: DeepLabV3-ResNet-101, 512 px crops, batch 24 (the paper's), synthetic images "
                        "(default: cpu-default)")
    p.add_argument("--iterations", type=positive_int, metavar="N",
                   help="timed iterations (default: 10 cpu-default, 30 gpu-r101)")
    p.add_argument("--warmup", type=non_negative_int, metavar="N",
                   help="untimed iterations first (default: 3 cpu-default, 10 gpu-r101)")
    p.add_argument("--rounds", type=positive_int, default=1, metavar="R",
                   help="R times the iterations; with --timing processes, the two paths' processes alternate R "
                        "times (default: 1)")
    p.add_argument("--timing", choices=("interleaved", "processes"),
                   help="interleaved: time both paths in one process, their iterations alternating (robust to a "
                        "shared machine's load; peak memory still comes from one fresh process per path); "
                        "processes: time each path in its own process (default: interleaved on CPU, processes "
                        "on CUDA)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="override the configuration's batch")
    p.add_argument("--crop-size", type=positive_int, metavar="PX", help="override the configuration's crop")
    opt = p.add_argument_group("the optimised path")
    opt.add_argument("--precision", choices=PRECISIONS, default="auto",
                     help="autocast dtype: auto = bf16 on CUDA where supported, else fp16 with a GradScaler; fp32 "
                          "on CPU (default: auto)")
    opt.add_argument("--no-channels-last", action="store_true", help="keep NCHW activations")
    opt.add_argument("--compile", action="store_true", help="torch.compile the loss computation")
    opt.add_argument("--workers", type=non_negative_int, metavar="N",
                     help="DataLoader workers (default: min(8, CPUs) on CUDA, 0 on CPU)")
    p.add_argument("--peak-tflops", type=positive_float, metavar="T",
                   help=f"peak dense TFLOP/s for MFU (default: {GPU_PEAK_TFLOPS:g} on CUDA, H100/H200 bf16; "
                        "none on CPU)")
    costs = p.add_argument_group("the cost of each method and option (--options)")
    costs.add_argument("--options", action="store_true",
                       help="instead of the two paths, one row per method or option of the update on the "
                            "configuration's images (WILSS, + ILT output distillation, + frozen encoder, + HRHF "
                            "replay with its inversion's seconds, + region priors, MiB with masks, the offline "
                            "pipeline), each in its own process, on the optimised path")
    costs.add_argument("--rows", type=option_cost.rows_arg, metavar="LIST",
                       help=f"with --options: a comma-separated subset of {','.join(option_cost.ROWS)} "
                            "(default: all)")
    costs.add_argument("--replay-steps", type=positive_int, metavar="N",
                       help="with --options: the hrhf row's inversion steps (default: the recipe's, 200)")
    p.add_argument("--path", choices=PATHS, help="measure only this path, in this process")
    p.add_argument("--json", action="store_true", help="with --path: print the figures as one JSON line")
    p.add_argument("--device", type=device_arg, help="cpu, cuda, cuda:N or auto (default: cpu for cpu-default, "
                                                     "auto = CUDA when available for gpu-r101)")
    add_common_flags(p)
    p.set_defaults(run=cmd_bench)
