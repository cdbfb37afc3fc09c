"""ONNX export of a checkpoint's segmenter: input ``image`` ``1x3xHxW`` float (ImageNet-normalised, H and W
dynamic), output ``logits`` ``1xKxHxW``; class names, colours and the normalisation go into the file's metadata.
``python -m wilss export`` and the app's 'Versions & export' tab both call ``export_onnx``."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Optional

import torch

from wilss.checkpoint import Checkpoint
from wilss.conventions import MEAN, STD
from wilss.files import atomic_write

OPSET = 17
ONNX_MISSING = "ONNX export needs the 'onnx' package, which is not installed here: run 'pip install onnx'"


class ExportError(RuntimeError):
    """The export cannot be made here (e.g. the ``onnx`` package is missing); the message says what to do."""


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(ckpt: Checkpoint, path: Path, *, size: Optional[int] = None) -> Path:
    """Write ``ckpt.model`` as ONNX to ``path`` (atomically), traced at ``size`` x ``size`` (default: the checkpoint's
    input scale; H and W stay dynamic). The metadata's ``input_side`` tells a runtime the scale to resize images to
    (longer side, px), as ``conventions.prepare_image`` does. Raises ``ExportError`` without the ``onnx`` package, or
    when the network cannot be exported."""
    if not onnx_available():
        raise ExportError(f"{ONNX_MISSING}.")
    import onnx

    size = ckpt.input_side if size is None else size
    model = copy.deepcopy(ckpt.model).cpu().eval()   # never move or retrain the session's model
    meta = {"class_names": json.dumps(list(ckpt.class_names)),
            "colours": json.dumps([[int(v) for v in c] for c in ckpt.colours]),
            "input": "image: 1x3xHxW float32, RGB in [0,1] normalised with mean/std, longer side input_side px",
            "input_side": str(int(ckpt.input_side)),
            "mean": json.dumps(list(MEAN)), "std": json.dumps(list(STD)),
            "output": "logits: 1xKxHxW, argmax over K = class id", "format": "wilss-onnx"}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the TorchScript exporter is deprecated but needs no onnxscript
            torch.onnx.export(model, torch.zeros(1, 3, size, size), str(tmp), input_names=["image"],
                              output_names=["logits"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"image": {2: "height", 3: "width"}, "logits": {2: "height", 3: "width"}})
        proto = onnx.load(str(tmp))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    try:
        return atomic_write(path, write)
    except Exception as err:
        raise ExportError(f"ONNX export failed ({type(err).__name__}: {err})") from err
