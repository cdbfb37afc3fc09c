"""Mechanics of the update loop on a tiny model: phases, learning rates, snapshots, cancel, input untouched."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from models import build_segmenter
from research.world import generate
from wilss import losses as L
from wilss.config import PretrainConfig, UpdateConfig
from wilss.engine import last
from wilss.trainer import WeakUpdate, pretrain
from wilss.training_data import PixelDataset, TagDataset

CFG = UpdateConfig(epochs=3, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)


@pytest.fixture(scope="module")
def scenes():
    return generate(8, seed=0, size=32)


def tag_dataset(scenes):
    targets = np.stack([[float(4 in np.unique(m))] for _, m in scenes])  # 2 old classes + 1 new: K-1 = 3 columns
    targets = np.concatenate([np.zeros((len(scenes), 2), np.float32), targets], axis=1)
    return TagDataset([img for img, _ in scenes], targets)


def small_model():
    torch.manual_seed(0)
    return build_segmenter(arch="tiny", num_classes=3, width=8, head_channels=16).eval()


def test_update_phases_losses_and_snapshots(scenes):
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items = [(scenes[0][0], np.array([0, 0, 1], np.float32))]
    update = WeakUpdate(model, tag_dataset(scenes), num_new=1, cfg=CFG, snapshot_items=items, snapshot_every=2)
    progress = list(update.run())
    assert [p.phase for p in progress] == ["warmup"] * 2 + ["joint"] * 4
    assert set(progress[0].losses) == {"cls", "loc"} and set(progress[-1].losses) == {"cls", "loc", "seg"}
    assert progress[-1].iteration == progress[-1].total_iterations == 6
    snaps = [p for p in progress if p.snapshots]
    assert [p.iteration for p in snaps] == [2, 4, 6]
    snap = snaps[-1].snapshots[0]
    assert snap.cams.shape == (1, 32, 32) and 0.0 <= snap.cams.min() and snap.cams.max() <= 1.0
    assert snap.pseudo_label.shape == snap.prediction.shape == (32, 32)
    assert snap.prediction.max() < 4
    assert update.model.num_classes == 4
    for k, v in model.state_dict().items():  # the input model is never modified
        assert torch.equal(v, before[k]), k


def test_learning_rates_constant_in_warmup_then_poly(scenes):
    update = WeakUpdate(small_model(), tag_dataset(scenes), num_new=1, cfg=CFG)
    lrs = [p.lr for p in update.run()]
    assert lrs[0] == lrs[1] == pytest.approx(CFG.lr_backbone)
    assert lrs[2] < lrs[1] and lrs[-1] == pytest.approx(0.0, abs=1e-9)
    names = [g["name"] for g in update.parameter_groups()]
    assert names == ["backbone", "head", "localizer"]


def test_cancel_between_iterations_keeps_the_input_model(scenes):
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = WeakUpdate(model, tag_dataset(scenes), num_new=1, cfg=CFG).run()
    next(run)
    run.close()  # what a cancel button does
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("frozen", [False, True])
def test_frozen_encoder_batch_norm_keeps_the_old_statistics_while_weights_train(scenes, frozen):
    from dataclasses import replace

    model = small_model()
    update = WeakUpdate(model, tag_dataset(scenes), num_new=1, cfg=replace(CFG, freeze_encoder_bn=frozen))
    list(update.run())
    old, new = model.encoder.state_dict(), update.model.encoder.state_dict()
    stats = [k for k in old if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in old if k.endswith("weight")]
    assert stats and weights
    assert all(torch.equal(old[k], new[k]) for k in stats) == frozen    # statistics: the old model's, or the step's
    assert not any(torch.equal(old[k], new[k]) for k in weights)        # the weights train either way
    head_stats = [k for k in model.state_dict() if not k.startswith("encoder.") and k.endswith("running_mean")]
    assert head_stats and not any(torch.equal(model.state_dict()[k], update.model.state_dict()[k]) for k in head_stats)


def first_batch_losses(scenes, **options) -> dict[str, float]:
    """The joint phase's named losses on the first four images, before any training: the same seed gives every
    configuration the same localizer and new classifier rows, so two configurations differ only by their options."""
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8, **options)
    update = WeakUpdate(small_model(), tag_dataset(scenes), num_new=1, cfg=cfg)
    images = torch.stack([update.dataset[i][0] for i in range(4)])
    targets = torch.stack([torch.as_tensor(update.dataset[i][1]) for i in range(4)])
    with torch.no_grad():
        return {name: loss.item() for name, loss in update.losses(images, targets, "joint").items()}


def test_each_option_changes_its_own_loss_and_no_other(scenes):
    plain = first_batch_losses(scenes)
    assert set(plain) == {"cls", "loc", "seg"}
    same = lambda got, *names: all(got[n] == plain[n] for n in names)  # noqa: E731
    relaxed = first_batch_losses(scenes, relaxed=True)  # l_CLS also reads the old classes' tags (all 0 here)
    assert relaxed["cls"] != plain["cls"] and same(relaxed, "loc", "seg")
    dropped = first_batch_losses(scenes, drop_unlocalized=True)  # l_SEG skips images whose pseudo-label misses a tag
    assert dropped["seg"] != plain["seg"] and same(dropped, "cls", "loc")
    fd = first_batch_losses(scenes, feature_distillation=1.0)
    assert fd["fd"] == pytest.approx(0.0, abs=1e-9) and same(fd, "cls", "loc", "seg")  # new encoder = old encoder
    self_training = first_batch_losses(scenes, pamr_self_training=True)
    assert self_training["self"] > 0 and same(self_training, "cls", "loc", "seg")
    ft = first_batch_losses(scenes, old_model_prior=False, old_model_targets=False)  # fine-tuning: no old model
    assert set(ft) == {"cls", "seg"} and ft["seg"] != plain["seg"] and same(ft, "cls")


def test_options_train_together(scenes):
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8,
                       feature_distillation=1.0, pamr_self_training=True, drop_unlocalized=True, relaxed=True)
    final = last(WeakUpdate(small_model(), tag_dataset(scenes), num_new=1, cfg=cfg).run())
    assert set(final.losses) == {"cls", "loc", "fd", "seg", "self"}
    assert final.losses["fd"] > 0   # after training, the encoder has moved away from the old one


@pytest.mark.parametrize("loss, activation", [("bce", "sigmoid"), ("ce", "softmax")])
def test_pretrain_sets_the_activation_it_trained(scenes, loss, activation):
    model = build_segmenter(arch="tiny", num_classes=10, width=8, head_channels=16)
    items = [(img, np.where(np.arange(32)[None, :] < 2, 255, m).astype(np.uint8)) for img, m in scenes]
    cfg = PretrainConfig(epochs=2, batch_size=4, crop_size=32, loss=loss)
    progress = list(pretrain(model, PixelDataset(items), cfg))
    assert len(progress) == 4 and progress[-1].phase == "pretrain"
    assert np.isfinite(progress[-1].losses[loss])
    assert model.activation == activation


def test_automatic_old_tags_give_l_cls_negatives_from_the_old_model(scenes):
    """Every image shows the new class (no negatives): l_CLS runs over all classes with the old columns read from
    the old model's confident predictions, not from the (absent) tags."""
    dataset = tag_dataset(scenes)
    dataset.targets[:] = 0.0
    dataset.targets[:, -1] = 1.0
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8,
                       auto_old_tags=True, auto_tag_threshold=0.5, auto_tag_min_fraction=0.0)
    update = WeakUpdate(small_model(), dataset, num_new=1, cfg=cfg)
    images = torch.stack([dataset[i][0] for i in range(4)])
    targets = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(4)])
    with torch.no_grad():
        got = update.losses(images, targets, "warmup")["cls"]
        old_probs = update.old_model.probabilities(update.old_model.forward_features(images)[0])
        old_tags = (old_probs[:, 1:] > 0.5).flatten(2).amax(-1).float()
        z = update.localizer(update.model.encode(images)["out"])
        logits = L.aggregate_scores(z, gamma=cfg.focal_gamma, lam=cfg.focal_lambda, eps=cfg.gwp_eps)[:, 1:]
        want = L.classification_loss(logits, torch.cat([old_tags, targets[:, -1:]], 1))
    assert 0 < old_tags.sum() < old_tags.numel()  # the old model tags some old classes, not all
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert np.isfinite(last(update.run()).losses["cls"])


