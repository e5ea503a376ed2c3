"""usad.compare on the MVTec LOCO AD layout (generated scenes): its metrics, its split, its table."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from usad.core.data.layouts import read_layout
from usad.core.data.loco_synthetic import make_synthetic_loco
from usad.core.loco_metrics import loco_metrics
from usad.experiments import compare

from conftest import config_argv, tiny_config
from test_run import SMALL


@pytest.fixture(scope="module")
def loco(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare_loco")
    root = make_synthetic_loco(tmp / "data", "pushpins", size=96)
    cfg = tiny_config(tmp, tmp / "data", "pushpins", *SMALL)
    table = compare.main(config_argv(cfg, tmp) + ["--methods", "usad"])["pushpins"]
    out = tmp / "results" / "pushpins" / "compare"
    return {"root": root, "cfg": cfg, "table": table, "out": out, "z": np.load(out / "usad" / "predictions.npz")}


def test_image_aurocs_per_anomaly_type(loco):
    row, z = loco["table"]["methods"]["usad"], loco["z"]
    assert loco["table"]["layout"] == "loco" and row["status"] == "ran"
    good = z["label"] == 0
    for kind in ("logical", "structural"):
        chosen = good | (z["defect"] == f"{kind}_anomalies")
        assert row[f"image_auroc_{kind}"] == pytest.approx(roc_auc_score(z["label"][chosen], z["score"][chosen]), abs=1e-12)
    assert row["image_auroc_mean"] == pytest.approx((row["image_auroc_logical"] + row["image_auroc_structural"]) / 2)
    assert "pixel_auroc" not in row


def test_spro_is_scored_on_the_written_maps(loco):
    row, z = loco["table"]["methods"]["usad"], loco["z"]
    layout = read_layout(loco["root"])
    assert list(z["files"]) == [t.path.relative_to(layout.root).as_posix() for t in layout.test]
    ref = loco_metrics(layout, z["map"], z["score"], size=loco["cfg"].data.eval_size)["au_spro"]
    assert (row["spro_auc_0.05_logical"], row["spro_auc_0.05_structural"], row["spro_auc_0.05"]) == \
        (ref["logical_anomalies"], ref["structural_anomalies"], ref["mean"])
    assert z["mask"][z["label"] == 1].reshape(int((z["label"] == 1).sum()), -1).any(1).all()  # region union


def test_validation_is_validation_good(loco):
    row = loco["table"]["methods"]["usad"]
    assert (row["n_train"], row["n_validation"]) == (8, 4)  # make_synthetic_loco's defaults
    assert loco["table"]["validation"] == "validation/good (4 images)"
    md = (loco["out"] / "table1.md").read_text()
    assert "| USAD (fused) |" in md and "AU-sPRO@0.05 mean" in md
    saved = json.loads((loco["out"] / "table1.json").read_text())
    assert saved["methods"]["usad"]["spro_auc_0.05"] == row["spro_auc_0.05"]
    assert (loco["out"] / "fig7_low_contrast.png").is_file() and (loco["out"] / "fig8_high_contrast.png").is_file()
