"""Tables 2 and 3 (--ablation) against an independent recomputation from --save-predictions.

Table 2 is checked twice: at the paper's weights (the golden run) and at other
fusion weights (lambda_obj = 0.2, lambda_M = 0.5; inference-only, so the golden
run's trained models are reused), where a weight missing from a pairwise sum shows.
"""

import json

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import test_fusion
from usad.core import metrics
from usad.experiments.ablation import PAPER_TABLE2, PAPER_TABLE3, image_scores
from usad.core.config import with_overrides


@pytest.fixture(scope="module")
def table(golden_run):
    path = golden_run["tmp"] / "results" / "data" / "ablation.json"
    return json.loads(path.read_text()), golden_run["ours"]


@pytest.fixture(scope="module")
def weighted(golden_run, tmp_path_factory):
    """test_fusion.py --ablation with non-default fusion weights, on the golden run's trained models."""
    tmp = tmp_path_factory.mktemp("weighted")
    overrides = ["fusion.lambda_obj=0.2", "fusion.lambda_m=0.5", f"paths.results={tmp / 'results'}"]
    argv = golden_run["argv"] + [a for o in overrides for a in ("--set", o)]
    out = tmp / "predictions.npz"
    result = test_fusion.main(argv + ["--save-predictions", str(out), "--heatmaps", "0", "--panels", "0", "--ablation"])
    recorded = json.loads((tmp / "results" / "data" / "metrics.json").read_text())["config"]["fusion"]
    assert (recorded["lambda_obj"], recorded["lambda_m"]) == (0.2, 0.5)  # the overrides reached the run
    assert not np.allclose(np.load(out)["s_fused"], golden_run["ours"]["s_fused"], rtol=1e-3)
    return {"table": json.loads((tmp / "results" / "data" / "ablation.json").read_text()), "ours": np.load(out),
            "metrics": result, "config": with_overrides(golden_run["config"], *overrides[:2])}


@pytest.fixture(params=["paper_weights", "other_weights"])
def run(request, golden_run, table):
    """(ablation.json, saved predictions, metrics, fusion config) of one test_fusion.py run."""
    if request.param == "paper_weights":
        return (*table, golden_run["metrics"], golden_run["config"].fusion)
    w = request.getfixturevalue("weighted")
    return w["table"], w["ours"], w["metrics"], w["config"].fusion


def recomputed_scores(p, lo: float, lm: float) -> dict[str, np.ndarray]:
    """Table 2's seven scores from the saved branch scores and maps (maps at the eval size, before any product)."""
    s_m = (p["m_obj"].astype(np.float64) * p["m_attr"] * p["m_pc"]).reshape(len(p["label"]), -1).max(1)  # max of M, unblurred
    s_obj, s_pc = p["s_obj"].astype(np.float64), p["s_pc"].astype(np.float64)
    return {"s_obj": s_obj, "s_pc": s_pc, "s_M": s_m, "s_obj+s_pc": lo * s_obj + s_pc,
            "s_obj+s_M": lo * s_obj + lm * s_m, "s_pc+s_M": s_pc + lm * s_m, "s_fused": lo * s_obj + s_pc + lm * s_m}


def test_ablation_json_has_all_entries(table):
    result, _ = table
    assert sorted(result) == sorted([f"image.{k}" for k in PAPER_TABLE2] + [f"pixel.{k}" for k in PAPER_TABLE3])
    for k in PAPER_TABLE3:
        assert set(result[f"pixel.{k}"]) == {"pixel_auroc", "pro_auc_usad", "aupro_0.3"}


def test_s_m_is_the_max_of_the_unblurred_product(run):
    _, p, _, fusion = run
    expected = recomputed_scores(p, fusion.lambda_obj, fusion.lambda_m)
    np.testing.assert_allclose(p["s_M"], expected["s_M"], rtol=1e-5)
    np.testing.assert_allclose(p["s_fused"], expected["s_fused"], rtol=1e-5)  # Eq. 22-23 with these weights


def test_table2_scores_and_aucs_equal_recomputation(run):
    result, p, main, fusion = run
    expected = recomputed_scores(p, fusion.lambda_obj, fusion.lambda_m)
    ours = image_scores({k: p[k] for k in ("s_obj", "s_pc", "s_M")}, fusion)
    assert list(ours) == list(PAPER_TABLE2)
    for k, s in expected.items():
        np.testing.assert_allclose(ours[k], s, rtol=1e-5, err_msg=k)  # the scores themselves, weights included
        assert result[f"image.{k}"] == pytest.approx(roc_auc_score(p["label"], s), abs=1e-9), k
    assert result["image.s_fused"] == main["image_auroc"]  # the full sum is the evaluation's fused score


def test_table3_equals_recomputation(table, golden_run):
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
    # the fused row is the main evaluation's fused map: exactly metrics.json's numbers
    for metric in ("pixel_auroc", "pro_auc_usad", "aupro_0.3"):
        assert result["pixel.M_fused"][metric] == golden_run["metrics"][metric], metric
    np.testing.assert_allclose(
        np.stack([cv2.GaussianBlur(x, (5, 5), 1.0) for x in p["m_obj"] * p["m_attr"] * p["m_pc"]]), p["m_fused"], atol=1e-6)
