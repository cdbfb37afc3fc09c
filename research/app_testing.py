"""Test support for the app: a tiny untrained base checkpoint and the real app launched in a subprocess on a free
local port (``python launch.py ...``, exactly what a user runs)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
WORLD_BASE = ["background", "disc", "square", "triangle", "star", "ring", "cross", "hexagon"]


def tiny_checkpoint(path: Path, *, seed: int = 0) -> Path:
    """An untrained 'tiny' segmenter over the world's base classes, saved as a wilss checkpoint."""
    import torch

    from models import build_segmenter
    from wilss.checkpoint import history_entry, new_checkpoint, save_checkpoint

    torch.manual_seed(seed)
    ckpt = new_checkpoint(build_segmenter(arch="tiny", num_classes=len(WORLD_BASE)), WORLD_BASE)
    ckpt.history.append(history_entry("pretrain", WORLD_BASE[1:], num_images=0, settings={"note": "test, untrained"}))
    return save_checkpoint(ckpt, path, overwrite=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(checkpoint: Path, samples: Path, workdir: Path, *, log_path: Path, timeout_s: float = 120.0,
             extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Run ``launch.py`` on a free 127.0.0.1 port until the page answers; yields its URL; stops it after."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--checkpoint", str(checkpoint),
           "--samples", str(samples), "--workdir", str(workdir), "--device", "cpu", *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the app exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    tail = Path(log_path).read_text()[-2000:]
                    raise TimeoutError(f"the app did not answer within {timeout_s} s: {tail}")
                time.sleep(0.5)
            yield url
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)   # its own process group: only what we started
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def resident_mb(pid: int | str = "self") -> dict[str, float]:
    """A process's resident memory in MB, from one read of its ``/proc/PID/status``: ``VmRSS`` and its parts,
    ``RssAnon`` (heap, Python objects, tensors) and ``RssFile`` (mapped files: libraries' code); NaN if absent."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            found[name] = int(value.split()[0]) / 1024
    return {name: found.get(name, float("nan")) for name in ("VmRSS", "RssAnon", "RssFile")}
