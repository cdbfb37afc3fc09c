"""HRHF replay (wilss.hrhf): each equation against a value computed by hand, the inversion on a tiny network, and
the replay inside WILSON's step (a 'replay' phase first, then a 'replay' loss in the joint phase)."""
import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from models import build_segmenter
from wilss import hrhf as H
from wilss.config import UpdateConfig
from wilss.training_data import TagDataset
from wilss.trainer import WeakUpdate
from research.world import generate

pytestmark = pytest.mark.usefixtures("one_thread")

# channel 0: values 1, 3, 5, 7 (mean 4, biased var 5); channel 1: all 2 (mean 2, var 0)
X = torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]]], [[[5.0, 7.0]], [[2.0, 2.0]]]])   # 2x2x1x2


# ------------------------------------------------------------------------------------------- equations
def test_bn_prior_is_the_distance_of_batch_statistics_to_the_running_ones():
    # mean (4, 2) - (0, 2) = (4, 0): norm 4; var (5, 0) - (1, 0) = (4, 0): norm 4
    assert H.bn_prior(X, torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(8.0)
    assert H.bn_prior(X, torch.tensor([4.0, 2.0]), torch.tensor([5.0, 0.0])).item() == pytest.approx(0.0)


def test_bn_statistics_sum_the_prior_over_every_layer_of_a_tiny_net():
    first, second = nn.BatchNorm2d(1, eps=0.0), nn.BatchNorm2d(1)
    first.running_mean.fill_(1.0), first.running_var.fill_(1.0)      # its output: x - 1 = 0, 2, 4, 6
    second.running_mean.fill_(3.0), second.running_var.fill_(5.0)    # which has exactly these statistics
    net = nn.Sequential(first, second).eval()
    x = X[:, :1]                                                     # 1, 3, 5, 7: |4 - 1| + |5 - 1| = 7
    with H.BNStatistics(net) as stats:
        net(x)
        assert stats.prior().item() == pytest.approx(7.0, abs=1e-4)
        assert stats.prior().item() == 0.0                          # read once, then cleared
    net(x)
    assert stats.terms == []                                         # hooks removed on exit


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                         nn.BatchNorm2d(2)).train()


def test_split_batch_norm_keeps_the_real_images_statistics_apart_from_the_fakes():
    real, fake = torch.randn(4, 3, 6, 6), 5.0 + 3.0 * torch.randn(2, 3, 6, 6)   # fakes of another distribution
    net, alone, fakes_alone = _bn_net(), _bn_net(), _bn_net()
    with H.split_batch_norm(net, 4):
        out = net(torch.cat([real, fake]))
    want_real, want_fake = alone(real), fakes_alone(fake)
    assert torch.allclose(out[:4], want_real, atol=1e-5) and torch.allclose(out[4:], want_fake, atol=1e-5)
    for layer, ref in zip(net.modules(), alone.modules()):
        if isinstance(layer, nn.BatchNorm2d):   # the running statistics learnt from the real images alone
            assert torch.allclose(layer.running_mean, ref.running_mean, atol=1e-6)
            assert torch.allclose(layer.running_var, ref.running_var, atol=1e-6)
            assert layer.num_batches_tracked.item() == 1 and "forward" not in vars(layer)   # class forward again
    shared = _bn_net()
    shared(torch.cat([real, fake]))   # one batch of both (HRHF's paper) moves them towards the fakes'
    assert (shared[1].running_var - net[1].running_var).min() > 0.05   # the fakes widen the variance


def test_split_batch_norm_takes_running_statistics_for_a_single_pooled_fake():
    layer = nn.BatchNorm2d(3).train()
    layer.running_mean.fill_(1.0), layer.running_var.fill_(4.0)
    x = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 3.0, 4.0, 5.0]).view(3, 3, 1, 1)   # 2 real, 1 fake, pooled
    with H.split_batch_norm(layer, 2):
        out = layer(x)
    mean, var = layer.running_mean, layer.running_var   # as the real images left them (momentum 0.1)
    assert torch.allclose(mean, torch.tensor([1.2, 1.25, 1.3])) and torch.allclose(var, torch.tensor([4.4, 4.05, 3.8]))
    assert torch.allclose(out[2].flatten(), (x[2].flatten() - mean) / (var + layer.eps) ** 0.5)
    assert torch.allclose(out[:2, 0].flatten(), torch.tensor([-1.0, 1.0]), atol=1e-3)   # (1, 5): batch statistics


def test_tv_and_l2_priors():
    image = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])
    assert H.tv_prior(image).item() == pytest.approx((3 + 4) / 2 + (1 + 2) / 2)   # vertical 3, 4; horizontal 1, 2
    assert H.l2_prior(image).item() == pytest.approx((0 + 1 + 9 + 25) / 4)


