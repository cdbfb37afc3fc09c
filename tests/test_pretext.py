"""The pretext world (our ImageNet stand-in) and how an encoder moves from the pretext network into a world network."""
import numpy as np
import pytest
import torch

from models import build_segmenter
from research import pretext, recipes, world
from research.cli import main
from wilss.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint


def test_pretext_scenes_are_seeded_and_labelled_by_texture_family():
    a, b = pretext.generate(12, seed=5, size=64), pretext.generate(12, seed=5, size=64)
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))
    labels = np.concatenate([m.ravel() for _, m in pretext.generate(200, seed=1, size=64)])
    counts = np.bincount(labels, minlength=len(pretext.PRETEXT_CLASSES))
    assert len(counts) == len(pretext.PRETEXT_CLASSES) == len(pretext.TEXTURES) + 1
    assert (counts > 0).all(), dict(zip(pretext.PRETEXT_CLASSES, counts))  # every family and the background
    assert 0.05 < 1 - counts[0] / counts.sum() < 0.5  # objects cover a share of the image, not all of it


def test_pretext_uses_none_of_the_world_categories():
    # The stand-in must not know the world's classes: its labels are texture families with other names, and its
    # texture and shape functions are its own.
    assert not set(pretext.PRETEXT_CLASSES[1:]) & set(world.WORLD_CLASSES)
    world_functions = {f for pair in world.CATEGORIES.values() for f in pair}
    assert not world_functions & set(pretext.TEXTURES.values()) and not world_functions & set(pretext.SHAPES)


@pytest.fixture
def pretext_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter(arch="tiny", num_classes=len(pretext.PRETEXT_CLASSES), width=8)
    return save_checkpoint(new_checkpoint(model, list(pretext.PRETEXT_CLASSES)), tmp_path / "pretext.pt")


def test_encoder_init_copies_the_encoder_and_only_the_encoder(pretext_checkpoint):
    source = load_checkpoint(pretext_checkpoint).model
    torch.manual_seed(1)
    model = build_segmenter(arch="tiny", num_classes=8, width=8)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    recipes.encoder_init(source)(model)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head_before.items())
    assert recipes.encoder_init(None) is None


def test_encoder_init_refuses_another_architecture(pretext_checkpoint):
    with pytest.raises(ValueError, match="width"):
        recipes.encoder_init(load_checkpoint(pretext_checkpoint).model)(
            build_segmenter(arch="tiny", num_classes=8, width=16))


def test_cli_refuses_a_missing_or_unreadable_encoder(tmp_path, capsys):
    out = tmp_path / "base.pt"
    assert main(["pretrain", "--out", str(out), "--encoder", str(tmp_path / "none.pt")]) == 2
    assert "--encoder" in capsys.readouterr().err and not out.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["benchmark", "world", "--quick", "--encoder", str(junk)]) == 2
    assert "junk.pt" in capsys.readouterr().err
    assert main(["pretrain", "--pretext", "--out", str(out), "--encoder", "none"]) == 2
    assert "--encoder" in capsys.readouterr().err and not out.exists()
