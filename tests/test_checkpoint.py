import pickle

import numpy as np
import pytest
import torch

from models import build_segmenter
from wilss.checkpoint import (CheckpointError, history_entry, load_checkpoint, new_checkpoint,
                              save_checkpoint)


def make_ckpt():
    torch.manual_seed(0)
    ckpt = new_checkpoint(build_segmenter(arch="tiny", num_classes=3, width=8), ["background", "disc", "star"])
    ckpt.history.append(history_entry("pretrain", ["disc", "star"], num_images=10, settings={"epochs": 1}))
    return ckpt


def test_round_trip_rebuilds_the_same_model(tmp_path):
    ckpt = make_ckpt()
    path = save_checkpoint(ckpt, tmp_path / "a.pt")
    loaded = load_checkpoint(path)
    assert loaded.class_names == ckpt.class_names
    assert np.array_equal(loaded.colours, ckpt.colours)
    assert loaded.history[0]["kind"] == "pretrain" and loaded.history[0]["num_images"] == 10
    x = torch.randn(1, 3, 32, 32)
    ckpt.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ckpt.model(x))


def test_grown_model_round_trips(tmp_path):
    ckpt = make_ckpt()
    ckpt.model.grow(1)
    ckpt.class_names.append("ring")
    ckpt.colours = np.vstack([ckpt.colours, [[1, 2, 3]]]).astype(np.uint8)
    loaded = load_checkpoint(save_checkpoint(ckpt, tmp_path / "b.pt"))
    assert loaded.model.num_classes == 4 and loaded.class_names[-1] == "ring"


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_payload_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "wilss-checkpoint", "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)


def test_foreign_and_missing_files_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a wilss checkpoint"):
        load_checkpoint(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_never_overwrites_input_or_existing(tmp_path):
    ckpt = make_ckpt()
    path = save_checkpoint(ckpt, tmp_path / "in.pt")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="input checkpoint"):
        save_checkpoint(ckpt, path, protect=(path,), overwrite=True)
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(ckpt, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["in.pt"]  # no temp file left behind
