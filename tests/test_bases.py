"""torchvision's segmentation networks as bases: every one builds without weights and every head grows without
changing old-class outputs; 'torchvision:NAME' loads the weights through torchvision's own (cached, no download)
path; a weak step and step 0 train the auxiliary head and read the right features. CPU, 64 px, batch 1-2."""
import os
import urllib.error

import numpy as np
import pytest
import torch
from torchvision.models import segmentation

from models import TORCHVISION_NETS, build_segmenter
from models.torchvision_nets import weights_file
from research.world import generate
from wilss.bases import open_model
from wilss.checkpoint import CheckpointError, load_checkpoint, new_checkpoint, save_checkpoint
from wilss.cli import main
from wilss.config import PretrainConfig, UpdateConfig
from wilss.conventions import class_palette, normalize
from wilss.engine import last
from wilss.inference import Predictor
from wilss.trainer import AUX_WEIGHT, WeakUpdate, pretrain
from wilss.training_data import PixelDataset, TagDataset

CHEAP = ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def head_logits(model, maps):
    """Logits of every head at its own resolution from the encoder's maps: {'main': ..., 'aux': ...}."""
    with torch.no_grad():
        out = {"main": model.decode(maps)}
        if model.has_aux:
            out["aux"] = model.decode_aux(maps)
    return out


