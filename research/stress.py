"""Reliability figures of the served app (issue 20): ``python -m research.stress`` launches ``launch.py`` on 127.0.0.1
with a tiny untrained base and the demo's samples, then, as attackers and unlucky users would:

1. sends a corpus of bad inputs through every endpoint that takes a file (and a few good ones);
2. tries reads outside the session: gradio's file route and tag rows pointing at other files and sessions;
3. runs 4 concurrent updates (4 sessions) while 10 clients send 50 predicts of one image;
4. kills the app with SIGKILL during an update, restarts it on the same work folder, and lists the versions again.

It prints counts: inputs tried / clear errors / tracebacks, reads refused, predicts failed, versions listed after the
restart, and the app's RSS before and after the load. The goal: 0 tracebacks, every read refused, 0 failed predicts,
every version listed, RSS within 20 % of its start. Takes a few minutes on two CPU cores; needs gradio_client.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from app.session_files import RUNNING, folder_name
from research.app_testing import ROOT, free_port, resident_mb, tiny_checkpoint
from wilss.data import list_images

SHORT = dict(epochs=2, warmup_epochs=1, batch_size=8, localizer_channels=16)
SETTLE_S = 3.0   # after a load, before its RSS: the app trims its heap once requests pause (app.serving, 1 s)
CLIENT_TIMEOUT_S = 120.0   # a request's HTTP exchanges (an upload, a download); the answer itself may take longer


# --------------------------------------------------------------------------------------------------- the app
def start(checkpoint: Path, samples: Path, workdir: Path, log: Path, timeout_s: float = 300.0):
    """``launch.py`` in its own process group on a free port; returns (process, url) once the page answers."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--checkpoint", str(checkpoint),
           "--samples", str(samples), "--workdir", str(workdir), "--device", "cpu", "--threads", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "a"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"the app did not answer within {timeout_s} s; see {log}")


def wait_for(path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} did not appear within {timeout_s} s")
        time.sleep(0.2)


def stop(proc, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)   # its own process group: only what this script started
        proc.wait(timeout=30)


def client(url: str, folder: Path):
    """A gradio_client as patient as a browser: its uploads and downloads otherwise give up after httpx's default
    5 s, which a loaded server misses (each such predict counted as failed, and left a ClientDisconnect behind)."""
    from gradio_client import Client

    folder.mkdir(parents=True, exist_ok=True)
    return Client(url, verbose=False, download_files=str(folder), httpx_kwargs={"timeout": CLIENT_TIMEOUT_S})


def add_args(name: str, **changes):
    """The add-class request's inputs: ``SHORT``'s settings (with ``changes``) over the demo's."""
    from app.update import ADVANCED
    from wilss.recipes import DEMO_UPDATE

    settings = {**SHORT, **changes}
    advanced = [settings.get(field, getattr(DEMO_UPDATE, field)) for field, *_ in ADVANCED]
    return (name, "", "", "#ff8000", "#400000", "#c00000", [], *advanced)


