"""The whole pipeline on ../shared/golden against the authors' outputs (reference.npz).

Runs the three training scripts and test_fusion.py exactly as a user would
(in-process), at paper defaults with the fixture's tiny backbones.
"""

import numpy as np
import pytest
import torch

from usad import metrics
from usad.fusion import to_eval_size

from conftest import require_golden

PEARSON_MIN = 0.999
METRIC_TOL = 0.005


def pearson(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def run(golden_run):
    return golden_run


def test_evaluation_order_and_labels(run):
    assert list(run["ours"]["files"]) == list(run["ref"]["files"])
    np.testing.assert_array_equal(run["ours"]["label"], run["ref"]["label"])
    np.testing.assert_array_equal(run["ours"]["mask"], run["ref"]["mask"].astype(np.uint8))


@pytest.mark.parametrize("key", ["s_obj", "s_attr", "s_pc", "s_fused"])
def test_scores_match_reference(run, key):
    r = pearson(run["ours"][key], run["ref"][key])
    assert r >= PEARSON_MIN, f"{key}: Pearson {r:.6f}"


@pytest.mark.parametrize("key", ["m_obj", "m_attr", "m_pc", "m_fused"])
def test_maps_match_reference(run, key):
    ref = torch.from_numpy(run["ref"][key].astype(np.float32))
    ref = to_eval_size(ref, run["ours"][key].shape[-1]).numpy()  # branch maps resized as fusion resizes them
    r = pearson(run["ours"][key], ref)
    assert r >= PEARSON_MIN, f"{key}: Pearson {r:.6f}"


def test_metrics_match_reference(run):
    ref, ours, m = run["ref"], run["ours"], run["metrics"]
    pairs = {
        "metric_image_auroc_fused": m["image_auroc"],
        "metric_image_auroc_obj": metrics.image_auroc(ours["label"], ours["s_obj"]),
        "metric_image_auroc_pc": metrics.image_auroc(ours["label"], ours["s_pc"]),
        "metric_pixel_auroc_fused": m["pixel_auroc"],
        "metric_pro_auc_official": m["pro_auc_usad"],
    }
    for key, value in pairs.items():
        assert abs(value - float(ref[key])) <= METRIC_TOL, f"{key}: ours {value:.5f} vs reference {float(ref[key]):.5f}"


def test_maclu_clusters_match(run):
    payload = torch.load(run["tmp"] / "models" / "data" / "maclu.pt", weights_only=True)
    np.testing.assert_allclose(payload["tensors"]["centers"].numpy(), run["ref"]["kmeans_centers"], atol=1e-4)
    assert payload["info"]["fg_cluster"] == int(run["ref"]["fg_cluster"])


def test_patchcore_subset_and_bank_match(run):
    payload = torch.load(run["tmp"] / "models" / "data" / "patchcore.pt", weights_only=True)
    train_files = sorted(p.name for p in (require_golden() / "data" / "train" / "good").glob("*.png"))
    ours = [f"train/good/{train_files[i]}" for i in payload["info"]["train_indices"]]
    assert ours == list(run["ref"]["pc_train_files"])
    np.testing.assert_allclose(payload["tensors"]["bank"].numpy(), run["ref"]["pc_memory_bank"], atol=1e-4)


def test_results_written(run):
    results = run["tmp"] / "results" / "data"
    assert (results / "metrics.json").is_file()
    assert len(list((results / "heatmaps").glob("*.png"))) == 2
