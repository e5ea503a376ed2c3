"""LGST against the official code (tools/golden_csad.py): same stand-in weights and images -> same teacher
statistics, validation quantiles, maps, LGST scores, and fused CSAD scores with the patch histogram.

The fixture is $USAD_CSAD_GOLDEN when set, else tests/models/csad/golden (committed).
"""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import golden_csad as gc
from usad.models.csad import fusion as fz
from usad.models.csad.histogram import PatchHistogram
from usad.models.csad.segmentor import Segmentor, load_images, normalize


def pearson(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(2)
    folder = gc.fixture_folder()
    rec, man = gc.read_fixture(folder)
    cfg = gc.our_config(tmp_path_factory.mktemp("csad_golden"), man["seed"])
    seg = Segmentor(cfg.csad, "cpu")
    lgst = gc.our_lgst(cfg.csad, man["seed"])
    data = folder / "data" / man["category"]
    x = {k: normalize(load_images([data / f for f in files], man["image_size"]), "cpu")
         for k, files in (("train", man["files"]["train"]), ("val", man["lgst_val_order"]),
                          ("test", man["lgst_test_order"]))}
    feats = {k: seg.encode(v) for k, v in x.items()}
    lgst.set_teacher_stats(lambda: [(feats["train"][1], feats["train"][2])])
    out = {"rec": rec, "man": man, "lgst": lgst, "x": x, "feats": feats,
           "teacher": (lgst.teacher_mean.clone(), lgst.teacher_std.clone())}
    with torch.no_grad():
        out["val_raw"] = lgst.raw_maps(x["val"], feats["val"][1], feats["val"][2])
        lgst.set_quantiles(lambda: [out["val_raw"]])
        test_raw = lgst.raw_maps(x["test"], feats["test"][1], feats["test"][2])
        out["test_maps"] = lgst.normalise_maps(*test_raw)
        size = man["image_size"]
        out["test_scores"] = lgst.combine(*out["test_maps"], size)[0].double().numpy()
        out["val_scores"] = lgst.combine(*lgst.normalise_maps(*out["val_raw"]), size)[0].double().numpy()
    return out


def test_teacher_statistics(run):
    mean, std = run["teacher"]
    np.testing.assert_allclose(mean.ravel().numpy(), run["rec"]["teacher_mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std.ravel().numpy(), run["rec"]["teacher_std"], rtol=1e-4, atol=1e-5)


def test_validation_maps_and_quantiles(run):
    st, ae = run["val_raw"]
    for ours, theirs in ((st[:, 0], run["rec"]["lgst_val_raw_st"]), (ae[:, 0], run["rec"]["lgst_val_raw_ae"])):
        assert pearson(ours, theirs) >= 0.999
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(run["lgst"].quantiles.numpy(), run["rec"]["lgst_quantiles"], rtol=1e-4)


def test_test_maps_and_scores(run):
    st, ae = run["test_maps"]
    for ours, theirs in ((st[:, 0], run["rec"]["lgst_test_st"]), (ae[:, 0], run["rec"]["lgst_test_ae"])):
        assert pearson(ours, theirs) >= 0.999
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-3, atol=1e-3)
    order = run["man"]["lgst_test_order"]
    theirs = run["rec"]["fused_lgst"][[run["man"]["fused_order"].index(f) for f in order]]
    np.testing.assert_allclose(run["test_scores"], theirs, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(run["val_scores"], run["rec"]["lgst_val_scores"], rtol=1e-3, atol=1e-4)


def test_fused_scores_and_metrics(run):
    """Patch histogram (on their segmentations) + LGST, both fused on validation statistics, as theirs."""
    rec, man = run["rec"], run["man"]
    order = man["hist_segmap_order"]
    maps = {f: torch.from_numpy(m.astype(np.int64)) for f, m in zip(order, rec["hist_segmaps"])}
    hist = PatchHistogram(man["num_classes"], [256, 128], ["mahalanobis", "mahalanobis"])
    hist.fit(torch.stack([maps[f] for f in man["files"]["train"]]))
    val_files = man["lgst_val_order"]
    stats, ph_val = fz.fit_fusion(hist.scores(torch.stack([maps[f] for f in val_files])).numpy(), 0.2, 0.8, "ph")
    files = man["fused_order"]
    ph = fz.fuse(hist.scores(torch.stack([maps[f] for f in files])).numpy(), stats)
    np.testing.assert_allclose(ph, rec["fused_hist"], rtol=1e-6, atol=1e-6)
    lg = run["test_scores"][[man["lgst_test_order"].index(f) for f in files]]
    fused = (fz.zscore(ph, fz.trimmed_stats(ph_val, 0.2, 0.8)) +
             fz.zscore(lg, fz.trimmed_stats(run["val_scores"], 0.2, 0.8)))
    assert pearson(fused, rec["fused"]) >= 0.999
    np.testing.assert_allclose(fused, rec["fused"], rtol=1e-3, atol=1e-3 * np.abs(rec["fused"]).max())
    kind = np.array([f.split("/")[1] for f in files])
    for anomaly in ("logical_anomalies", "structural_anomalies"):
        keep = (kind == "good") | (kind == anomaly)
        y = (kind[keep] == anomaly).astype(int)
        assert abs(roc_auc_score(y, fused[keep]) - roc_auc_score(y, rec["fused"][keep])) <= 0.005
