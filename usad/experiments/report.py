"""Results on disk: the paper's numbers beside ours, metrics JSON, predictions NPZ, heatmap overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from usad.core.outputs import overlay, resized_rgb, write_npz, write_png

# Table 1 of the paper (CoalAD, %), from ../shared/usad-reference.md Sec. 8.
PAPER_TABLE1 = {
    "PatchCore": (94.47, 88.54, 73.46),
    "SimpleNet": (92.18, 88.84, 46.16),
    "DRAEM": (65.06, 67.92, 20.88),
    "ISSTAD": (80.27, 89.32, 58.21),
    "EfficientAD": (87.93, 89.17, 64.92),
    "RD4AD": (85.10, 92.20, 72.15),
    "RD++": (89.24, 93.67, 76.27),
    "CKAAD": (85.62, 89.24, 72.28),
    "USAD (fused)": (98.83, 98.24, 89.88),
}
# Table 2 (image-level ablation, Image-AUC %) and Table 3 (pixel-level ablation, Pixel-AUC / PRO-AUC %), same source.
PAPER_TABLE2 = {"s_obj": 97.32, "s_pc": 94.27, "s_M": 94.48, "s_obj+s_pc": 98.52,
                "s_obj+s_M": 98.19, "s_pc+s_M": 96.91, "s_fused": 98.83}
PAPER_TABLE3 = {"M_obj": (95.75, 81.15), "M_attr": (94.08, 75.90), "M_pc": (88.42, 74.65),
                "M_obj*M_attr": (97.43, 86.96), "M_obj*M_pc": (96.96, 87.36),
                "M_attr*M_pc": (96.90, 85.05), "M_fused": (98.24, 89.88)}

# The public contract of ``test_fusion.py --save-predictions``.
# s_M = max of M before the final blur (the fused score's third term, Table 2's s_M).
PREDICTION_KEYS = ("files", "label", "s_obj", "s_attr", "s_pc", "s_fused", "s_M",
                   "m_obj", "m_attr", "m_pc", "m_fused", "mask")


def format_table(rows: list[tuple[str, float | None, float | None, float | None]],
                 header=("method", "Image-AUC", "Pixel-AUC", "PRO-AUC")) -> str:
    """Plain-text table; numbers are percentages with 2 decimals."""
    cells = [list(header)] + [[name] + ["-" if v is None else f"{100 * v:.2f}" for v in vals] for name, *vals in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    sep = "-" * len(line(cells[0]))
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def table1(metrics: dict, label: str = "USAD (this run)") -> str:
    """The paper's Table 1 with this run's fused numbers appended (PRO-AUC = the authors' variant)."""
    rows = [(name, *(v / 100 for v in vals)) for name, vals in PAPER_TABLE1.items()]
    rows.append((label, metrics["image_auroc"], metrics["pixel_auroc"], metrics["pro_auc_usad"]))
    text = format_table(rows)
    return text + f"\n(standard MVTec AU-PRO@0.3 of this run: {100 * metrics['aupro_0.3']:.2f})"


def save_predictions(path: Path, preds) -> None:
    """All per-image outputs in evaluation order (maps at the evaluation size), atomically."""
    source = {"files": np.array(preds.files), "label": preds.label, "mask": preds.mask, **preds.scores, **preds.maps}
    write_npz(path, {k: source[k] for k in PREDICTION_KEYS})


def save_heatmaps(out_dir: Path, category_dir: Path, preds, indices) -> list[Path]:
    """Fused-map overlays ``<kind>_<name>.png`` for the given test images."""
    written = []
    for i in indices:
        rel = Path(preds.files[i])
        img = resized_rgb(category_dir / rel, preds.maps["m_fused"].shape[-1])
        path = Path(out_dir) / f"{rel.parent.name}_{rel.stem}.png"
        write_png(path, overlay(img, preds.maps["m_fused"][i]))
        written.append(path)
    return written