def test_detail_localizer_and_pamr_refined_targets(scenes):
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8,
                       localizer_detail=True, pamr_refine_stride=2, pamr_refine_iterations=3)
    items = [(scenes[0][0], np.array([0, 0, 1], np.float32))]
    update = WeakUpdate(small_model(), tag_dataset(scenes), num_new=1, cfg=cfg, snapshot_items=items,
                        snapshot_every=1)
    images = torch.stack([update.dataset[i][0] for i in range(4)])
    with torch.no_grad():
        z = update.localizer(*(update.model.encode(images)[k] for k in ("out", "detail")))
    assert z.shape == (4, 4, 8, 8)   # 32 px at stride 4 (the plain localizer: stride 8, 4x4)
    final = last(update.run())
    assert set(final.losses) == {"cls", "loc", "seg"} and all(np.isfinite(v) for v in final.losses.values())
    assert final.snapshots[0].pseudo_label.shape == (32, 32)   # the PAMR-refined target, at stride 2
    with pytest.raises(ValueError, match="reads a detail map"):
        update.localizer(update.model.encode(images)["out"])

    no_detail = small_model()
    no_detail.detail_key = None   # as torchvision's networks, which name no detail map
    with pytest.raises(ValueError, match="no detail map"):
        WeakUpdate(no_detail, tag_dataset(scenes), num_new=1, cfg=cfg)


