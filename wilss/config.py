"""Frozen configuration dataclasses, one per concern, with the paper's defaults (docs/method.md).

The CLI and the UI map their inputs onto these; ``replace(cfg, epochs=...)`` makes variants.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class OptimConfig:
    """SGD with momentum and a poly schedule; the learning rates are per parameter group."""

    epochs: int = 30
    batch_size: int = 24
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False  # the reference code uses Nesterov momentum; the paper says SGD with momentum
    poly_power: float = 0.9
    seed: int = 0
    num_workers: int = 0


@dataclass(frozen=True)
class PretrainConfig(OptimConfig):
    """Step 0 (pixel labels): one learning rate for the whole network (or a lower one for an ImageNet encoder),
    30 epochs."""

    lr: float = 1e-2
    encoder_lr: float | None = None   # the encoder's learning rate; None: ``lr`` (a pretrained encoder wants less)
    loss: str = "bce"  # 'bce' as the reference code (the weak steps read the old model through sigmoid) or 'ce'

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "ce"):
            raise ValueError(f"loss must be 'bce' or 'ce', got {self.loss!r}")


# Upper bounds of an update's settings, so that one request (the app's, or a typo in a flag) cannot hold the machine
# for days or exhaust its memory: several times the paper's and the recipes' values (wilss.recipes).
UPDATE_LIMITS = {"epochs": 200, "batch_size": 128, "crop_size": 1024, "localizer_channels": 1024,
                 "pamr_refine_iterations": 100, "pamr_refine_fine_iterations": 100, "region_segments": 4096,
                 "replay_images": 1024, "replay_steps": 5000}
REGION_PRIORS = ("none", "slic", "felzenszwalb")   # UpdateConfig.region_prior (wilss.regions)

# The weight of ILT's output distillation in the benchmark's 'ilt' row: MiB's runs of ILT (its argparser: loss_kd 100).
ILT_OUTPUT_DISTILLATION = 100.0
# The benchmark's 'hrhf' row (WILSS + HRHF replay) when --replay-images is not given: fake images synthesised per step.
HRHF_REPLAY_IMAGES = 64


@dataclass(frozen=True)
class UpdateConfig(OptimConfig):
    """A weakly-supervised step t > 0 (image-level tags), WILSON's defaults."""

    epochs: int = 40
    warmup_epochs: int = 5             # localizer-only epochs (l_CLS + l_LOC) before l_SEG joins
    lr_backbone: float = 1e-3
    lr_head: float = 1e-2              # ASPP head and classifier
    lr_localizer: float = 1e-2
    localizer_channels: int = 256
    # Beyond the paper: the localizer also reads the encoder's higher-resolution detail map, where the network has
    # one (the tiny network's stride-4 map): CAMs, pseudo-labels and l_SEG at that resolution (wilss.localizer).
    localizer_detail: bool = False
    # Eq. 1-2: aggregation
    focal_gamma: float = 3.0
    focal_lambda: float = 0.01
    gwp_eps: float = 1e-5              # "small" in the paper; the reference code uses 1.0
    # Eq. 5-7: pseudo-labels
    alpha: float = 0.5
    relaxed: bool = False              # l_CLS over all classes, with tags for old classes given
    # Beyond the paper: relaxed l_CLS with the old classes' tags read from the old model's confident predictions,
    # so a step can learn one class from images that all show it (no user negatives). See losses.confident_presence.
    auto_old_tags: bool = False
    auto_tag_threshold: float = 0.7    # old-model probability that counts as confident
    auto_tag_min_fraction: float = 0.01  # share of an image's pixels that must be confident to tag the class
    mib_init: bool = True
    old_model_prior: bool = True       # l_LOC (Eq. 4); off together with old_model_targets = the FT baseline
    old_model_targets: bool = True     # Eq. 7 targets from the old model
    # Beyond the paper: new-class targets capped by the old model's background probability (losses.pseudo_label)
    new_on_old_background: bool = False
    # Beyond the paper, for data without a background class (every pixel named, e.g. CamVid): the old model's
    # background is the classes not yet added; in an image tagged with new classes it goes to them alone, shared by
    # the localizer's scores (losses.unnamed_background_target).
    no_background: bool = False
    # The old model's logits (l_LOC, Eq. 7, output distillation) taken at its head's resolution rather than pooled to
    # the encoder's last map (stride 16): a head that decodes at stride 8 (LR-ASPP) keeps its thin classes (poles,
    # signs, pedestrians) in the targets. The same tensor where the head decodes at the features' stride (tiny,
    # DeepLabV3: the world, the demo, the paper's network); False = the pooled targets, as before 2026-12.
    old_at_head_resolution: bool = True
    drop_unlocalized: bool = False     # weight 0 for images whose pseudo-label misses a tagged class
    # Reference-code extras, off by default
    feature_distillation: float = 0.0  # weight of MSE(e_t(x), e_t-1(x)); the reference uses 1
    pamr_self_training: bool = False   # localizer self-training from PAMR-refined masks after the warm-up
    # Beyond the paper: refine the Eq. 5-7 target by PAMR on the image at 1/pamr_refine_stride of the input
    # resolution and compute l_SEG there (wilss.pamr.refine_target); 0 = off, l_SEG at the localizer's resolution.
    pamr_refine_stride: int = 0
    pamr_refine_iterations: int = 10   # PAMR's iterations there (more: the labels follow the image's edges further)
    # Coarse to fine: after those, this many more iterations at the input's full resolution, and l_SEG there
    # (0 = off). Traces thin parts that 1/pamr_refine_stride blurs; needs pamr_refine_stride > 0.
    pamr_refine_fine_iterations: int = 0
    # Beyond the paper: the encoder's batch-norm layers keep the old model's statistics (eval mode) while its weights
    # train. With small batches of few images, updating those statistics from the step's images alone shifts every
    # old class's features (the demo: +1 old, +4 new mIoU; docs/results.md).
    freeze_encoder_bn: bool = False
    # Beyond the paper: an offline region prior (wilss.regions). The target (PAMR-refined first, when that is on) is
    # averaged over each superpixel of the image, so that each region takes one class distribution; l_SEG is then
    # computed at the input's resolution. 'none': off; 'slic' or 'felzenszwalb': scikit-image's superpixels.
    # Defaults: what kept most of a coarse (stride-8) ground truth on CamVid at 240x180 (docs/method.md).
    region_prior: str = "none"
    region_segments: int = 800         # SLIC: about this many regions per image
    region_scale: float = 10.0         # Felzenszwalb: the larger, the fewer and bigger the regions
    region_weight: float = 1.0         # 1: the region means alone; w: w x those + (1 - w) x the target
    # ILT (Michieli & Zanuttigh, 2019), off by default: weight of the output-layer distillation L'_D on the old
    # classes' logits (losses.output_distillation; MiB's ILT runs use 100), and a frozen encoder.
    output_distillation: float = 0.0
    freeze_encoder: bool = False
    # The pixel-supervised MiB step only (wilss.masked_update; WILSON's step ignores it): weight of MiB's unbiased
    # knowledge distillation (losses.unbiased_kd), 10 as in MiB's runs.
    unbiased_kd: float = 10.0
    # HRHF replay (Huang et al.; wilss.hrhf), off by default: before the update, ``replay_images`` images are
    # synthesised by inverting the old model (``replay_steps`` Adam steps each) for ``replay_classes`` (comma-separated
    # old class names; '' = every old class); in the joint phase each batch is joined by half as many of them, on
    # which the new model distils the old one (loss 'replay', weight ``replay_weight``).
    replay_images: int = 0
    replay_classes: str = ""
    replay_steps: int = 200
    replay_weight: float = 1.0

    def __post_init__(self) -> None:
        for name, most in UPDATE_LIMITS.items():
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be at most {most}, got {getattr(self, name)}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} of {self.epochs}")
        if self.pamr_refine_stride < 0:
            raise ValueError(f"pamr_refine_stride must be 0 (off) or a positive stride, got {self.pamr_refine_stride}")
        if self.pamr_refine_iterations < 1:
            raise ValueError(f"pamr_refine_iterations must be at least 1, got {self.pamr_refine_iterations}")
        if self.pamr_refine_fine_iterations < 0:
            raise ValueError("pamr_refine_fine_iterations must be 0 (off) or positive, "
                             f"got {self.pamr_refine_fine_iterations}")
        if self.pamr_refine_fine_iterations and not self.pamr_refine_stride:
            raise ValueError("pamr_refine_fine_iterations needs the refinement on (pamr_refine_stride > 0)")
        if self.region_prior not in REGION_PRIORS:
            raise ValueError(f"region_prior must be one of {', '.join(REGION_PRIORS)}, got {self.region_prior!r}")
        if not 0.0 < self.region_weight <= 1.0:
            raise ValueError(f"region_weight must be in (0, 1], got {self.region_weight}")
        if self.region_segments < 2 or self.region_scale <= 0:
            raise ValueError("region_segments must be at least 2 and region_scale positive, got "
                             f"{self.region_segments} and {self.region_scale}")
        if self.replay_images < 0 or self.replay_steps < 1:
            raise ValueError(f"replay_images must be 0 (off) or positive and replay_steps at least 1, got "
                             f"{self.replay_images} and {self.replay_steps}")
        if self.replay_classes.strip() and not self.replay_images:
            raise ValueError("replay_classes needs replay images (replay_images > 0)")
        for name in ("output_distillation", "unbiased_kd", "feature_distillation", "replay_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is a loss weight, at least 0; got {getattr(self, name)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.auto_tag_threshold < 1.0 or not 0.0 <= self.auto_tag_min_fraction <= 1.0:
            raise ValueError("auto_tag_threshold must be in (0, 1) and auto_tag_min_fraction in [0, 1], got "
                             f"{self.auto_tag_threshold} and {self.auto_tag_min_fraction}")


@dataclass(frozen=True)
class TagsBaseConfig(OptimConfig):
    """Step 0 from image tags alone: single-stage WSSS (Araslanov & Roth, CVPR 2020; wilss.tags_base).

    nGWP + focal penalty over the segmentation network's own scores (l_CLS) for ``epochs``; after ``warmup_epochs``
    also a class-balanced CE against PAMR-refined pseudo ground truth (l_SEG, weight ``seg_weight``) computed at
    1/``pamr_stride`` of the input. The stochastic gate mixes the deep head's scores with those of a shallow head on
    the encoder's detail map at rate ``gate_rate`` during training (0: off); the result is an ordinary network.
    """

    epochs: int = 20
    warmup_epochs: int = 5
    lr: float = 1e-2                   # heads and classifier
    encoder_lr: float = 1e-3           # the (ImageNet) encoder
    focal_gamma: float = 3.0
    focal_lambda: float = 0.01
    gwp_eps: float = 1.0               # the single-stage reference code's
    seg_weight: float = 1.0
    pamr_stride: int = 4
    pamr_iterations: int = 10
    gate_rate: float = 0.3             # psi: the shallow features' share in the gate

    def __post_init__(self) -> None:
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs} of {self.epochs}")
        if not 0.0 <= self.gate_rate < 1.0:
            raise ValueError(f"gate_rate must be in [0, 1), got {self.gate_rate}")
        if self.pamr_stride < 1 or self.pamr_iterations < 1:
            raise ValueError(f"pamr_stride and pamr_iterations must be at least 1, got {self.pamr_stride} and "
                             f"{self.pamr_iterations}")


def to_dict(cfg) -> dict:
    """JSON-friendly dict of a config (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def from_dict(cls, values: dict):
    """Rebuild a config from ``to_dict`` output, ignoring unknown keys (older or newer files)."""
    names = {f.name for f in fields(cls)}
    kept = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    return cls(**kept)
