"""The NPGMF paper's numbers (../shared/papers/npgmf.txt), for printing beside a run (usad.compare / report).

Fractions in [0, 1], keyed by dataset folder name. Only what the text gives: the per-category
image AUROC on MVTec LOCO is in Fig. 8 alone (a plot), so only its mean (0.859) is here; Table VII
is given in the text only as NPGMF's own row (21 ms per image, about 125 GFLOPs, sPRO 0.758).
"""

from __future__ import annotations

LOCO_CATEGORIES = ("breakfast_box", "screw_bag", "pushpins", "splicing_connectors", "juice_bottle")
MVTEC_AD_CATEGORIES = ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                       "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper")

PAPER = {
    # Table I: MVTec LOCO AD, pixel sPRO (FPR limit 0.05), NPGMF's row
    "table1_loco_spro": {"breakfast_box": 0.649, "screw_bag": 0.666, "pushpins": 0.755,
                         "splicing_connectors": 0.822, "juice_bottle": 0.896, "mean": 0.758},
    # Sec. IV-B / Fig. 8: MVTec LOCO AD image AUROC (per category only in the figure)
    "fig8_loco_image_auroc": {"mean": 0.859},
    # Table III: MVTec LOCO AD sPRO at other FPR limits (mean over categories)
    "table3_loco_spro_by_limit": {0.01: 0.546, 0.05: 0.758, 0.1: 0.829, 0.3: 0.916, 1.0: 0.972},
    # Table II: MVTec AD (image AUROC, pixel AUROC) per category, NPGMF's row
    "table2_mvtec_ad": {
        "carpet": (0.994, 0.992), "grid": (0.992, 0.987), "leather": (1.0, 0.993), "tile": (0.998, 0.960),
        "wood": (0.984, 0.956), "bottle": (1.0, 0.988), "cable": (0.980, 0.982), "capsule": (0.995, 0.991),
        "hazelnut": (1.0, 0.992), "metal_nut": (1.0, 0.982), "pill": (0.944, 0.981), "screw": (0.965, 0.995),
        "toothbrush": (0.939, 0.991), "transistor": (0.999, 0.970), "zipper": (0.997, 0.990), "mean": (0.986, 0.983)},
    # Table V: ablation. AGU: the global prior; NMC: the codebooks; the last three rows are npgmf.branches
    "table5_ablation": {
        "logical baseline": {"loco_spro": 0.596, "mvtec_ad_pixel_auroc": 0.961, "mvtec_ad_image_auroc": 0.916},
        "logical +AGU": {"loco_spro": 0.605, "mvtec_ad_pixel_auroc": 0.969, "mvtec_ad_image_auroc": 0.930},
        "logical +NMC": {"loco_spro": 0.609, "mvtec_ad_pixel_auroc": 0.968, "mvtec_ad_image_auroc": 0.926},
        # the rows of --set npgmf.branches=logical | structural | both
        "logical": {"loco_spro": 0.622, "mvtec_ad_pixel_auroc": 0.971, "mvtec_ad_image_auroc": 0.958},
        "structural": {"loco_spro": 0.680, "mvtec_ad_pixel_auroc": 0.983, "mvtec_ad_image_auroc": 0.977},
        "both": {"loco_spro": 0.758, "mvtec_ad_pixel_auroc": 0.983, "mvtec_ad_image_auroc": 0.986},
    },
    # Table VI: LOCO sPRO on the logical / structural subsets
    "table6_subsets": {"logical": {"logical": 0.690, "structural": 0.553},
                       "structural": {"logical": 0.541, "structural": 0.820}},
    # Table VII (text): per-image time on an RTX 3090, compute, sPRO
    "table7_efficiency": {"ms_per_image": 21.0, "images_per_s": 47.0, "gflops": 125.0, "loco_spro": 0.758,
                          "device": "NVIDIA RTX 3090"},
}
