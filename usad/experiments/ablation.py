"""Tables 2 and 3 of the paper from one evaluation, without rerunning any backbone.

Definitions (where the paper is brief, the choices made here):
- Table 2 (Image-AUC). s_M = max of the fused map M before its final blur.
  Pairwise sums use the fused score's weights: s_obj+s_pc = lambda_obj s_obj + s_pc,
  s_obj+s_M = lambda_obj s_obj + lambda_M s_M, s_pc+s_M = s_pc + lambda_M s_M;
  the full sum is s_fused (Eq. 22).
- Table 3 (Pixel-AUC, the authors' PRO-AUC, and the standard AU-PRO@0.3).
  Single maps are the branch maps as fusion receives them (at the evaluation
  size, no further blur); every Hadamard product, the pairs and the full
  product M_fused, gets the same final 5 x 5 blur as M_fused. M_fused is multiplied
  by fusion's own ``product_map``, so its row equals the main evaluation (metrics.json).
"""

from __future__ import annotations

import numpy as np
import torch

from usad.core import metrics
from usad.models.usad.fusion import final_blur, fused_score, hadamard, product_map
from usad.experiments.report import PAPER_TABLE2, PAPER_TABLE3, format_table  # the paper's values live with Table 1's

MAP_KEYS = {"M_obj": "m_obj", "M_attr": "m_attr", "M_pc": "m_pc"}


def image_scores(scores: dict[str, np.ndarray], fusion_cfg) -> dict[str, np.ndarray]:
    """The seven image scores of Table 2."""
    s_obj, s_pc, s_m = scores["s_obj"], scores["s_pc"], scores["s_M"]
    lo, lm = fusion_cfg.lambda_obj, fusion_cfg.lambda_m
    return {
        "s_obj": s_obj, "s_pc": s_pc, "s_M": s_m,
        "s_obj+s_pc": lo * s_obj + s_pc,
        "s_obj+s_M": lo * s_obj + lm * s_m,
        "s_pc+s_M": s_pc + lm * s_m,
        "s_fused": fused_score(s_obj, s_pc, s_m, lo, lm),
    }


def pixel_map(name: str, maps: dict[str, np.ndarray], fusion_cfg, chunk: int = 32) -> np.ndarray:
    """One map of Table 3 for all images: a branch map, or a blurred Hadamard product of branch maps
    (M_fused: fusion's own product, so it equals the evaluation's fused map)."""
    if name in MAP_KEYS:
        return maps[MAP_KEYS[name]]
    product = product_map if name == "M_fused" else hadamard
    keys = ("m_obj", "m_attr", "m_pc") if name == "M_fused" else [MAP_KEYS[p] for p in name.split("*")]
    out = np.empty_like(maps[keys[0]])
    for start in range(0, len(out), chunk):  # chunked: one full-size product at a time
        prod = product(*(torch.from_numpy(maps[k][start:start + chunk]) for k in keys))
        out[start:start + chunk] = final_blur(prod, fusion_cfg).numpy()
    return out


def ablation(preds, fusion_cfg, device=None) -> dict:
    """Stable keys: ``image.<score>`` -> Image-AUC (7), ``pixel.<map>`` -> {pixel_auroc, pro_auc_usad, aupro_0.3} (7).
    Pixel metrics on ``device`` (default: NumPy on the host)."""
    result = {}
    for name, s in image_scores(preds.scores, fusion_cfg).items():
        result[f"image.{name}"] = metrics.image_auroc(preds.label, s)
    for name in PAPER_TABLE3:
        m = pixel_map(name, preds.maps, fusion_cfg)
        result[f"pixel.{name}"] = {
            "pixel_auroc": metrics.pixel_auroc(preds.mask, m, device=device),
            "pro_auc_usad": metrics.pro_auc_usad(preds.mask, m, preds.label, device=device),
            "aupro_0.3": metrics.au_pro(preds.mask, m, device=device),
        }
    return result


def format_ablation(result: dict[str, float]) -> str:
    t2 = format_table([(k, PAPER_TABLE2[k] / 100, result[f"image.{k}"]) for k in PAPER_TABLE2],
                      header=("Table 2", "paper", "ours"))
    t3 = format_table([(k, PAPER_TABLE3[k][0] / 100, result[f"pixel.{k}"]["pixel_auroc"],
                        PAPER_TABLE3[k][1] / 100, result[f"pixel.{k}"]["pro_auc_usad"], result[f"pixel.{k}"]["aupro_0.3"])
                       for k in PAPER_TABLE3],
                      header=("Table 3", "Pixel paper", "Pixel ours", "PRO paper", "PRO ours", "AU-PRO@0.3"))
    return "Image-AUC (%)\n" + t2 + "\n\nPixel-AUC / PRO-AUC (%)\n" + t3
