"""Benchmark of the app as a user meets it: ``python -m research.app_bench`` prints the figures of issue 3.

Launches ``launch.py`` on the shipped default (base model and ``samples/``) on a free 127.0.0.1 port, then measures:
the page load (HTTP GET of the page), a predict on a sample image (in-process ``Predictor.predict`` at the default
size, and the round trip through the app's API), and the interval between live-gallery refreshes during the demo
update. Medians over ``--runs``. Nothing here is a test: it prints figures.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from models import DEFAULT_CHECKPOINT
from wilss.data import list_images

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def predict_in_process(checkpoint: Path, image_path: Path, runs: int) -> float:
    from wilss.checkpoint import load_checkpoint
    from wilss.data import load_image
    from wilss.inference import Predictor

    predictor = Predictor(load_checkpoint(checkpoint).model, device="cpu")
    image = load_image(image_path)
    return median_ms(lambda: predictor.predict(image), runs)


def gallery_intervals(client, samples: Path, epochs: int) -> list[float]:
    """Seconds between successive live-gallery updates while the demo update runs (``epochs`` of it)."""
    from gradio_client import handle_file

    from app.update import ADVANCED
    from wilss.recipes import DEMO_UPDATE

    images = list_images(samples, recursive=False)
    client.predict([handle_file(str(p)) for p in images], handle_file(str(samples / "tags.csv")),
                   api_name="/bring_data")
    values = {"epochs": epochs, "warmup_epochs": max(1, epochs // 5)}
    advanced = [values.get(name, getattr(DEMO_UPDATE, name)) for name, *_ in ADVANCED]
    job = client.submit("arrow", "", "", "#ff8000", "#400000", "#c00000", [], *advanced, api_name="/add_classes")
    stamps, last = [], None
    for _progress, _status, _plot, gallery in job:
        if isinstance(gallery, dict) and gallery.get("value") and gallery["value"] != last:
            stamps.append(time.perf_counter())
            last = gallery["value"]
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m research.app_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--samples", type=Path, default=ROOT / "samples")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the update whose gallery is timed")
    args = parser.parse_args(argv)
    from gradio_client import Client, handle_file

    from research.app_testing import launched

    image = list_images(args.samples, recursive=False)[0]
    print(f"predict in process ({image.name}, default size, CPU): "
          f"median {predict_in_process(args.checkpoint, image, args.runs):.1f} ms over {args.runs}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        with launched(args.checkpoint, args.samples, tmp / "work", log_path=tmp / "server.log") as url:
            print(f"app start until the page answers: {time.perf_counter() - start:.1f} s")
            page = median_ms(lambda: urllib.request.urlopen(url, timeout=10).read(), args.runs)
            print(f"page load (HTTP GET {url}): median {page:.1f} ms over {args.runs}")
            client = Client(url, verbose=False, download_files=str(tmp / "downloads"))
            api = median_ms(lambda: client.predict(handle_file(str(image)), 0.5, api_name="/predict"), args.runs)
            print(f"predict through the app API (round trip, rendering included): median {api:.1f} ms over {args.runs}")
            gaps = gallery_intervals(client, args.samples, args.epochs)
            if gaps:
                print(f"live gallery refresh during the update: median {statistics.median(gaps):.2f} s, "
                      f"max {max(gaps):.2f} s over {len(gaps)} refreshes")
            else:
                print("live gallery refresh: no refresh seen (update too short)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
