"""Tables 2 and 3 (--ablation) against an independent recomputation from --save-predictions."""

import json

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from usad import metrics
from usad.ablation import PAPER_TABLE2, PAPER_TABLE3


@pytest.fixture(scope="module")
def table(golden_run):
    path = golden_run["tmp"] / "results" / "data" / "ablation.json"
    return json.loads(path.read_text()), golden_run["ours"]


def test_ablation_json_has_all_entries(table):
    result, _ = table
    assert sorted(result) == sorted([f"image.{k}" for k in PAPER_TABLE2] + [f"pixel.{k}" for k in PAPER_TABLE3])
    for k in PAPER_TABLE3:
        assert set(result[f"pixel.{k}"]) == {"pixel_auroc", "pro_auc_usad", "aupro_0.3"}


def test_table2_equals_recomputation(table):
    result, p = table
    lo, lm = 0.01, 1.0
    s_m = (p["m_obj"] * p["m_attr"] * p["m_pc"]).reshape(len(p["label"]), -1).max(1)  # max of M before the blur
    scores = {"s_obj": p["s_obj"], "s_pc": p["s_pc"], "s_M": s_m, "s_obj+s_pc": lo * p["s_obj"] + p["s_pc"],
              "s_obj+s_M": lo * p["s_obj"] + lm * s_m, "s_pc+s_M": p["s_pc"] + lm * s_m, "s_fused": p["s_fused"]}
    for k, s in scores.items():
        assert result[f"image.{k}"] == pytest.approx(roc_auc_score(p["label"], s), abs=1e-9), k
    # the fused sum really is s_fused
    np.testing.assert_allclose(lo * p["s_obj"] + p["s_pc"] + lm * s_m, p["s_fused"], rtol=1e-5)


def test_table3_equals_recomputation(table):
    result, p = table
    single = {"M_obj": p["m_obj"], "M_attr": p["m_attr"], "M_pc": p["m_pc"]}
    for name in PAPER_TABLE3:
        parts = ["M_obj", "M_attr", "M_pc"] if name == "M_fused" else name.split("*")
        if len(parts) == 1:
            m = single[name]
        else:
            prod = np.prod([single[q] for q in parts], axis=0)
            m = np.stack([cv2.GaussianBlur(x, (5, 5), 1.0) for x in prod])
        expected = {"pixel_auroc": roc_auc_score(p["mask"].ravel(), m.ravel()),
                    "pro_auc_usad": metrics.pro_auc_usad(p["mask"], m, p["label"]),
                    "aupro_0.3": metrics.au_pro(p["mask"], m)}
        for metric, value in expected.items():
            assert result[f"pixel.{name}"][metric] == pytest.approx(value, abs=1e-4), (name, metric)
    # the fused row is the main evaluation's fused map
    np.testing.assert_allclose(
        np.stack([cv2.GaussianBlur(x, (5, 5), 1.0) for x in p["m_obj"] * p["m_attr"] * p["m_pc"]]), p["m_fused"], atol=1e-6)
