"""The segmentation losses of CSAD (Sec. 3.2, Eq. 2-3) as the official code computes them.

Every loss takes raw logits ``(B, C, H, W)``; label maps are integer ``(B, H, W)``
with 0 = background. Where the code departs from the paper, the code is followed
(and noted here):

- cross entropy is taken of the *softmax probabilities* used as logits (the code
  applies ``softmax`` and then a cross entropy that applies its own log-softmax);
- the histogram loss (Eq. 2) sums the absolute differences over the foreground
  classes and divides by the batch size (the paper divides by N_cls);
- the class-balanced Dice weights come from the class areas of the whole batch;
- Eq. 3's weights are applied by the caller (``segmentor``), with the code's values
  (CE 0.5, Focal 10, Dice 1, Hist 10, Entropy 1; the paper lists Dice and Focal swapped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS_DICE = 1e-5      # the code's smoothing of the Dice ratio and of its class weights
EPS_ENTROPY = 1e-5   # log(p + eps) in the entropy loss


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, C, H, W) float one-hot."""
    return F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_CE: mean over pixels of the cross entropy of softmax(logits) taken as logits (the code's double softmax)."""
    probs = logits.softmax(1)
    return -(probs.log_softmax(1).gather(1, labels.long().unsqueeze(1))).mean()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """L_Focal: -(1 - p_t)^gamma log p_t, p_t from a label-smoothed one-hot (clamped to [s/(C-1), 1-s]) plus s."""
    probs = logits.softmax(1)
    c = probs.shape[1]
    target = one_hot(labels, c).clamp(smooth / (c - 1), 1.0 - smooth)
    pt = (target * probs).sum(1) + smooth
    return (-(1.0 - pt).pow(gamma) * pt.log()).mean()


def dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_Dice, class balanced: mean over (image, class) of w_c (1 - Dice), w_c ∝ 1 / (batch area of class c)."""
    probs = logits.softmax(1)
    target = one_hot(labels, probs.shape[1])
    weights = 1.0 / (target.sum((0, 2, 3)) + EPS_DICE)
    weights = (weights / weights.sum()).detach()
    inter = 2.0 * (probs * target).sum((2, 3))
    union = probs.sum((2, 3)) + target.sum((2, 3)) + EPS_DICE
    dice = (inter + EPS_DICE) / (union + EPS_DICE)
    return (weights * (1.0 - dice)).mean()


def class_histogram(label_maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Eq. 1: share of the pixels of each class, (B, H, W) -> (B, C)."""
    return one_hot(label_maps, num_classes).mean((2, 3))


def histogram_loss(logits: torch.Tensor, target_labels: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (code form): sum over foreground classes of |Hist(Y) - mean softmax|, divided by the batch size."""
    probs = logits.softmax(1)
    diff = (class_histogram(target_labels, probs.shape[1]) - probs.mean((2, 3))).abs()
    return diff[:, 1:].sum() / probs.shape[0]


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """L_Ent: mean over pixels and classes of -p log(p + eps)."""
    probs = logits.softmax(1)
    return (-probs * (probs + EPS_ENTROPY).log()).mean()


def segmentation_losses(sup_logits: torch.Tensor, labels: torch.Tensor, unsup_logits: torch.Tensor | None,
                        hist_labels: torch.Tensor | None, weights: dict, gamma: float, smooth: float,
                        sup_only: bool) -> dict[str, torch.Tensor]:
    """Eq. 3, the code's grouping: weighted CE + Focal + Dice on labelled images; after the supervised-only
    epochs also Hist and Entropy on unlabelled images and Entropy on labelled ones. Returns each weighted term
    and ``total``."""
    out = {
        "ce": cross_entropy_loss(sup_logits, labels) * weights["ce"],
        "focal": focal_loss(sup_logits, labels, gamma, smooth) * weights["focal"],
        "dice": dice_loss(sup_logits, labels) * weights["dice"],
    }
    total = out["ce"] + out["focal"] + out["dice"]
    if not sup_only:
        out["entropy_sup"] = entropy_loss(sup_logits) * weights["entropy"]
        total = total + out["entropy_sup"]
        if unsup_logits is not None:
            out["hist"] = histogram_loss(unsup_logits, hist_labels) * weights["hist"]
            out["entropy_unsup"] = entropy_loss(unsup_logits) * weights["entropy"]
            total = total + out["hist"] + out["entropy_unsup"]
    out["total"] = total
    return out
