"""The equations of one WILSON update iteration, as pure functions over tensors.

Shapes: ``z`` localizer scores ``BxKxhxw`` over all seen classes [background, old..., new...];
``old_probs`` the frozen step t-1 model's probabilities ``BxK0xhxw`` (K0 = background + old classes): sigmoid(o) for
a model trained with BCE as in the paper, softmax(o) for one trained with cross-entropy (see ``Segmenter.probabilities``);
``p`` the new model's logits ``BxKxhxw``; ``tags`` multi-hot ``BxN`` over the N new classes.
All of them live at feature resolution, as in the reference code. Under mixed precision the logits arrive in
bf16/fp16: the losses upcast them to float32 (a no-op in fp32) rather than round the soft targets down to them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def aggregate_scores(z: torch.Tensor, *, gamma: float = 3.0, lam: float = 0.01, eps: float = 1e-5) -> torch.Tensor:
    """Image-level class scores from pixel scores: ``BxKxhxw`` -> ``BxK`` logits (pre-sigmoid).

    Eq. 1: normalised global weighted pooling, nGWP_c = sum_i m_ic z_ic / (eps + sum_i m_ic), m = softmax_c(z).
    Eq. 2: focal penalty FOC_c = (1 - mean_i m_ic)^gamma * log(lam + mean_i m_ic); y_hat = sigmoid(nGWP + FOC).
    ``eps`` is "small" in the paper and 1 in the reference code.
    """
    m = z.softmax(dim=1).flatten(2)
    scores = z.flatten(2)
    ngwp = (m * scores).sum(-1) / (eps + m.sum(-1))
    mean_mass = m.mean(-1)
    focal = (1.0 - mean_mass).pow(gamma) * torch.log(lam + mean_mass)
    return ngwp + focal


def classification_loss(class_logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Eq. 3: multi-label soft-margin loss of ``BxN`` aggregated logits against ``BxN`` multi-hot tags."""
    return F.multilabel_soft_margin_loss(class_logits, tags.to(class_logits.dtype))


def confident_presence(probs: torch.Tensor, *, threshold: float = 0.7, min_fraction: float = 0.01) -> torch.Tensor:
    """Image-level tags read from a model's probabilities ``BxCxhxw``: ``BxC`` in {0, 1}, 1 where class c's
    probability exceeds ``threshold`` on at least ``min_fraction`` of the pixels (and on at least one pixel).

    Beyond the paper: the automatic relaxed setting takes the old classes' tags from the frozen old model, which
    gives l_CLS negatives to contrast a new class with when every image shows it (single-class steps).
    """
    confident = (probs > threshold).flatten(2).float()
    return ((confident.mean(-1) >= min_fraction) & (confident.amax(-1) > 0)).float()


def localization_loss(z_old: torch.Tensor, old_probs: torch.Tensor) -> torch.Tensor:
    """Eq. 4: per-pixel BCE between sigmoid(z_c) and the old model's probability (sigmoid(o_c)) for the K0 channels
    of step t-1. ``z_old``: the localizer's first K0 channels ``BxK0xhxw``; mean over classes and pixels."""
    return F.binary_cross_entropy_with_logits(z_old.float(), old_probs.float())