def test_pixel_nll_reads_the_model_as_it_was_trained():
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    assert H.pixel_nll(logits, target, "softmax").item() == pytest.approx(math.log(2))
    assert H.pixel_nll(logits, target, "sigmoid").item() == pytest.approx(2 * math.log(2))   # both channels


def test_scale_aware_loss_weighs_each_object_as_much_as_the_background():
    loss = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 1.0, 6.0]]])
    regions = torch.tensor([[[0, 0, 0], [0, 0, 1]]])
    assert H.scale_aware_loss(loss, regions).item() == pytest.approx((1 + 6) / 2)    # not the pixel mean 11/6
    # the same region id in another image is another region: (1 + 6 + 2) / 3
    two = H.scale_aware_loss(torch.cat([loss, torch.full_like(loss, 2.0)]), torch.cat([regions, regions * 0]))
    assert two.item() == pytest.approx(3.0)


def test_replay_distillation_targets_the_old_probabilities_and_zero_for_new_classes():
    new_logits = torch.tensor([0.0, 0.0, math.log(3)]).view(1, 3, 1, 1)
    old_probs = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    # BCE(0, 0) = BCE(0, 1) = log 2; the new channel: BCE(log 3, 0) = log(1 + 3)
    assert H.replay_distillation(new_logits, old_probs).item() == pytest.approx(2 * math.log(2) + math.log(4))


# --------------------------------------------------------------------------------------------- targets
def test_replay_classes_by_name_and_a_clear_refusal():
    names = ["background", "disc", "square", "ring"]
    assert H.replay_class_ids("", names, 4) == [1, 2, 3]
    assert H.replay_class_ids(" ring, disc ", names, 4) == [1, 3]
    assert H.replay_class_ids("2", None, 4) == [2]
    with pytest.raises(ValueError, match=r"unicorn: the model has no such class.*disc, square, ring"):
        H.replay_class_ids("disc,unicorn", names, 4)
    with pytest.raises(ValueError, match="background"):
        H.replay_class_ids("background", names, 4)


def test_target_masks_hold_one_object_per_scale():
    labels, regions = H.target_masks(5, 32, [2, 5], (0.5, 0.25, 0.1), torch.Generator().manual_seed(0))
    assert labels.shape == regions.shape == (5, 32, 32)
    assert set(labels.unique().tolist()) <= {0, 2, 5} and {2, 5} <= set(labels.unique().tolist())
    for r in regions:   # the smallest object is drawn last: never covered
        assert set(r.unique().tolist()) >= {0, 3} and 1 <= (r == 3).sum() <= 16


# ------------------------------------------------------------------------------------------- inversion
def tiny(num_classes=3):
    torch.manual_seed(0)
    return build_segmenter(arch="tiny", num_classes=num_classes, width=8, head_channels=16)


def trained_tiny():
    """A tiny 3-class model whose batch-norm layers have running statistics of real scenes."""
    model = tiny().train()
    with torch.no_grad():
        for image, _ in generate(8, seed=0, size=32):
            model(torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).sub(0.45).div(0.225))
    return model.eval().requires_grad_(False)


def test_inversion_lowers_its_objective_and_keeps_pixels_in_range():
    model = trained_tiny()
    out = list(H.synthesise(model, num=3, size=32, classes=[1, 2], steps=25,
                            cfg=H.InversionConfig(batch_size=2), seed=1))
    assert [s for s, _, im in out[:-1]] == list(range(1, 51)) and all(im is None for _, _, im in out[:-1])
    losses = [loss for _, loss, _ in out]
    assert losses[24] < losses[0] and losses[49] < losses[25]        # each batch's objective goes down
    images = out[-1][2]
    assert images.shape == (3, 3, 32, 32) and torch.isfinite(images).all()
    pixels = images * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]
                                                                                            ).view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    bank = H.ReplayBank(images, H.old_probabilities(model, images), seed=0)
    drawn = [bank.draw(2)[0] for _ in range(3)]
    assert all(d.shape == (2, 3, 32, 32) for d in drawn) and bank.old_probs.shape[:2] == (3, 3)
    assert H.fakes_per_batch(8, 100) == 4 and H.fakes_per_batch(1, 100) == 1 and H.fakes_per_batch(8, 2) == 2


# ------------------------------------------------------------------------------------------- in the step
@pytest.fixture(scope="module")
def scenes():
    return generate(8, seed=0, size=32)


def tag_dataset(scenes):
    targets = np.stack([[0.0, 0.0, float(4 in np.unique(m))] for _, m in scenes]).astype(np.float32)
    return TagDataset([img for img, _ in scenes], targets)


CFG = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)


def test_replay_runs_a_synthesis_phase_then_distils_on_fake_images(scenes):
    cfg = replace(CFG, replay_images=3, replay_steps=2, replay_classes="square")
    update = WeakUpdate(trained_tiny(), tag_dataset(scenes), num_new=1, cfg=cfg,
                        class_names=["background", "disc", "square"])
    assert update.replay_classes == [2]
    progress = list(update.run())
    phases = [p.phase for p in progress]
    assert phases == ["replay"] * 2 + ["warmup"] * 2 + ["joint"] * 2
    assert set(progress[0].losses) == {"inversion"} and progress[1].total_iterations == 2
    assert "replay" not in progress[2].losses and progress[-1].losses["replay"] > 0
    assert len(update.replay) == 3 and update.replay_seconds > 0