# ------------------------------------------------------------------------------------------- bad inputs
def _png(path: Path, size=(32, 24), value=90) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def _zip(path: Path, members: dict, *, understate: bool = False, link: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    if understate:   # headers say 10 bytes: unpacking fails its CRC check
        data = bytearray(path.read_bytes())
        local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
        data[local + 22:local + 26] = data[central + 24:central + 28] = (10).to_bytes(4, "little")
        path.write_bytes(bytes(data))
    return path


def _checkpoint(folder: Path, name: str, change) -> Path:
    import torch

    payload = torch.load(tiny_checkpoint(folder / "good.pt"), weights_only=True)
    change(payload)
    torch.save(payload, folder / name)
    return folder / name


def corpus(folder: Path, samples: Path, other: Path) -> list[tuple[str, str, tuple, bool]]:
    """(label, endpoint, argument paths or values, expected to succeed). ``other``: a file of another session."""
    from gradio_client import handle_file as f

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    good = _png(folder / "a.png")
    text = folder / "notes.png"
    text.write_text("not an image")
    deep = folder / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    rotated = folder / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((24, 32, 3), 90, np.uint8)).save(rotated, exif=exif)

    def tags(name, rows):
        (folder / name).write_text("filename,tags\n" + "".join(f'"{r}",arrow\n' for r in rows))
        return f(str(folder / name))

    sample = [f(str(p)) for p in list_images(samples, recursive=False)[:4]]
    items = [
        ("text renamed .png", "/bring_data", ([f(str(text))], None), False),
        ("truncated png", "/bring_data", ([f(str(_trunc(folder)))], None), False),
        ("72 MP header", "/bring_data", ([f(str(_png_header(folder / "huge.png", 9000, 8000)))], None), False),
        ("zip traversal", "/bring_data", ([f(str(_zip(folder / "up.zip", {"../evil.png": b"x"})))], None), False),
        ("zip symlink", "/bring_data", ([f(str(_zip(folder / "ln.zip", {"a.png": good.read_bytes()}, link="b.png")))],
                                        None), False),
        ("zip understated sizes", "/bring_data", ([f(str(_zip(folder / "crc.zip", {"a.png": os.urandom(4000)},
                                                               understate=True)))], None), False),
        ("zip that is not a zip", "/bring_data", ([f(str(_copy(text, folder / "fake.zip")))], None), False),
        ("tags: absolute path", "/bring_data", (sample, tags("abs.csv", ["/etc/passwd"])), False),
        ("tags: missing absolute path", "/bring_data", (sample, tags("gone.csv", ["/no/such/x.png"])), False),
        ("tags: other session's file", "/bring_data", (sample, tags("other.csv", [str(other)])), False),
        ("tags: ../ to another session", "/bring_data",
         (sample, tags("up.csv", [f"../../{other.parent.name}/{other.name}"])), False),
        ("tags: NUL byte", "/bring_data", (sample, tags("nul.csv", ["000.jpg\x00.png"])), False),
        ("tags: JSON nested 100000 deep", "/bring_data", (sample, f(str(deep))), False),
        ("good images, EXIF-rotated photo", "/bring_data", (sample + [f(str(rotated))], None), True),
        ("checkpoint: text", "/load_checkpoint", (f(str(text)),), False),
        ("checkpoint: pickled code", "/load_checkpoint",
         (f(str(_save(folder / "evil.pt", {"format": "wilss-checkpoint", "version": 1, "hook": print}))),), False),
        ("checkpoint: no state_dict", "/load_checkpoint",
         (f(str(_checkpoint(folder, "nostate.pt", lambda p: p.pop("state_dict")))),), False),
        ("checkpoint: colour 300", "/load_checkpoint",
         (f(str(_checkpoint(folder, "colour.pt", lambda p: p["colours"].__setitem__(1, [300, 0, 0])))),), False),
        ("checkpoint: extra key", "/load_checkpoint",
         (f(str(_checkpoint(folder, "extra.pt", lambda p: p["state_dict"].__setitem__("x", torch.zeros(1))))),),
         False),
        ("checkpoint: huge width", "/load_checkpoint",
         (f(str(_checkpoint(folder, "wide.pt", lambda p: p["model"].__setitem__("width", 10**7)))),), False),
        ("predict: text", "/predict", (f(str(text)), 0.5), False),
        ("predict: 72 MP header", "/predict", (f(str(folder / "huge.png")), 0.5), False),
        ("predict: 3000x2000 image", "/predict", (f(str(_png(folder / "big.png", (3000, 2000)))), 0.5), True),
        ("predict: EXIF-rotated photo", "/predict", (f(str(rotated)), 0.5), True),
        ("evaluate: zip understated sizes", "/evaluate", ([f(str(folder / "crc.zip"))], [], "(none)", ""), False),
        ("evaluate: mask of another size", "/evaluate", ([f(str(good))], [f(str(_mask(folder / "m" / "a.png")))],
                                                          "(none)", ""), False),
    ]
    return items


