"""Named recipes of the benchmarks: the settings the project's figures were produced with (the world's pretext and
base, CamVid's), and the functions that train the shipped networks from them. The product's recipes (the demo's,
``add-class --world``'s) are in ``wilss.recipes`` and re-exported here, so ``recipes.X`` names either.

The paper's defaults live in ``wilss.config``; a recipe changes only what the data or the machine demands
(image size, batch, epochs on two CPU cores) and says why.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from models import build_segmenter
from research import pretext, world
from research.experiments import Benchmark, LabelledSplit, Protocol
from wilss.checkpoint import history_entry, new_checkpoint
from wilss.config import PretrainConfig, TagsBaseConfig, UpdateConfig, to_dict
from wilss.engine import seed_everything
from wilss.inference import evaluate
from wilss.pixel_base import encoder_init
from wilss.recipes import (DEMO_CLASS, DEMO_COLOUR, DEMO_UPDATE, PIXEL_BASE, PIXEL_BASE_ARCH, PIXEL_BASE_TINY,
                           WORLD_CLASSES, WORLD_SETTING, WORLD_SIZE, WORLD_TASK_SPEC, WORLD_UPDATE, TAGS_BASE,
                           world_task)
from wilss.trainer import pretrain
from wilss.training_data import PixelDataset
from wilss.transforms import train_transform

__all__ = ["DEMO_CLASS", "DEMO_COLOUR", "DEMO_UPDATE", "WORLD_CLASSES", "WORLD_SETTING", "WORLD_SIZE",
           "WORLD_TASK_SPEC", "WORLD_UPDATE", "world_task", "WORLD_SEEDS", "WORLD_COUNTS", "PRETEXT_IMAGES",
           "PRETEXT_SEED", "WORLD_PRETEXT", "WORLD_PRETRAIN", "CamVidRecipe", "CAMVID", "TAGS_BASE", "tags_base_config",
           "CAMVID_TINY", "camvid_recipe", "world_protocol", "world_splits", "train_pretext_encoder", "encoder_init",
           "train_default_base"]

WORLD_SEEDS = {"train": 1, "test": 2, "samples": 3}
WORLD_COUNTS = {"train": 2000, "test": 200}

# The encoder's pretext (research/pretext.py), our stand-in for ImageNet pretraining: per-pixel texture families of
# generic shapes, 8000 generated scenes (none of the world's categories), 10 epochs = 5000 iterations, cross-entropy.
PRETEXT_IMAGES, PRETEXT_SEED = 8000, 11
WORLD_PRETEXT = PretrainConfig(epochs=10, lr=0.05, batch_size=16, crop_size=WORLD_SIZE, scale_range=(0.75, 1.25),
                               loss="ce")

# Step 0 from the pretext encoder: a higher learning rate than the paper's 1e-2 fine-tuning value.
WORLD_PRETRAIN = PretrainConfig(epochs=30, lr=0.05, batch_size=16, crop_size=WORLD_SIZE, scale_range=(0.75, 1.25))


@dataclass(frozen=True)
class CamVidRecipe:
    """CamVid has no background: every pixel is a named class. Model id 0 ("background") stands for "none of
    the known classes"; at step 0 the pixels of the classes to add later are background (MiB's overlap
    convention), and background is left out of the 'all' mIoU since no ground-truth pixel carries it.

    The default network is EfficientNet-Lite0 from its ImageNet weights (``models.imagenet``) with an LR-ASPP head
    at output stride 16: real photographs need real features. Its encoder fine-tunes at a fifth of the head's
    learning rate (step 0) and the paper's 1e-3 (weak step); the localizer also reads the stride-8 map (22x22 CAMs
    on a 176 crop rather than 11x11: Fence and Bicyclist are thin or small). No PAMR refinement of the targets (the
    world recipe's): on street photos it spread the new classes over the cars (Car IoU 3.6 with it, 24.8 without;
    docs/results.md). Images at CamVid's own 360x480, as ``pretrain --data`` and ``add-class`` take them: at half
    resolution Fence and Bicyclist are a pixel or two wide and neither pixel labels nor tags learn them (joint 41.8
    all, 8.1 new, against 53.9 and 29.7 here). No background class: every pixel is named, so the weak step hands the
    base's class 0 (the classes not yet added) to the tagged new classes (``no_background``, the product's default
    for such a base). Epochs: the base and joint 60 (2700 iterations at batch 8, about 35 minutes on two CPU cores),
    the weak step 16 (704 iterations)."""
    task_spec: str = "0,1,2,3,4,5,6,8,9|7,10"   # Fence (7) and Bicyclist (10) are learnt from tags
    setting: str = "overlap"
    resize: tuple[int, int] | None = None       # None: the images' own size
    arch: str = PIXEL_BASE_ARCH
    encoder: str = "imagenet"                   # what the base and joint networks start from
    pretrain: PretrainConfig = replace(PIXEL_BASE, epochs=60)   # the product's 'pretrain --data' recipe, 60 epochs
    update: UpdateConfig = UpdateConfig(epochs=16, warmup_epochs=4, batch_size=8, crop_size=176,
                                        scale_range=(0.75, 1.5), localizer_channels=128, localizer_detail=True,
                                        no_background=True)


CAMVID = CamVidRecipe()


def tags_base_config(pixel: PretrainConfig) -> TagsBaseConfig:
    """``TAGS_BASE`` with the pixel base recipe's learning rates, batch, crops and augmentation (the world's 128 px
    images on the tiny network; CamVid's are already ``TAGS_BASE``'s)."""
    return replace(TAGS_BASE, lr=pixel.lr, encoder_lr=pixel.lr if pixel.encoder_lr is None else pixel.encoder_lr,
                   batch_size=pixel.batch_size, crop_size=pixel.crop_size, scale_range=pixel.scale_range)


# The recipe before the ImageNet encoder (``benchmark camvid --arch tiny``): the tiny network from scratch, at half
# resolution, background on (its tables: docs/archive).
CAMVID_TINY = CamVidRecipe(arch="tiny", encoder="none", resize=(180, 240),
                           pretrain=PIXEL_BASE_TINY,
                           update=UpdateConfig(epochs=20, warmup_epochs=3, batch_size=8, crop_size=176,
                                               scale_range=(0.75, 1.5), localizer_channels=128))


def camvid_recipe(arch: str | None) -> CamVidRecipe:
    """The CamVid recipe of network ``arch`` (None: the default, ``CAMVID``)."""
    return CAMVID_TINY if arch == "tiny" else CAMVID if arch is None else replace(CAMVID, arch=arch)


def world_protocol():
    return Protocol("world", WORLD_CLASSES, world_task(), WORLD_SETTING)


def world_splits():
    """The benchmark's train and test splits, generated in memory from the recipe's seeds."""
    return tuple(LabelledSplit.from_pairs(world.generate(WORLD_COUNTS[s], seed=WORLD_SEEDS[s], size=WORLD_SIZE))
                 for s in ("train", "test"))


def train_pretext_encoder(*, epochs: int | None = None, device=None, on_progress=None):
    """Train the tiny network on the pretext (``research.pretext``: texture families of generic shapes), the source
    of every world network's initial encoder. Returns (checkpoint, mIoU % over the texture families and background
    on 200 fresh pretext scenes)."""
    cfg = WORLD_PRETEXT if epochs is None else replace(WORLD_PRETEXT, epochs=epochs)
    names = list(pretext.PRETEXT_CLASSES)
    seed_everything(cfg.seed)
    model = build_segmenter(arch="tiny", num_classes=len(names))
    scenes = pretext.generate(PRETEXT_IMAGES, seed=PRETEXT_SEED, size=WORLD_SIZE)
    dataset = PixelDataset(scenes, transform=train_transform(cfg.crop_size, cfg.scale_range, cfg.hflip))
    for progress in pretrain(model, dataset, cfg, device=device):
        if on_progress is not None:
            on_progress("pretext", progress)
    test = PixelDataset(pretext.generate(200, seed=PRETEXT_SEED + 1, size=WORLD_SIZE))
    miou = float(evaluate(model.eval(), test, num_classes=len(names), device=device).iou().mean()) * 100
    ckpt = new_checkpoint(model, names)
    ckpt.history.append(history_entry(
        "pretext", names[1:], num_images=PRETEXT_IMAGES, step=-1,
        settings={"recipe": "world pretext", "seed": PRETEXT_SEED, **to_dict(cfg)},
        metrics={"test_mIoU_all": round(miou, 2)}))
    return ckpt, miou


def train_default_base(*, epochs: int | None = None, device=None, on_progress=None, encoder=None,
                       encoder_name: str | None = None):
    """Train the shipped base model by the world recipe, its encoder started from ``encoder`` (the loaded pretext
    network, recorded in the history as ``encoder_name``; None: from scratch); returns (checkpoint, base figures on
    the test split)."""
    cfg = WORLD_PRETRAIN if epochs is None else replace(WORLD_PRETRAIN, epochs=epochs)
    protocol = world_protocol()
    train, test = world_splits()
    bench = Benchmark(protocol, train, test, pretrain_cfg=cfg, update_cfg=WORLD_UPDATE, device=device,
                      on_progress=on_progress, init_model=encoder_init(encoder, origin=str(encoder_name)))
    model = bench.train_base()
    row = bench.score("base", model, 0.0, step=0)
    names = protocol.model_class_names(0)
    ckpt = new_checkpoint(model, names)
    ckpt.history.append(history_entry(
        "pretrain", names[1:], num_images=len(bench.base_indices()), step=0,
        settings={"recipe": "world", "task": WORLD_TASK_SPEC, "setting": WORLD_SETTING,
                  "encoder": encoder_name, **to_dict(cfg)},
        metrics={"test_mIoU_base_classes": round(row.new, 2), "test_mIoU_all": round(row.all, 2)}))
    return ckpt, row