def test_coarse_to_fine_refined_targets_train_at_full_resolution(scenes):
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8,
                       pamr_refine_stride=2, pamr_refine_iterations=3, pamr_refine_fine_iterations=2)
    update = WeakUpdate(small_model(), tag_dataset(scenes), num_new=1, cfg=cfg)
    images = torch.stack([update.dataset[i][0] for i in range(4)])
    target = torch.full((4, 4, 4, 4), 0.25)
    assert update._refined(images, target).shape == (4, 4, 32, 32)   # l_SEG's target at the crop's 32 px
    final = last(update.run())
    assert set(final.losses) == {"cls", "loc", "seg"} and all(np.isfinite(v) for v in final.losses.values())


@pytest.mark.parametrize("field, value, message", [("pamr_refine_stride", -1, "pamr_refine_stride"),
                                                   ("pamr_refine_iterations", 0, "pamr_refine_iterations"),
                                                   ("pamr_refine_fine_iterations", -1, "pamr_refine_fine_iterations"),
                                                   ("pamr_refine_fine_iterations", 5, "needs the refinement on"),
                                                   ("alpha", 1.5, "alpha"),
                                                   ("output_distillation", -1.0, "output_distillation"),
                                                   ("unbiased_kd", -0.5, "unbiased_kd")])
def test_update_config_refuses_out_of_range_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        UpdateConfig(**{field: value})


def test_output_distillation_adds_ilt_l_d_equal_to_the_function(scenes):
    plain = first_batch_losses(scenes)
    ilt = first_batch_losses(scenes, output_distillation=2.0)
    assert set(ilt) == {"cls", "loc", "seg", "od"} and all(ilt[n] == plain[n] for n in ("cls", "loc", "seg"))
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)
    update = WeakUpdate(small_model(), tag_dataset(scenes), num_new=1, cfg=cfg)
    images = torch.stack([update.dataset[i][0] for i in range(4)])
    with torch.no_grad():
        want = L.output_distillation(update.model.forward_features(images)[0],
                                     update.old_model.forward_features(images)[0])
    assert want.item() > 0   # MiB's init lowers the background logit: the old channels' softmax moved
    assert ilt["od"] == pytest.approx(2.0 * want.item(), rel=1e-5)
    assert "od" not in first_batch_losses(scenes, output_distillation=0.0)


def test_frozen_encoder_stays_bit_identical_while_the_rest_learns(scenes):
    cfg = replace(CFG, freeze_encoder=True, output_distillation=1.0)
    model = small_model()
    items = [(scenes[0][0], np.array([0, 0, 1], np.float32))]   # snapshots switch modes: the encoder stays frozen
    update = WeakUpdate(model, tag_dataset(scenes), num_new=1, cfg=cfg, snapshot_items=items, snapshot_every=1)
    assert [g["name"] for g in update.parameter_groups()] == ["head", "localizer"]
    final = last(update.run())
    assert set(final.losses) == {"cls", "loc", "seg", "od"} and all(np.isfinite(v) for v in final.losses.values())
    for name, value in model.encoder.state_dict().items():   # weights and batch-norm statistics
        assert torch.equal(update.model.encoder.state_dict()[name], value), name
    changed = [n for n, v in model.head.state_dict().items() if not torch.equal(update.model.head.state_dict()[n], v)]
    assert changed   # the decoder did learn
