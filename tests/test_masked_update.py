"""MiB's pixel-supervised step on a tiny model: its losses are the functions' values, the input model is untouched,
ILT's options behave, and the step learns the new class from masks."""
import numpy as np
import pytest
import torch

from models import build_segmenter
from models.segmenter import resized
from research.world import generate
from wilss import losses as L
from wilss.config import UpdateConfig
from wilss.engine import last
from wilss.masked_update import MaskedUpdate
from wilss.training_data import masked_training_set

CFG = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, scale_range=(1.0, 1.0))
NEW_ID = 4   # the world's triangle; the tiny base knows background, disc (1) and square (2)


@pytest.fixture(scope="module")
def scenes():
    return generate(8, seed=0, size=32)


def masked_set(scenes, cfg=CFG):
    """Masks in the grown model's ids: only the new class labelled (id 3), as MiB's steps label them."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[NEW_ID], lut[255] = 3, 255
    return masked_training_set([(image, mask) for image, mask in scenes], cfg, label_map=lut)


def small_model():
    torch.manual_seed(0)
    return build_segmenter(arch="tiny", num_classes=3, width=8, head_channels=16).eval()


def test_losses_are_mib_unbiased_ce_and_kd(scenes):
    update = MaskedUpdate(small_model(), masked_set(scenes), num_new=1, cfg=CFG, device="cpu")
    images = torch.stack([update.dataset[i][0] for i in range(4)])
    labels = torch.stack([update.dataset[i][1] for i in range(4)])
    assert set(labels.unique().tolist()) <= {0, 3, 255} and (labels == 3).any()
    with torch.no_grad():
        got = {k: v.item() for k, v in update.losses(images, labels).items()}
        logits = update.model(images)
        old = resized(update.old_model.forward_features(images)[0], labels.shape[-2:])
    assert set(got) == {"ce", "kd"}
    assert got["ce"] == pytest.approx(L.unbiased_ce(logits, labels, 3).item(), rel=1e-5)
    assert got["kd"] == pytest.approx(10.0 * L.unbiased_kd(logits, old).item(), rel=1e-5)


def test_step_grows_the_model_keeps_the_input_and_lowers_the_loss(scenes):
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = UpdateConfig(epochs=6, warmup_epochs=1, batch_size=4, crop_size=32, scale_range=(1.0, 1.0),
                       lr_backbone=1e-2, lr_head=5e-2)
    update = MaskedUpdate(model, masked_set(scenes, cfg), num_new=1, cfg=cfg, device="cpu")
    progress = list(update.run())
    assert [p.phase for p in progress] == ["mib"] * 12 and progress[-1].lr == pytest.approx(0.0, abs=1e-9)
    assert progress[-1].losses["ce"] < progress[0].losses["ce"]
    assert update.model.num_classes == 4 and update.model.activation == "softmax" and not update.model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_ilt_options_in_the_mib_step(scenes):
    model = small_model()
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, freeze_encoder=True,
                       output_distillation=100.0, feature_distillation=1.0)
    update = MaskedUpdate(model, masked_set(scenes, cfg), num_new=1, cfg=cfg, device="cpu")
    assert [g["name"] for g in update.parameter_groups()] == ["head"]
    final = last(update.run())
    assert set(final.losses) == {"ce", "kd", "od", "fd"}
    assert final.losses["fd"] == 0.0   # a frozen encoder gives the old features
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(update.model.encoder.state_dict()[name], value), name


def test_a_stopped_mib_step_resumes_to_the_uninterrupted_result(scenes, tmp_path):
    from wilss.config import to_dict
    from wilss.resume import Resumer, read_snapshot

    cfg = UpdateConfig(epochs=3, warmup_epochs=1, batch_size=4, crop_size=32, scale_range=(0.5, 2.0))
    whole = MaskedUpdate(small_model(), masked_set(scenes, cfg), num_new=1, cfg=cfg, device="cpu")
    uninterrupted = [p.losses for p in whole.run()]
    path, fingerprint = tmp_path / "out.resume.pt", {"settings": to_dict(cfg)}
    first = MaskedUpdate(small_model(), masked_set(scenes, cfg), num_new=1, cfg=cfg, device="cpu")
    run = first.run(Resumer(path, fingerprint=fingerprint, every_s=1e9, every_iterations=3, min_gap_s=0))
    for progress in run:
        if progress.iteration == 3:   # mid-epoch (2 iterations an epoch)
            break
    run.close()
    second = MaskedUpdate(small_model(), masked_set(scenes, cfg), num_new=1, cfg=cfg, device="cpu")
    resumed = list(second.run(Resumer(path, fingerprint=fingerprint, snapshot=read_snapshot(path, fingerprint))))
    assert [p.iteration for p in resumed] == [4, 5, 6]
    for got, want in zip(resumed, uninterrupted[3:]):
        assert got.losses == pytest.approx(want, rel=1e-6)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=1e-6, atol=1e-7)