def _mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


def _trunc(folder: Path) -> Path:
    data = _png(folder / "t.png", (64, 64)).read_bytes()
    (folder / "trunc.png").write_bytes(data[: len(data) // 2])
    return folder / "trunc.png"


def _copy(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes())
    return dest


def _save(path: Path, payload) -> Path:
    import torch

    torch.save(payload, path)
    return path


STATUS_AT = {"/bring_data": 0, "/predict": 3, "/evaluate": 1}


def run_corpus(c, items) -> tuple[int, int, int, list[str]]:
    """(tried, clear errors, tracebacks, notes on anything unexpected)."""
    from gradio_client.exceptions import AppError

    clear = tracebacks = 0
    notes = []
    for label, endpoint, args, should_work in items:
        try:
            out = c.predict(*args, api_name=endpoint)
        except AppError as err:
            tracebacks += 1
            notes.append(f"{label}: unhandled ({str(err)[:100]})")
            continue
        status = out if isinstance(out, str) else out[STATUS_AT[endpoint]]
        failed = str(status).startswith("**Error:**")
        clear += failed
        if failed == should_work:
            notes.append(f"{label}: {'refused' if failed else 'accepted'}: {str(status)[:120]}")
    return len(items), clear, tracebacks, notes


# ---------------------------------------------------------------------------------------------------- reads
def run_reads(url: str, workdir: Path, victim_id: str) -> tuple[int, int]:
    """(reads tried, refused): gradio's file route on paths an attacker can name, or derive from another client's
    session id had it leaked (the folder name needs the server's key as well)."""
    import hashlib

    plain = hashlib.sha256(victim_id.encode()).hexdigest()[:32]
    targets = ["/etc/passwd", "../" * 8 + "etc/passwd", str(ROOT / "launch.py"), str(workdir / ".session-key"),
               f"{workdir}/s-{plain}/v000.pt", f"{workdir}/s-{plain}/versions.json",
               f"{workdir}/{time.strftime('%Y%m%d-%H%M%S')}-{victim_id.replace('-', '')[:8]}/v000.pt"]
    refused = 0
    for target in targets:
        try:
            with urllib.request.urlopen(f"{url}gradio_api/file={target}", timeout=10):
                pass
        except urllib.error.HTTPError as err:
            refused += err.code in (403, 404)
    return len(targets), refused


# ------------------------------------------------------------------------------------------------ the load
def run_load(url: str, folder: Path, image: Path, *, updates: int, predicts: int,
             timeout_s: float = 900.0) -> tuple[int, list[str], list]:
    """(updates finished, why each failed predict failed, clients that made a version) under concurrent updates and
    predicts."""
    from gradio_client import handle_file

    makers = [client(url, folder / f"u{i}") for i in range(updates)]
    jobs = [m.submit(*add_args("arrow"), api_name="/add_classes") for m in makers]
    askers = [client(url, folder / f"p{i}") for i in range(10)]

    def one(i) -> str:
        """'' for a whole answer, else why not."""
        try:
            job = askers[i % len(askers)].submit(handle_file(str(image)), 0.5, api_name="/predict")
            out = job.result(timeout=timeout_s)
            whole = out[3].startswith(f"{image.name}:") and Path(out[0]).is_file()
            return "" if whole else f"answered {str(out[3])[:80]}"
        except Exception as err:   # any failure of the request counts, a timeout too
            return f"{type(err).__name__}: {str(err)[:80]}"

    with ThreadPoolExecutor(10) as pool:
        failures = [why for why in pool.map(one, range(predicts)) if why]
    finished = sum("v001" in str(job.result(timeout=timeout_s)[1]) for job in jobs)
    return finished, failures, makers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m research.stress")
    p.add_argument("--predicts", type=int, default=50)
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--loads", type=int, default=2,
                   help="how many times the load runs (default 2: RSS after the first includes one-time costs, the "
                        "first training and each worker thread's first use of torch; a leak grows it after each)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (printed)")
    p.add_argument("--quick", action="store_true",
                   help="a smaller load for a busy machine: 2 updates, 20 predicts, 24 sample images")
    args = p.parse_args(argv)
    if args.quick:
        args.updates, args.predicts = min(args.updates, 2), min(args.predicts, 20)
    from research.demo import write_samples

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # a timeout's SIGTERM still stops the app (finally)

    root = Path(tempfile.mkdtemp(prefix="wilss-stress-"))
    samples = write_samples(root / "samples", n_positive=16 if args.quick else 40, n_negative=8 if args.quick else 24,
                            heldout=not args.quick)
    workdir, log = root / "work", root / "server.log"
    base = tiny_checkpoint(root / "base.pt")
    proc, url = start(base, samples, workdir, log)
    try:
        first = client(url, root / "c0")
        first.predict(api_name="/model_info")
        memory = [resident_mb(proc.pid)]   # at the start, then after each load
        other_client = client(url, root / "c1")
        other_client.predict(api_name="/model_info")
        other = workdir / folder_name(workdir, other_client.session_hash) / "v000.pt"   # another session's file
        items = corpus(root / "inputs", samples, other)
        tried, clear, tracebacks, notes = run_corpus(first, items)
        reads, refused = run_reads(url, workdir, other_client.session_hash)
        across = [label for label, *_ in items if "session" in label]   # tag rows reaching another session
        reads, refused = reads + len(across), refused + sum(not any(n.startswith(a) for n in notes) for a in across)
        finished, failures, makers = 0, [], None
        for n in range(args.loads):   # the first load also pays one-time costs; later ones show a leak if any
            done, failed, clients = run_load(url, root / f"load{n}", samples / "000.jpg", updates=args.updates,
                                             predicts=args.predicts)
            finished, failures, makers = finished + done, failures + failed, makers or clients
            time.sleep(SETTLE_S)
            memory.append(resident_mb(proc.pid))
        # kill -9 during an update of a session that has made v001, then restart on the same work folder
        victim = makers[0]
        victim.predict("v000", api_name="/rollback")     # to add the class again from v000: a v002 in the making
        job = victim.submit(*add_args("arrow", epochs=40), api_name="/add_classes")   # still running when killed
        wait_for(workdir / folder_name(workdir, victim.session_hash) / RUNNING)
        time.sleep(1)
        stop(proc, signal.SIGKILL)
        try:
            job.result()
        except Exception:   # the connection died with the server
            pass
        proc, url = start(base, samples, workdir, log)
        back = client(url, root / "back")
        back.session_hash = victim.session_hash   # the same session, as a reconnecting client
        header = back.predict(api_name="/model_info")[0]
        listed = sum(back.predict(v, api_name="/rollback").startswith("**Done:**") for v in ("v000", "v001"))
        told = "server restarted" in header
    finally:
        stop(proc)
    server_log = log.read_text()
    server_tracebacks, gone = server_log.count("Traceback"), server_log.count("went away during")
    figures = {"inputs tried": tried, "clear errors": clear, "tracebacks (client)": tracebacks,
               "tracebacks (server log)": server_tracebacks, "clients gone mid-request (one log line each)": gone,
               "reads tried": reads, "reads refused": refused,
               "updates finished": f"{finished}/{args.updates * args.loads}",
               "predicts failed": f"{len(failures)}/{args.predicts * args.loads}",
               "versions listed after kill -9 + restart": f"{listed}/2",
               "restart told to the client": told,
               "app RSS MB (start, after each load)": [round(m["VmRSS"]) for m in memory],
               "of which anonymous / file-backed MB": [f"{m['RssAnon']:.0f} / {m['RssFile']:.0f}" for m in memory]}
    print(json.dumps(figures, indent=1))
    for note in notes + [f"predict failed: {why}" for why in sorted(set(failures))]:
        print("note:", note)
    print(f"files: {root}" if args.keep else "")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
