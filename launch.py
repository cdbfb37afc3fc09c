"""Start the browser app: ``python launch.py`` opens the shipped base model and the sample images.

    python launch.py [--host 127.0.0.1] [--port 7860] [--auth user:password] [--checkpoint PATH|torchvision:NAME]
                     [--samples DIR] [--workdir DIR] [--max-upload-mb 200] [--max-side 1024] [--device auto]
                     [--threads N]

Everything the app writes (versions, uploads, exports, gradio's cache) lives under --workdir; only that folder
is served. See docs/app.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The wilss browser app: add classes to a segmentation model from "
                                            "image tags (WILSON).")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASSWORD",
                   help="require this login (or set WILSS_APP_AUTH=USER:PASSWORD, which keeps it out of 'ps')")
    p.add_argument("--checkpoint", default=None,
                   help="the model to start from: a checkpoint file, or torchvision:NAME for a pretrained VOC base "
                        "(see docs/bases.md) (default: the shipped base, models/default_base.pt)")
    p.add_argument("--samples", type=Path, default=ROOT / "samples",
                   help="tagged images shown at start (default: samples/)")
    p.add_argument("--workdir", type=Path, default=ROOT / "runs" / "app",
                   help="the app's working folder: versions, uploads, exports (default: runs/app)")
    p.add_argument("--max-upload-mb", type=int, default=200, help="largest accepted upload in MB (default 200)")
    p.add_argument("--max-side", type=int, default=1024, metavar="PX",
                   help="predict and evaluate images whose longer side is larger at this size (default 1024; "
                        "images over 64 MP are refused)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice, one per core). On a machine shared with "
                        "other busy processes, 1 keeps predictions fast (threads waiting on a busy core stall)")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    return p.parse_args(argv)


class LaunchError(ValueError):
    """Bad flags or files: printed as ``error: ...``, exit status 2."""


def check_flags(args: argparse.Namespace, auth: str | None) -> None:
    """The numeric flags and the login, before anything is loaded; ``--threads`` is applied here."""
    import torch

    if auth is not None and (":" not in auth or not auth.split(":", 1)[0] or not auth.split(":", 1)[1]):
        raise LaunchError("--auth must be USER:PASSWORD")
    if args.threads is not None:
        if args.threads < 1:
            raise LaunchError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.max_side < 32:
        raise LaunchError("--max-side must be at least 32")
    if args.max_upload_mb < 1:
        raise LaunchError("--max-upload-mb must be at least 1")


def pick_device(name: str) -> str:
    """``--device`` resolved ('auto': CUDA when available), refused where this machine has no such device."""
    import torch

    from wilss.engine import resolve_device

    try:
        device = str(resolve_device(name))
    except RuntimeError as err:
        raise LaunchError(f"--device {name}: {err}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LaunchError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return device


def pick_checkpoint(spec: str | None, workdir: Path) -> Path:
    """The base model's file, opened once to check it: ``spec`` (a file or torchvision:NAME, saved once in the work
    folder), or the shipped default."""
    from app.session import base_file, open_checkpoint
    from models import DEFAULT_CHECKPOINT
    from wilss.bases import is_base_spec
    from wilss.checkpoint import CheckpointError

    checkpoint = Path(spec or DEFAULT_CHECKPOINT).resolve()
    if spec and is_base_spec(spec):
        try:   # saved once in the work folder; every session starts from that file
            checkpoint = base_file(spec, workdir / "bases").resolve()
        except CheckpointError as err:
            raise LaunchError(f"--checkpoint: {err}") from None
    if not checkpoint.exists() and checkpoint == DEFAULT_CHECKPOINT.resolve():
        raise LaunchError(f"the default base checkpoint {checkpoint} does not exist yet: create it with "
                          f"'python -m research pretrain --out {checkpoint}', or pass --checkpoint")
    try:
        open_checkpoint(checkpoint)
    except CheckpointError as err:
        raise LaunchError(f"--checkpoint: {err}") from None
    return checkpoint


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    workdir = args.workdir.resolve()
    # gradio keeps uploads and rendered outputs in GRADIO_TEMP_DIR, read when gradio is imported: set it first so
    # every file of the app lives in its own folder.
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "cache")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))

    from app.session import AppConfig

    auth = args.auth or os.environ.get("WILSS_APP_AUTH")
    try:
        check_flags(args, auth)
        device = pick_device(args.device)
        checkpoint = pick_checkpoint(args.checkpoint, workdir)
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from app.ui import launch   # imports gradio: after GRADIO_TEMP_DIR is set

    config = AppConfig(workdir=workdir, checkpoint=checkpoint, samples=args.samples.resolve() if args.samples else None,
                       device=device, max_upload_mb=args.max_upload_mb, max_side=args.max_side)
    user_pass = tuple(auth.split(":", 1)) if auth else None
    if args.host not in ("127.0.0.1", "localhost", "::1") and user_pass is None:
        print(f"warning: --host {args.host} makes the app reachable from other machines without a login; "
              "consider --auth USER:PASSWORD", file=sys.stderr)
    print(f"wilss app: model {checkpoint}, samples {config.samples}, work folder {workdir}, device {device}")
    launch(config, host=args.host, port=args.port, auth=user_pass)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
