"""What the app's process keeps after updates and predicts (issue 20), measured in-process and cheaply: the app's own
handlers (``app.handlers``, ``app.update_handlers``) on a tiny untrained base and a few demo samples, as
``research.stress`` serves them, without a server or clients.

    python -m research.memory_probe [--updates 4] [--sessions 2] [--askers 10] [--predicts 10] [--epochs 2]

Prints the process's RSS (``VmRSS``; its anonymous and file-backed parts) after each stage, whether ``torch._dynamo``
is imported, and what each session still holds after its update: tensors of the finished update (its model, the old
model's copy, the localizer, their gradients, the dataset's decoded images) and whether the optimiser is still alive.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

from research.app_testing import resident_mb


def tensor_mb(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None) / 2**20


def held(job) -> dict:
    """MB of what a finished job still references (0 where released)."""
    update = getattr(job, "update", None)
    out = {}
    for name in ("model", "old_model", "localizer"):
        module = getattr(update, name, None)
        out[name] = round(tensor_mb([*module.parameters(), *module.buffers()]), 2) if module is not None else 0.0
    out["grads"] = round(sum(tensor_mb(p.grad for p in getattr(update, n).parameters())
                             for n in ("model", "localizer") if getattr(update, n, None) is not None), 2)
    runner = getattr(job, "runner", None)
    cached = getattr(getattr(runner, "dataset", None), "_cached", {}) or {}
    out["decoded_images"] = round(sum(getattr(v, "nbytes", 0) for v in cached.values()) / 2**20, 2)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m research.memory_probe")
    p.add_argument("--updates", type=int, default=4, help="updates, round robin over the sessions")
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--predicts", type=int, default=10, help="predicts after each update, round robin over --askers")
    p.add_argument("--askers", type=int, default=10, help="sessions that only predict (research.stress: 10)")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from app.handlers import Handlers
    from app.session import AppConfig
    from app.update_handlers import UpdateHandlers
    from research.app_testing import tiny_checkpoint
    from research.demo import write_samples
    from research.stress import SHORT, add_args
    from wilss import trainer

    torch.set_num_threads(1)   # as research.stress runs the app (--threads 1)
    root = Path(tempfile.mkdtemp(prefix="wilss-memprobe-"))
    samples = write_samples(root / "samples", n_positive=16, n_negative=8, heldout=False)
    config = AppConfig(workdir=root / "work", checkpoint=tiny_checkpoint(root / "base.pt"), samples=samples,
                       device="cpu")
    h = Handlers(config)
    u = UpdateHandlers(h)
    SHORT.update(epochs=args.epochs, warmup_epochs=1)
    requests = [SimpleNamespace(session_hash=f"probe-{i}") for i in range(args.sessions)]
    askers = [SimpleNamespace(session_hash=f"asker-{i}") for i in range(args.askers)] or requests
    image = sorted(samples.glob("*.jpg"))[0]

    def line(stage: str) -> None:
        gc.collect()
        mem = resident_mb()
        print(f"{stage:<28} RSS {mem['VmRSS']:7.1f} MB (anon {mem['RssAnon']:6.1f}, files {mem['RssFile']:6.1f})   "
              f"torch._dynamo imported: {'torch._dynamo' in sys.modules}", flush=True)

    line("handlers built")
    for r in requests + askers:
        h.session(r)
        h.predict(r, [str(image)], 0.5)
    line("sessions + first predicts")
    jobs = []
    optimizers = []   # weak references to every optimiser the updates made
    make_sgd = trainer.make_sgd

    def recorded_sgd(*a, **k):
        optimizer = make_sgd(*a, **k)
        optimizers.append(weakref.ref(optimizer))
        return optimizer

    trainer.make_sgd = recorded_sgd
    for n in range(args.updates):
        r = requests[n % len(requests)]
        start = time.perf_counter()
        h.rollback(r, "v000")   # the base again, so 'arrow' is new each time
        for out in u.add_classes(r, *add_args("arrow")):
            pass
        s = h.session(r)
        job = s.last_update
        if job is None or job.saved_as != s.current.name:
            print("update failed:", out[1])
            return 1
        jobs.append(weakref.ref(job))
        line(f"update {n + 1} ({time.perf_counter() - start:.0f} s)")
        print(f"    session {r.session_hash} holds (MB): {held(job)}")
        for _ in range(args.predicts):
            h.predict(askers[_ % len(askers)], [str(image)], 0.5)
        line(f"  + {args.predicts} predicts")
    gc.collect()
    alive = [j() for j in jobs if j() is not None]
    totals = {}
    for job in alive:
        for key, mb in held(job).items():
            totals[key] = round(totals.get(key, 0.0) + mb, 2)
    print(f"update jobs alive: {len(alive)} of {len(jobs)}; with training state: "
          f"{sum(j.update is not None for j in alive)}; together they hold (MB): {totals}")
    print(f"optimisers alive after the updates: {sum(o() is not None for o in optimizers)} of {len(optimizers)}")
    print(f"work folder: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