@torch.no_grad()
def hard_soft_mix(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 5-6: ``alpha`` * one-hot argmax of ``scores`` ``BxKxhxw`` + (1 - ``alpha``) * ``scores``; a pixel whose
    scores are all 0 stays 0."""
    hard = F.one_hot(scores.argmax(dim=1), scores.shape[1]).permute(0, 3, 1, 2).to(scores.dtype)
    return alpha * hard * (scores > 0) + (1.0 - alpha) * scores


@torch.no_grad()
def pseudo_label(z: torch.Tensor, old_probs: torch.Tensor | None, tags: torch.Tensor,
                 *, alpha: float = 0.5, new_on_old_background: bool = False,
                 no_background: bool = False) -> torch.Tensor:
    """Soft pseudo-label targets ``BxKxhxw`` in [0, 1] for l_SEG (Eq. 5-7).

    Eq. 5: q_hard = one-hot argmax of m = softmax(z);  Eq. 6: q = alpha * q_hard + (1 - alpha) * m, with the
    channels of new classes absent from an image's tags set to 0.
    Eq. 7: target_bg = min(sigmoid(o_bg), q_bg); target_old = sigmoid(o_old); target_new = q_new.
    ``old_probs``: the old model's probabilities (sigmoid(o) in the paper). With ``None`` (the FT baseline) every
    channel's target is q itself.
    ``new_on_old_background`` (beyond the paper): target_new = min(q_new, sigmoid(o_bg)), so a new class is taught
    only where the old model saw background, as the incremental setting labels new-class pixels at step t-1 (the
    localizer's CAMs spill over neighbouring old classes; the old model knows better there).
    ``no_background`` (beyond the paper, for data where every pixel is a named class, e.g. CamVid): the old model's
    background is then made of the classes not yet added, so in an image tagged with new classes it is shared among
    them alone (``unnamed_background_target``); images without a new tag keep Eq. 7.
    """
    q = hard_soft_mix(z.float().softmax(dim=1), alpha)
    num_new = tags.shape[1]
    q[:, -num_new:] *= tags.to(q.dtype)[:, :, None, None]
    if old_probs is None:
        return q
    target = q.clone()
    old_prob = old_probs.float()
    num_old = old_prob.shape[1]
    target[:, 0] = torch.minimum(old_prob[:, 0], q[:, 0])  # Eq. 7: background is the min of old model and q
    target[:, 1:num_old] = old_prob[:, 1:]
    if new_on_old_background:
        target[:, num_old:] = torch.minimum(target[:, num_old:], old_prob[:, :1])
    if no_background:
        target = unnamed_background_target(z.float(), target, old_prob[:, :1], tags, alpha)
    return target


@torch.no_grad()
def unnamed_background_target(z: torch.Tensor, target: torch.Tensor, old_bg: torch.Tensor, tags: torch.Tensor,
                              alpha: float) -> torch.Tensor:
    """``target`` with, in each image tagged with a new class, the old model's background probability ``old_bg``
    ``Bx1xhxw`` handed to the tagged new classes: target_new = old_bg * (``alpha`` one-hot + (1 - ``alpha``) r), r the
    softmax of the localizer's scores ``z`` over the image's tagged new classes; target_bg = 0 there. Where no
    pixel is background (every pixel a named class), the old background is exactly the classes not yet added."""
    num_new = tags.shape[1]
    tagged = tags.to(z.dtype)[:, :, None, None]
    scores = z[:, -num_new:].masked_fill(tagged == 0, float("-inf")).softmax(dim=1).nan_to_num(0.0)
    share = hard_soft_mix(scores, alpha) * tagged
    any_tag = (tags.sum(dim=1) > 0)[:, None, None, None]
    out = target.clone()
    out[:, -num_new:] = torch.where(any_tag, old_bg * share, target[:, -num_new:])
    out[:, :1] = torch.where(any_tag, torch.zeros_like(old_bg), target[:, :1])
    return out


def segmentation_loss(p: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8: BCE-with-logits of ``p`` against the soft ``target``, summed over classes, mean over pixels.

    ``weights``: optional per-image weights ``B`` (e.g. 0 for images whose pseudo-label misses a tagged class).
    """
    per_pixel = F.binary_cross_entropy_with_logits(p.float(), target.float(), reduction="none").sum(dim=1)
    per_image = per_pixel.flatten(1).mean(dim=1)
    if weights is None:
        return per_image.mean()
    return (weights * per_image).sum() / weights.sum().clamp_min(1e-5)


def localized_weights(target: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Per-image weight ``B``: 1 where every tagged new class is the argmax of at least one pixel, else 0."""
    num_new = tags.shape[1]
    winners = F.one_hot(target.argmax(dim=1), target.shape[1]).flatten(1, 2).amax(dim=1)[:, -num_new:]
    return ((winners > 0) | (tags == 0)).all(dim=1).to(target.dtype)


def pixel_bce(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Step 0 with pixel labels as BCE: one-hot targets ``BxKxHxW`` from ``labels`` ``BxHxW``, summed over classes,
    mean over the non-void pixels (void never becomes background)."""
    valid = labels != ignore_index
    target = F.one_hot(torch.where(valid, labels, 0), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def feature_distillation(features: torch.Tensor, old_features: torch.Tensor) -> torch.Tensor:
    """ILT's feature distillation: MSE between the new and the frozen old encoder features (reference-code extra)."""
    return F.mse_loss(features, old_features)


# ------------------------------------------------------------------------ MiB (Cermelli et al., CVPR 2020)
# ``num_old``: background + old classes, the first channels of the new model's logits ``BxKxHxW``
# [background, old..., new...]; the old model's logits ``BxK0xHxW`` (K0 = num_old).
def unbiased_ce(logits: torch.Tensor, labels: torch.Tensor, num_old: int, ignore_index: int = 255) -> torch.Tensor:
    """MiB's unbiased cross-entropy of ``logits`` ``BxKxHxW`` against pixel labels ``BxHxW`` (model ids).

    A pixel labelled background may show an old class (the step's masks label only the new classes), so its
    probability is that of background *or* an old class: log p_bg = logsumexp_{c < num_old}(x_c) - logsumexp_c(x_c).
    New-class pixels: the usual log-softmax. Labels of old classes count as background (as MiB's code does);
    ``ignore_index`` pixels are left out of the mean.
    """
    x = logits.float()
    den = torch.logsumexp(x, dim=1, keepdim=True)
    log_p = torch.cat([torch.logsumexp(x[:, :num_old], dim=1, keepdim=True), x[:, num_old:]], dim=1) - den
    target = torch.where(labels >= num_old, labels - num_old + 1, torch.zeros_like(labels))  # log_p's channels
    target = torch.where(labels == ignore_index, labels, target)
    return F.nll_loss(log_p, target, ignore_index=ignore_index)


def unbiased_kd(new_logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """MiB's unbiased knowledge distillation: the old model's softmax ``q`` over its K0 channels is matched by the
    new model's probabilities where the old background is matched by background + new classes (the old model
    saw the new classes as background):

        L = -mean_pixels (1/K0) [ q_bg log(p_bg + sum_new p_c) + sum_{old c} q_c log p_c ]

    ``1/K0`` as in MiB's code (the paper writes the sum); MiB weights this loss by 10.
    """
    x, q = new_logits.float(), old_logits.float().softmax(dim=1)
    num_old = q.shape[1]
    den = torch.logsumexp(x, dim=1)
    log_bg = torch.logsumexp(torch.cat([x[:, :1], x[:, num_old:]], dim=1), dim=1) - den
    log_old = x[:, 1:num_old] - den.unsqueeze(1)
    return -((q[:, 0] * log_bg + (q[:, 1:] * log_old).sum(dim=1)) / num_old).mean()


# ------------------------------------------------------------------------ ILT (Michieli & Zanuttigh, 2019)
def output_distillation(new_logits: torch.Tensor, old_logits: torch.Tensor) -> torch.Tensor:
    """ILT's L'_D: cross-entropy between the old model's softmax over its K0 channels and the new model's softmax
    over the same K0 channels (the new classes' logits left out), mean over channels and pixels as in MiB's
    implementation of ILT (which weights it by 100): -mean_pixels (1/K0) sum_{c < K0} q_c log p~_c."""
    num_old = old_logits.shape[1]
    log_p = new_logits.float()[:, :num_old].log_softmax(dim=1)
    q = old_logits.float().softmax(dim=1)
    return -(q * log_p).mean(dim=1).mean()
