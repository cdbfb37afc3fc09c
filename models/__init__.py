"""Network builders and the default base checkpoint."""
from pathlib import Path

from models.builders import ARCHITECTURES, DEFAULT_ARCH, build_segmenter
from models.segmenter import GrowableClassifier, Segmenter
from models.torchvision_nets import TORCHVISION_NETS, pretrained_torchvision

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "default_base.pt"
# The pretext network (research.pretext, our ImageNet stand-in) whose encoder starts every world network.
DEFAULT_ENCODER = Path(__file__).resolve().parent / "pretext_tiny.pt"

__all__ = ["ARCHITECTURES", "DEFAULT_ARCH", "DEFAULT_CHECKPOINT", "DEFAULT_ENCODER", "GrowableClassifier", "Segmenter",
           "TORCHVISION_NETS", "build_segmenter", "pretrained_torchvision"]
