"""LGST training losses.

CSAD (the code, EfficientAD's recipe):
- local:  hard-feature loss, the mean of the squared teacher-student differences at or above their
          ``hard_quantile`` (0.999) quantile, plus the penalty mean(S_local(P)^2) on an ImageNet-like image P;
- global: mean (T(A) - G(A))^2 on the colour-jittered image A;
- fusion: mean (G(A) - S_head(A))^2, the local student's second head regressing the global student.
AeCSAD: Eq. 4 (plain MSE for the local student, no hard mining, no penalty), Eq. 6 (global), Eq. 7 (fusion),
Eq. 8 (weighted sum).
"""

from __future__ import annotations

import torch

from usad.models.csad.lgst import quantile


def hard_feature_loss(teacher: torch.Tensor, student: torch.Tensor, q: float) -> torch.Tensor:
    """Mean of the squared differences at or above their q-quantile (EfficientAD's hard-feature loss)."""
    d = (teacher - student) ** 2
    return d[d >= quantile(d.detach(), q)].mean()


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 4 / 6 / 7: (1 / BCHW) sum ||a - b||^2."""
    return ((a - b) ** 2).mean()


def penalty_loss(student_on_penalty: torch.Tensor) -> torch.Tensor:
    return (student_on_penalty ** 2).mean()


def lgst_losses(s, t_img, st_img, st_pen, t_aug, ae_aug, head_aug) -> dict[str, torch.Tensor]:
    """The three terms and their weighted sum (Eq. 8); ``s`` is the ``lgst`` config section.

    t_img / st_img: teacher and local head on the training images; st_pen: local head on the penalty images
    (None without penalty); t_aug / ae_aug / head_aug: teacher, global student and the second head on the
    jittered images.
    """
    local = hard_feature_loss(t_img, st_img, s.hard_quantile) if s.local_loss == "hard" else mse(t_img, st_img)
    if st_pen is not None:
        local = local + penalty_loss(st_pen)
    glob = mse(t_aug, ae_aug)
    fusion = mse(ae_aug, head_aug)
    w = s.loss_weights
    total = w.local * local + w["global"] * glob + w.fusion * fusion
    return {"local": local, "global": glob, "fusion": fusion, "total": total}
