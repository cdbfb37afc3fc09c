"""Interrupted updates: a run stopped mid-epoch and resumed from its snapshot ends with the uninterrupted run's
exact weights; snapshots of another run are refused with the difference named."""
import numpy as np
import pytest
import torch

from models import build_segmenter
from wilss.config import UpdateConfig, to_dict
from wilss.data import TagDataset
from wilss.engine import last
from wilss.resume import ResumeError, Resumer, read_snapshot, resume_path
from wilss.trainer import WeakUpdate
from wilss.transforms import train_transform
from wilss.world import generate

CFG = UpdateConfig(epochs=3, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_stopped_mid_epoch_and_resumed_matches_the_uninterrupted_run(dataset, tmp_path):
    whole = WeakUpdate(base_model(), dataset, num_new=1, cfg=CFG)
    uninterrupted = [p.losses for p in whole.run()]

    path = resume_path(tmp_path / "out.pt")
    assert path.name == "out.resume.pt"
    first = WeakUpdate(base_model(), dataset, num_new=1, cfg=CFG)
    saver = Resumer(path, fingerprint=fingerprint(), every_s=1e9, every_iterations=3)
    run = first.run(saver)
    for progress in run:
        if progress.iteration == 3:  # mid-epoch 2 (2 iterations per epoch): saved at 2 (epoch end) and 3
            break
    run.close()  # the crash
    assert saver.saves == 2
    snapshot = read_snapshot(path, fingerprint())
    assert (snapshot["iteration"], snapshot["epoch"]) == (3, 1)

    second = WeakUpdate(base_model(), dataset, num_new=1, cfg=CFG)
    resumed = list(second.run(Resumer(path, fingerprint=fingerprint(), snapshot=snapshot)))
    assert [p.iteration for p in resumed] == [4, 5, 6] and resumed[0].first_iteration == 3
    assert [p.phase for p in resumed] == ["joint"] * 3
    for got, want in zip(resumed, uninterrupted[3:]):
        assert got.losses == pytest.approx(want, rel=1e-6)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    for name, value in whole.localizer.state_dict().items():
        torch.testing.assert_close(second.localizer.state_dict()[name], value, rtol=1e-6, atol=1e-7)


def test_a_snapshot_of_another_run_is_refused(dataset, tmp_path):
    path = tmp_path / "out.resume.pt"
    update = WeakUpdate(base_model(), dataset, num_new=1, cfg=CFG)
    run = update.run(Resumer(path, fingerprint=fingerprint(), every_s=1e9))
    next(run), next(run)  # the epoch's end writes a snapshot
    run.close()
    other = fingerprint(UpdateConfig(epochs=4, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8))
    with pytest.raises(ResumeError, match=r"different update.*settings\.epochs: 3 then, 4 now"):
        read_snapshot(path, other)
    (tmp_path / "junk.resume.pt").write_bytes(b"not a snapshot")
    with pytest.raises(ResumeError, match="cannot be read"):
        read_snapshot(tmp_path / "junk.resume.pt", fingerprint())
