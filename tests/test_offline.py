"""The offline pipeline on a tiny model: a localizer from the tags alone, pseudo-labels frozen once, a MiB step."""
import numpy as np
import torch

from models import build_segmenter
from research.world import generate
from wilss.config import UpdateConfig
from wilss.offline import OfflinePipeline
from wilss.training_data import TagDataset


def test_localizer_then_frozen_pseudo_labels_then_mib_step():
    scenes = generate(8, seed=0, size=32)
    new = np.array([[float(4 in np.unique(m))] for _, m in scenes], np.float32)
    dataset = TagDataset([image for image, _ in scenes], np.concatenate([np.zeros((8, 2), np.float32), new], 1))
    torch.manual_seed(0)
    base = build_segmenter(arch="tiny", num_classes=3, width=8, head_channels=16).eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8,
                       scale_range=(1.0, 1.0))
    pipeline = OfflinePipeline(base, dataset, num_new=1, cfg=cfg, device="cpu", localizer_epochs=3)
    progress = list(pipeline.run())
    assert [p.phase for p in progress] == ["warmup"] * 6 + ["mib"] * 4
    assert set(progress[0].losses) == {"cls", "loc"} and set(progress[-1].losses) == {"ce", "kd"}
    labels = pipeline.pseudo_labels
    assert len(labels) == 8 and all(m.shape == (32, 32) and m.dtype == np.uint8 for m in labels)
    assert set(np.unique(np.stack(labels)).tolist()) <= {0, 1, 2, 3}
    assert pipeline.model.num_classes == 4 and not pipeline.model.training
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
