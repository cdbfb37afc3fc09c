"""Many processes (gloo, CPU): two processes with half of each batch take the same steps as one process with
the whole batch, and keep identical weights (gradients really are averaged through DDP); `torchrun ... add-class`
writes exactly one checkpoint."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_cli import FAST, NEW, make_checkpoint, write_tagged
from torch import nn

from models import build_segmenter
from research.cli import main
from research.world import generate
from wilss.checkpoint import load_checkpoint
from wilss.config import UpdateConfig
from wilss.distributed import World, current_world, per_process_batch, setup_from_env, wrap_for_training
from wilss.trainer import WeakUpdate
from wilss.training_data import TagDataset

CFG = UpdateConfig(epochs=3, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_norms(module: nn.Module) -> nn.Module:
    """BatchNorm -> GroupNorm in place. Why: per-process batch statistics differ from whole-batch ones by design,
    and SyncBatchNorm (which would make them equal) has no CPU kernel; GroupNorm is per image."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            group_norms(child)
    return module


def train(out: Path) -> None:
    """One process's update on 8 fixed 32 px images (no augmentation); saves its losses and final weights."""
    torch.set_num_threads(1)
    scenes = generate(8, seed=0, size=32)
    targets = np.array([[0, 0, float(4 in np.unique(m))] for _, m in scenes], np.float32)
    torch.manual_seed(0)
    model = group_norms(build_segmenter(arch="tiny", num_classes=3, width=8, head_channels=16))
    update = WeakUpdate(model, TagDataset([image for image, _ in scenes], targets), num_new=1, cfg=CFG,
                        device="cpu")
    group_norms(update.localizer)
    losses = [p.losses for p in update.run()]
    rank = current_world().rank
    torch.save({"losses": losses, "model": update.model.state_dict(), "localizer": update.localizer.state_dict(),
                "ddp": type(update.net).__name__}, out / f"rank{rank}.pt")


def worker(rank: int, world_size: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        train(out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    (tmp_path / "two").mkdir()
    (tmp_path / "one").mkdir()
    mp.spawn(worker, args=(2, free_port(), tmp_path / "two"), nprocs=2, join=True)
    worker(0, 1, free_port(), tmp_path / "one")  # a process group of one: same sampler order, whole batches
    one, r0, r1 = (torch.load(tmp_path / p, weights_only=True) for p in ("one/rank0.pt", "two/rank0.pt",
                                                                        "two/rank1.pt"))
    assert (one["ddp"], r0["ddp"]) == ("TrainedPair", "DistributedDataParallel")
    assert len(r0["losses"]) == len(one["losses"]) == 6  # 3 epochs x (8 images / global batch 4)
    assert set(r0["losses"][0]) == {"cls", "loc"} and set(r0["losses"][-1]) == {"cls", "loc", "seg"}
    for got, want, other in zip(r0["losses"], one["losses"], r1["losses"]):
        assert got == other  # reported losses are reduced over both processes
        assert got == pytest.approx(want, rel=1e-4)
    for part in ("model", "localizer"):
        for name, value in one[part].items():
            assert torch.equal(r0[part][name], r1[part][name]), name  # gradients were synchronised
            torch.testing.assert_close(r0[part][name], value, rtol=1e-4, atol=1e-5)


def test_single_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world, device = setup_from_env("cpu")
    assert world == World() and device == torch.device("cpu") and not dist.is_initialized()
    assert per_process_batch(24, World(world_size=3)) == 8
    with pytest.raises(ValueError, match="multiple of 5"):
        per_process_batch(24, World(world_size=5))
    with pytest.raises(ValueError, match="--sync-bn needs CUDA"):
        wrap_for_training(nn.BatchNorm2d(4), world=World(world_size=2, distributed=True), device=torch.device("cpu"),
                          sync_bn=True)


def test_other_commands_refuse_several_processes(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["pretrain", "--out", str(tmp_path / "base.pt")]) == 2
    assert "only add-class runs on several processes" in capsys.readouterr().err
    assert not (tmp_path / "base.pt").exists()


@pytest.mark.slow
def test_torchrun_add_class_writes_exactly_one_checkpoint(tmp_path):
    base = make_checkpoint(tmp_path / "base.pt")
    images, out = write_tagged(tmp_path / "tagged"), tmp_path / "result" / "model.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "wilss", "add-class", "--checkpoint", str(base), "--images", str(images),
               "--class", NEW, "--out", str(out), *map(str, FAST)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.pt"]  # no snapshot left, one writer
    assert done.stdout.count("wrote ") == 1 and done.stdout.count("adding ") == 1  # rank 0 alone prints
    entry = load_checkpoint(out).history[-1]
    assert entry["processes"] == 2 and entry["classes"] == [NEW] and entry["num_images"] == 8
    assert all(np.isfinite(v) for k, v in entry["metrics"].items() if k.startswith("final_loss"))
