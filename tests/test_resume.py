"""Interrupted updates: a run stopped mid-epoch and resumed from its snapshot ends with the uninterrupted run's
exact weights; snapshots of another run are refused with the difference named."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import NEW, make_checkpoint, write_tagged

from models import build_segmenter
from research.world import generate
from wilss.checkpoint import load_checkpoint
from wilss.cli import main
from wilss.config import UpdateConfig, to_dict
from wilss.recipes import DEMO_UPDATE
from wilss.resume import ResumeError, Resumer, read_snapshot, resume_path
from wilss.trainer import WeakUpdate
from wilss.training_data import TagDataset
from wilss.transforms import train_transform

CFG = UpdateConfig(epochs=3, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def dataset():
    """8 images, 2 iterations per epoch, with the random scale/crop/flip (so the RNG restore matters)."""
    scenes = generate(8, seed=0, size=32)
    targets = np.array([[0, 0, float(4 in np.unique(m))] for _, m in scenes], np.float32)
    augment = train_transform(32, (0.5, 2.0), True)
    return TagDataset([image for image, _ in scenes], targets, transform=lambda image: augment(image))


def base_model():
    torch.manual_seed(0)
    return build_segmenter(arch="tiny", num_classes=3, width=8, head_channels=16).eval()


def fingerprint(cfg=CFG):
    return {"settings": to_dict(cfg), "classes": ["new"]}


@pytest.mark.parametrize("stop", [3, 4])  # mid-epoch (2 iterations per epoch), an epoch's end
def test_stopped_and_resumed_matches_the_uninterrupted_run(dataset, tmp_path, stop):
    whole = WeakUpdate(base_model(), dataset, num_new=1, cfg=CFG)
    uninterrupted = [p.losses for p in whole.run()]

    path = resume_path(tmp_path / "out.pt")
    assert path.name == "out.resume.pt"
    first = WeakUpdate(base_model(), dataset, num_new=1, cfg=CFG)
    saver = Resumer(path, fingerprint=fingerprint(), every_s=1e9, every_iterations=3, min_gap_s=0)
    run = first.run(saver)
    for progress in run:
        if progress.iteration == stop:  # snapshots after iterations 2 (epoch end), 3 (every 3rd), 4 (epoch end)
            break
    run.close()  # the crash
    assert saver.saves == stop - 1
    snapshot = read_snapshot(path, fingerprint())
    assert (snapshot["iteration"], snapshot["epoch"]) == (stop, stop // 2)

    second = WeakUpdate(base_model(), dataset, num_new=1, cfg=CFG)
    resumed = list(second.run(Resumer(path, fingerprint=fingerprint(), snapshot=snapshot)))
    assert [p.iteration for p in resumed] == list(range(stop + 1, 7)) and resumed[0].first_iteration == stop
    assert {p.phase for p in resumed} == {"joint"}
    for got, want in zip(resumed, uninterrupted[stop:]):
        assert got.losses == pytest.approx(want, rel=1e-6)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    for name, value in whole.localizer.state_dict().items():
        torch.testing.assert_close(second.localizer.state_dict()[name], value, rtol=1e-6, atol=1e-7)


def test_a_snapshot_of_another_run_is_refused(dataset, tmp_path):
    path = tmp_path / "out.resume.pt"
    update = WeakUpdate(base_model(), dataset, num_new=1, cfg=CFG)
    run = update.run(Resumer(path, fingerprint=fingerprint(), every_s=1e9, min_gap_s=0))
    next(run), next(run)  # the epoch's end writes a snapshot
    run.close()
    other = fingerprint(UpdateConfig(epochs=4, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8))
    with pytest.raises(ResumeError, match=r"different update.*settings\.epochs: 3 then, 4 now"):
        read_snapshot(path, other)
    (tmp_path / "junk.resume.pt").write_bytes(b"not a snapshot")
    with pytest.raises(ResumeError, match="cannot be read"):
        read_snapshot(tmp_path / "junk.resume.pt", fingerprint())


# ------------------------------------------------------------------------------------ add-class killed
LONG = ["--save-every", "0", "--epochs", "20", "--warmup-epochs", "1", "--batch-size", "4", "--crop-size", "64",
        "--localizer-channels", "16", "--device", "cpu", "--quiet"]
REPO = Path(__file__).resolve().parents[1]


def cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_killed_add_class_resumes_to_the_uninterrupted_result(tmp_path, capsys):
    base = make_checkpoint(tmp_path / "base.pt")
    base_bytes = base.read_bytes()
    command = ["add-class", "--checkpoint", base, "--images", write_tagged(tmp_path / "tagged"), "--class", NEW]
    assert cli([*command, *LONG, "--out", tmp_path / "whole.pt"], capsys)[0] == 0  # uninterrupted, for reference

    out, snapshot = tmp_path / "run" / "model.pt", tmp_path / "run" / "model.resume.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "wilss", *map(str, command), *LONG, "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not snapshot.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # the crash: no chance to clean up
    proc.wait()
    assert snapshot.exists() and not out.exists(), proc.stderr.read().decode()
    done = torch.load(snapshot, weights_only=True)["iteration"]
    assert 1 <= done < 40  # 20 epochs of 2 iterations, a snapshot after each (--save-every 0)

    code, _, err = cli([*command, *LONG, "--out", out], capsys)
    assert code == 2 and "add --resume to continue it" in err
    code, _, err = cli([*command, *LONG, "--lr-head", "0.02", "--out", out, "--resume"], capsys)
    assert code == 2 and f"settings.lr_head: {DEMO_UPDATE.lr_head} then, 0.02 now" in err
    assert torch.load(snapshot, weights_only=True)["iteration"] == done  # refusals change nothing

    code, text, err = cli([*command, *LONG, "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert f"resuming from {snapshot} at iteration {done}" in text
    assert not snapshot.exists() and base.read_bytes() == base_bytes
    resumed, whole = load_checkpoint(out), load_checkpoint(tmp_path / "whole.pt")
    assert [h["kind"] for h in resumed.history] == ["add-class"] and resumed.history[0]["classes"] == [NEW]
    assert resumed.history[0]["resumed_from_iteration"] == [done]
    assert resumed.class_names == whole.class_names == ["background", "disc", "square", NEW]
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-4, atol=1e-5)