@pytest.mark.parametrize("name", TORCHVISION_NETS)
def test_every_head_grows_without_changing_old_outputs(name, tmp_path):
    torch.manual_seed(0)
    aux = not name.startswith("lraspp")
    model = build_segmenter(arch=name, num_classes=4, aux=aux, activation="softmax").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        maps = model.encode(x)   # growth leaves the encoder alone: every head is compared on the same maps
    before = head_logits(model, maps)
    assert set(before) == ({"main", "aux"} if aux else {"main"})
    assert maps[model.feature_key].shape[:2] == (1, model.feature_channels)
    assert full.shape == (1, 4, 64, 64) and torch.isfinite(full).all()

    model.grow(2)
    after = head_logits(model, maps)
    assert model.num_classes == 6 and model.config["num_classes"] == 6
    for head, old in before.items():
        new = after[head]
        assert new.shape[1] == 6 and torch.isfinite(new).all(), head
        torch.testing.assert_close(new[:, 1:4], old[:, 1:4], rtol=1e-5, atol=1e-5)
        # MiB: old-class softmax probabilities unchanged, the background's shared equally with the new classes
        # (for LR-ASPP this holds for the sum of its two classifiers)
        p_old, p_new = old.softmax(1), new.softmax(1)
        torch.testing.assert_close(p_new[:, 1:4], p_old[:, 1:4], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(p_new[:, [0, 4, 5]].sum(1), p_old[:, 0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(p_new[:, 4], p_new[:, 0], rtol=1e-4, atol=1e-5)
    if name in CHEAP:   # checkpoints rebuild the grown network from its config alone
        names = ["background"] + [f"c{i}" for i in range(1, 6)]
        loaded = load_checkpoint(save_checkpoint(new_checkpoint(model, names), tmp_path / "grown.pt"))
        assert loaded.model.config == model.config and loaded.model.activation == "softmax"
        with torch.no_grad():
            loaded_maps = loaded.model.encode(x)
        for head, value in head_logits(loaded.model, loaded_maps).items():
            torch.testing.assert_close(value, after[head])


@pytest.fixture
def cached_weights(tmp_path, monkeypatch):
    """A TORCH_HOME holding state dicts of the right structure where torchvision caches the real weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def write(name: str) -> torch.nn.Module:
        torch.manual_seed(1)
        kwargs = {} if name.startswith("lraspp") else {"aux_loss": True}
        net = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=21, **kwargs).eval()
        os.makedirs(os.path.dirname(weights_file(name)), exist_ok=True)
        torch.save(net.state_dict(), weights_file(name))
        return net

    return write


@pytest.mark.parametrize("name", CHEAP)
def test_torchvision_spec_loads_the_cached_weights(name, cached_weights):
    net = cached_weights(name)
    assert weights_file(name).startswith(os.environ["TORCH_HOME"])
    ckpt = open_model(f"torchvision:{name}")
    assert ckpt.num_classes == ckpt.model.num_classes == 21
    assert ckpt.class_names[0] == "background" and ckpt.class_names[15] == "person"
    assert ckpt.class_names[20] == "tvmonitor"
    np.testing.assert_array_equal(ckpt.colours, class_palette(21))   # display colours, not the files' palette
    assert ckpt.input_side == 520
    assert ckpt.model.activation == "softmax" and ckpt.model.has_aux == (not name.startswith("lraspp"))
    assert ckpt.history[0]["kind"] == "pretrain" and ckpt.history[0]["source"] == f"torchvision:{name}"
    image = generate(1, seed=0, size=64)[0][0]
    x = normalize(image)[None]
    with torch.no_grad():   # the weights in the file, not a fresh initialisation
        reference = net(x)["out"]
        torch.testing.assert_close(ckpt.model(x), reference)
    # predictions come from the head's own resolution (LR-ASPP: stride 8), as torchvision's
    np.testing.assert_array_equal(Predictor(ckpt.model, device="cpu").predict(image).mask, reference.argmax(1)[0])


def test_cli_predicts_with_a_torchvision_base(cached_weights, tmp_path, capsys):
    from PIL import Image

    cached_weights("lraspp_mobilenet_v3_large")
    Image.fromarray(generate(1, seed=0, size=64)[0][0]).save(tmp_path / "a.png")
    code = main(["predict", "--checkpoint", "torchvision:lraspp_mobilenet_v3_large", "--input", str(tmp_path / "a.png"),
                 "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "tvmonitor:" in out
    mask = np.array(Image.open(tmp_path / "out" / "a_mask.png"))
    assert mask.shape == (64, 64) and mask.max() < 21


def test_unknown_or_unloadable_bases_are_explained(cached_weights, monkeypatch, capsys, tmp_path):
    with pytest.raises(CheckpointError, match="unknown pretrained base 'torchvision:nope'.*deeplabv3_resnet50"):
        open_model("torchvision:nope")
    code = main(["evaluate", "--checkpoint", "torchvision:nope", "--images", str(tmp_path), "--masks", str(tmp_path)])
    assert code == 2 and "error: unknown pretrained base" in capsys.readouterr().err

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    import torchvision.models._api as api
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match="could not load the fcn_resnet50 weights.*copy that file"):
        open_model("torchvision:fcn_resnet50")


def scenes(n=4, size=64):
    return generate(n, seed=0, size=size)


@pytest.mark.parametrize("name", CHEAP)
def test_weak_step_trains_every_head_from_the_last_map(name):
    torch.manual_seed(0)
    aux = name.startswith("deeplabv3")
    base = build_segmenter(arch=name, num_classes=3, aux=aux, activation="softmax").eval()
    items = scenes()
    targets = np.array([[0, 0, float(4 in np.unique(m))] for _, m in items], dtype=np.float32)
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=2, crop_size=64, localizer_channels=8)
    update = WeakUpdate(base, TagDataset([img for img, _ in items], targets), num_new=1, cfg=cfg)
    assert update.localizer.body[0].in_channels == base.feature_channels == 960   # the 'out' / 'high' map
    assert update.localizer.detail is None   # torchvision's networks name no detail map
    final = last(update.run())
    assert set(final.losses) == {"cls", "loc", "seg"} | ({"aux"} if aux else set())
    assert all(np.isfinite(v) for v in final.losses.values())
    assert update.model.num_classes == 4 and update.model.activation == "sigmoid"
    if aux:
        assert update.model.aux_classifier.num_classes == 4 and 0 < final.losses["aux"]
        heads = update.parameter_groups()[1]["params"]
        assert any(p is update.model.aux_classifier.conv.weight for p in heads)


def test_deeplabv3_refuses_a_one_image_batch_before_training():
    base = build_segmenter(arch="deeplabv3_mobilenet_v3_large", num_classes=3, activation="softmax").eval()
    image, _ = scenes(n=1)[0]
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=64, localizer_channels=8)
    update = WeakUpdate(base, TagDataset([image], np.array([[0, 0, 1]], np.float32)), num_new=1, cfg=cfg)
    with pytest.raises(ValueError, match="at least 2 images per batch"):
        next(update.run())
    assert build_segmenter(arch="lraspp_mobilenet_v3_large", num_classes=3).min_train_batch == 1


def test_step_zero_adds_the_weighted_auxiliary_loss():
    torch.manual_seed(0)
    model = build_segmenter(arch="deeplabv3_mobilenet_v3_large", num_classes=3, aux=True)
    pairs = [(img, np.minimum(mask, 2)) for img, mask in scenes()]
    cfg = PretrainConfig(epochs=1, batch_size=2, crop_size=64, loss="ce")
    progress = list(pretrain(model, PixelDataset(pairs), cfg, device="cpu"))
    assert len(progress) == 2 and set(progress[-1].losses) == {"ce", "aux"}
    assert model.activation == "softmax" and AUX_WEIGHT == 0.5
    # a fresh 3-class head's cross-entropy is near ln 3: the logged value carries the 0.5 weight
    assert 0.2 < progress[0].losses["aux"] / AUX_WEIGHT < 3.0 and np.isfinite(progress[-1].losses["ce"])


def test_the_app_saves_a_base_once_and_reuses_it(cached_weights, tmp_path, monkeypatch):
    from app.session import base_file

    cached_weights("lraspp_mobilenet_v3_large")
    with pytest.raises(CheckpointError, match="unknown pretrained base"):
        base_file("torchvision:nope", tmp_path / "bases")
    path = base_file("torchvision:lraspp_mobilenet_v3_large", tmp_path / "bases")
    assert path.name == "torchvision-lraspp_mobilenet_v3_large.pt"
    ckpt = load_checkpoint(path)
    assert ckpt.num_classes == 21 and ckpt.history[0]["source"] == "torchvision:lraspp_mobilenet_v3_large"
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr("app.session.pretrained_base", lambda spec: pytest.fail("rebuilt a saved base"))
    assert base_file("torchvision:lraspp_mobilenet_v3_large", tmp_path / "bases") == path
    assert path.stat().st_mtime_ns == stamp


def test_onnx_export_of_a_grown_lraspp(tmp_path):
    onnx = pytest.importorskip("onnx")
    from wilss.service import export_onnx

    torch.manual_seed(0)
    model = build_segmenter(arch="lraspp_mobilenet_v3_large", num_classes=21, activation="softmax").eval()
    model.grow(1)
    path = export_onnx(new_checkpoint(model, ["background"] + [f"c{i}" for i in range(1, 22)]), tmp_path / "m.onnx")
    outputs = onnx.load(path).graph.output
    assert [o.name for o in outputs] == ["logits"]
    ort = pytest.importorskip("onnxruntime")
    x = torch.randn(1, 3, 96, 160)   # another size than the export's 128x128: H and W are dynamic
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-4)