def test_replay_is_off_by_default_and_refuses_unknown_classes(scenes):
    plain = WeakUpdate(trained_tiny(), tag_dataset(scenes), num_new=1, cfg=CFG)
    assert plain.replay is None and "replay" not in [p.phase for p in plain.run()]
    assert UpdateConfig().replay_images == 0
    with pytest.raises(ValueError, match="unicorn"):
        WeakUpdate(trained_tiny(), tag_dataset(scenes), num_new=1, cfg=replace(CFG, replay_images=2,
                   replay_classes="unicorn"), class_names=["background", "disc", "square"])
    with pytest.raises(ValueError, match="replay_images"):
        replace(CFG, replay_classes="disc")


def test_replay_loss_equals_the_function_on_the_drawn_fakes(scenes):
    cfg = replace(CFG, replay_images=2, replay_steps=1, replay_weight=0.5)
    update = WeakUpdate(trained_tiny(), tag_dataset(scenes), num_new=1, cfg=cfg)
    for _ in update._synthesise():
        pass
    data = tag_dataset(scenes)
    images = torch.stack([data[i][0] for i in range(2)])
    targets = torch.stack([torch.as_tensor(data[i][1]) for i in range(2)])
    update.train_mode(False)   # eval: batch-norm does not mix the real and fake halves, the forward repeats
    state = update.replay.generator.get_state()
    out = update.losses(images, targets, "joint")
    update.replay.generator.set_state(state)   # draw the same fake image again
    update.replay.order = []
    fakes, probs = update.replay.draw(H.fakes_per_batch(2, 2))
    with torch.no_grad():
        want = 0.5 * H.replay_distillation(update.model.forward_features(fakes)[0], probs)   # at feature size
    assert len(fakes) == 1 and out["replay"].item() == pytest.approx(want.item(), rel=1e-4)


def test_the_fake_images_leave_the_running_statistics_to_the_real_ones(scenes):
    update = WeakUpdate(trained_tiny(), tag_dataset(scenes), num_new=1, cfg=replace(CFG, replay_images=2,
                                                                                    replay_steps=1))
    for _ in update._synthesise():
        pass
    data = tag_dataset(scenes)
    images = torch.stack([data[i][0] for i in range(4)])
    targets = torch.stack([torch.as_tensor(data[i][1]) for i in range(4)])
    update.train_mode(True)
    reference = copy.deepcopy(update.net)
    with torch.no_grad():
        reference(images, decode=True)   # the real images alone
    out = update.losses(images, targets, "joint")
    layers = [(m, r) for m, r in zip(update.net.modules(), reference.modules()) if isinstance(m, nn.BatchNorm2d)]
    assert out["replay"] > 0 and len(layers) > 4
    for layer, ref in layers:
        assert torch.allclose(layer.running_mean, ref.running_mean, atol=1e-5)
        assert torch.allclose(layer.running_var, ref.running_var, atol=1e-5)


# ---------------------------------------------------------------------------------------- the faces
def test_add_class_refuses_replay_of_unknown_classes_and_writes_nothing(tmp_path, capsys):
    from test_cli import FAST, NEW, make_checkpoint, run, write_tagged

    out = tmp_path / "new.pt"
    argv = ["add-class", "--checkpoint", make_checkpoint(tmp_path / "base.pt"), "--images",
            write_tagged(tmp_path / "images"), "--class", NEW, "--out", out, *FAST, "--replay-images", "2",
            "--replay-classes", "disc,unicorn"]
    code, _, err = run(argv, capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    assert "unicorn: the model has no such class to invert (its old classes: disc, square)" in err
    assert not out.exists()


def test_the_service_and_the_app_refuse_them_too():
    from app.update import make_config
    from wilss import service
    from wilss.data import DataError
    from wilss.tags import TaggedSet

    cfg = make_config({"replay_images": 4, "replay_classes": "unicorn"})
    assert cfg.replay_images == 4 and cfg.replay_classes == "unicorn"
    base = service.Checkpoint(model=tiny(), class_names=["background", "disc", "square"],
                              colours=np.zeros((3, 3), np.uint8), history=[])
    tagged = TaggedSet([f"{i}.png" for i in range(4)], [{"triangle"}, {"triangle"}, set(), set()])
    with pytest.raises(DataError, match=r"^Replay classes unicorn: .*disc, square\)\.$"):
        service.UpdateRequest(base, tagged, [("triangle", None)], cfg).validate()
    service.UpdateRequest(base, tagged, [("triangle", None)], replace(cfg, replay_classes="square")).validate()
