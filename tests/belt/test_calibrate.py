"""Operating point: held-out normals, python -m usad.calibrate, predict with verdicts / masks / boxes, and the
operating-point metrics of the evaluation, on tiny random backbones trained once for this module."""

import csv
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from usad import Detector
from usad.core.artifacts import ArtifactError, save_artifact
from usad.belt.calibrate import main as calibrate_main
from usad.core.config import with_overrides
from usad.core.data.dataset import holdout_split, train_samples
from usad.core.data.synthetic import make_synthetic_coalad
from usad.belt.decisions import (BOX_COLOUR, OperatingPointError, format_operating_point, model_hashes,
                            operating_point_path, operating_point_section, score_config, write_operating_point)
from usad.core.cli import run_cli
from usad.models.usad.branches import load_branches, model_path, train_branch
from usad.models.usad.inference import evaluate
from usad.belt.predict import main as predict_main

from conftest import config_argv, tiny_config
from test_decisions import EIGHT, assert_same_boxes, reference_boxes

SMALL = ("maclu.image_size=70", "ma2patch.image_size=84", "patchcore.image_size=64", "data.eval_size=84",
         "patchcore.coreset_ratio=0.1")
HOLDOUT = ("data.holdout_ratio=0.5",)
N_TRAIN, RATE = 24, 0.2            # 12 held-out normals; k = floor(0.2 * 12) = 2 allowed false alarms


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic CoalAD and the three tiny branches fitted with half of train/good held out."""
    tmp = tmp_path_factory.mktemp("calibrate")
    coal = make_synthetic_coalad(tmp / "data", n_train=N_TRAIN, n_test_good=4, n_test_anomalous=4, size=64, seed=3)
    cfg = tiny_config(tmp, coal.parent, "coal_ad", *SMALL, *HOLDOUT)
    for b in ("maclu", "ma2patch", "patchcore"):
        train_branch(b, cfg)
    fitted, held = holdout_split(train_samples(coal), 0.5, cfg.seed)
    return {"tmp": tmp, "coal": coal, "cfg": cfg, "argv": config_argv(cfg, tmp),
            "fitted": [s.path for s in fitted], "held": [s.path for s in held]}


@pytest.fixture(scope="module")
def calibrated(trained):
    """python -m usad.calibrate --holdout at RATE, and usad.predict with it on the held-out images."""
    assert run_cli(calibrate_main, trained["argv"] + ["--holdout", "--false-alarm-rate", str(RATE)]) == 0
    op = json.loads(operating_point_path(trained["cfg"]).read_text())
    folder = trained["tmp"] / "held_out"
    folder.mkdir()
    for p in trained["held"]:
        shutil.copy(p, folder / p.name)
    out = trained["tmp"] / "predict_held_out"
    assert run_cli(predict_main, trained["argv"] + ["--out", str(out), str(folder)]) == 0
    rows = json.loads((out / "scores.json").read_text())
    return {"op": op, "rows": rows, "out": out}


def test_holdout_split_is_seeded_disjoint_and_off_by_default(trained):
    samples = train_samples(trained["coal"])
    fitted, held = holdout_split(samples, 0.5, 22)
    assert len(held) == N_TRAIN // 2 and {s.path for s in fitted} | {s.path for s in held} == {s.path for s in samples}
    assert not {s.path for s in fitted} & {s.path for s in held}
    assert [s.path for s in fitted] == sorted(s.path for s in fitted)  # file order kept
    assert holdout_split(samples, 0.5, 22) == (fitted, held) and holdout_split(samples, 0.5, 23)[1] != held
    assert holdout_split(samples, 0.0, 22) == (samples, [])  # the paper's training set
    assert len(holdout_split(samples, 0.1, 22)[1]) == round(0.1 * N_TRAIN)
    # PatchCore's subset indexes the fitted images only
    info = torch.load(model_path(trained["cfg"], "patchcore"), weights_only=True)["info"]
    assert max(info["train_indices"]) < len(fitted)


def test_a_model_fitted_with_another_holdout_is_refused(trained):
    cfg, cpu = trained["cfg"], torch.device("cpu")
    with pytest.raises(ArtifactError, match=r"data\.holdout_ratio: file has 0\.5, config has 0\.0"):
        load_branches(with_overrides(cfg, "data.holdout_ratio=0.0"), cpu)
    with pytest.raises(ArtifactError, match=r"data\.holdout_seed: file has 22, config has 23"):
        load_branches(with_overrides(cfg, "seed=23"), cpu)  # another seed holds out other images
    assert set(load_branches(cfg, cpu)) == {"maclu", "ma2patch", "patchcore"}


def test_a_model_file_from_before_the_holdout_key_loads_as_holdout_0(trained, tmp_path):
    cfg = with_overrides(trained["cfg"], f"paths.models={tmp_path}", "data.holdout_ratio=0.0")
    for b in ("maclu", "ma2patch", "patchcore"):
        payload = torch.load(model_path(trained["cfg"], b), weights_only=True)
        old = {k: v for k, v in payload["fit_config"].items() if not k.startswith("data.holdout")}
        save_artifact(model_path(cfg, b), b, old, payload["tensors"], payload["info"])
    assert set(load_branches(cfg, torch.device("cpu"))) == {"maclu", "ma2patch", "patchcore"}
    with pytest.raises(ArtifactError, match=r"data\.holdout_ratio: file has 0\.0, config has 0\.5"):
        load_branches(with_overrides(cfg, "data.holdout_ratio=0.5"), torch.device("cpu"))


def test_operating_point_file(trained, calibrated):
    op, n = calibrated["op"], N_TRAIN // 2
    assert op["n_images"] == n and op["false_alarm_rate"] == RATE and op["allowed_false_alarms"] == 2
    assert {img["file"] for img in op["images"]} == {str(p.resolve()) for p in trained["held"]}
    assert op["n_training_images"] == 0
    assert op["models"] == model_hashes(trained["cfg"])
    for b in ("maclu", "ma2patch", "patchcore"):
        assert op["models"][b]["sha256"] == torch.load(model_path(trained["cfg"], b), weights_only=True)["sha256"]
    assert op["score_config"] == score_config(trained["cfg"]) and op["score_config"]["maclu.tau"] == 1.14


def test_calibrated_rate_holds_on_the_calibration_images(calibrated):
    """Predict on the calibration images with the operating point: the share called anomalous is within 1/n
    below the rate asked, and as many images (here, without ties) get a non-empty mask."""
    rows, op, out = calibrated["rows"], calibrated["op"], calibrated["out"]
    n = len(rows)
    scores = np.array([r["score"] for r in rows])
    anomalous = [r["verdict"] == "anomalous" for r in rows]
    assert all(r["verdict"] == ("anomalous" if r["score"] > op["image_threshold"] else "normal") for r in rows)
    assert RATE - 1 / n < sum(anomalous) / n <= RATE
    assert op["image_threshold"] == pytest.approx(np.sort(scores)[::-1][2], abs=1e-4)  # the 3rd largest of 12
    with_mask = [cv2.imread(str(out / f"{r['file'].rsplit('/', 1)[1][:-4]}_mask.png"), cv2.IMREAD_UNCHANGED).any()
                 for r in rows]
    assert RATE - 1 / n < sum(with_mask) / n <= RATE
    assert [bool(r["boxes"]) for r in rows] == with_mask


def test_too_few_images_are_refused(trained, tmp_path, caplog):
    out = tmp_path / "op.json"
    with caplog.at_level(logging.ERROR, logger="usad"):
        assert run_cli(calibrate_main, trained["argv"] + ["--holdout", "--out", str(out)]) == 2  # 12 images, rate 0.01
    assert "12 calibration image(s) for a false-alarm rate of 0.01: at least 100 normal images are needed" in caplog.text
    assert not out.exists()


def test_anomalous_test_images_are_refused(trained, tmp_path, caplog):
    out = tmp_path / "op.json"
    with caplog.at_level(logging.ERROR, logger="usad"):
        rc = run_cli(calibrate_main, trained["argv"] + ["--images", str(trained["coal"] / "test"), "--false-alarm-rate",
                                                        "0.5", "--out", str(out)])
    assert rc == 2 and "4 calibration image(s) are anomalous test images" in caplog.text and "normal images only" in caplog.text
    assert not out.exists()


def test_holdout_without_a_holdout_is_refused(trained, tmp_path, caplog):
    cfg = with_overrides(trained["cfg"], "data.holdout_ratio=0.0")
    with caplog.at_level(logging.ERROR, logger="usad"):
        assert run_cli(calibrate_main, config_argv(cfg, tmp_path) + ["--holdout"]) == 2
    assert "data.holdout_ratio is 0" in caplog.text


def test_training_images_are_warned_about(trained, tmp_path, caplog):
    """The fitted images themselves, and a renamed copy of one (same content), are named as training images;
    held-out images are not."""
    (tmp_path / "imgs").mkdir()
    shutil.copy(trained["fitted"][0], tmp_path / "imgs" / "renamed_copy.png")
    shutil.copy(trained["held"][0], tmp_path / "imgs" / "held.png")
    out = tmp_path / "op.json"
    with caplog.at_level(logging.WARNING, logger="usad"):
        rc = run_cli(calibrate_main, trained["argv"] + ["--images", str(tmp_path / "imgs"), str(trained["fitted"][1]),
                                                        "--false-alarm-rate", "0.5", "--out", str(out)])
    assert rc == 0
    assert "2 of 3 calibration images are training images the models were fitted on" in caplog.text
    assert "renamed_copy.png" in caplog.text and str(trained["fitted"][1]) in caplog.text
    assert "held.png" not in caplog.text and "biased low" in caplog.text
    assert json.loads(out.read_text())["n_training_images"] == 2


@pytest.fixture(scope="module")
def other_models(trained):
    """The same config trained on another synthetic dataset: other model files."""
    tmp = trained["tmp"] / "other"
    coal = make_synthetic_coalad(tmp / "data", n_train=N_TRAIN, n_test_good=2, n_test_anomalous=2, size=64, seed=9)
    cfg = tiny_config(tmp, coal.parent, "coal_ad", *SMALL, *HOLDOUT)
    for b in ("maclu", "ma2patch", "patchcore"):
        train_branch(b, cfg)
    return cfg


def test_an_operating_point_of_other_models_is_refused(trained, calibrated, other_models, tmp_path, caplog):
    op_file = operating_point_path(trained["cfg"])
    image = str(trained["held"][0])
    with pytest.raises(OperatingPointError, match="was calibrated with other model files .*maclu: calibrated with "):
        Detector.from_config(other_models, op_file)
    with caplog.at_level(logging.ERROR, logger="usad"):
        rc = run_cli(predict_main, config_argv(other_models, tmp_path) + ["--operating-point", str(op_file), "--out",
                                                                          str(tmp_path / "o"), image])
    assert rc == 2 and "Recalibrate with `python -m usad.calibrate" in caplog.text
    assert not (tmp_path / "o").exists()
    # the default file of other models, copied from these: refused as well
    shutil.copy(op_file, operating_point_path(other_models))
    try:
        with pytest.raises(OperatingPointError, match="other model files"):
            Detector.from_config(other_models)
    finally:
        operating_point_path(other_models).unlink()


@pytest.mark.parametrize("change, message", [
    ({"tau": "maclu.tau=1.2"}, r"other scoring settings \(maclu\.tau: file has 1\.14, config has 1\.2\)"),
    ({"content": "not json"}, "is not a readable operating point file"),
    ({"content": '{"format": "usad-operating-point/1", "image_threshold": "high"}'},
     "image_threshold, pixel_threshold, false_alarm_rate, n_images, models, score_config missing or of the wrong type"),
    ({"missing": True}, "does not exist: create it with `python -m usad.calibrate"),
])
def test_bad_operating_points_give_one_message(trained, calibrated, tmp_path, caplog, change, message):
    cfg, op_file = trained["cfg"], tmp_path / "op.json"
    shutil.copy(operating_point_path(cfg), op_file)
    if "tau" in change:
        cfg = with_overrides(cfg, change["tau"])
    if "content" in change:
        op_file.write_text(change["content"])
    if "missing" in change:
        op_file.unlink()
    with caplog.at_level(logging.ERROR, logger="usad"):
        rc = run_cli(predict_main, config_argv(cfg, tmp_path) + ["--operating-point", str(op_file), "--out",
                                                                 str(tmp_path / "o"), str(trained["held"][0])])
    assert rc == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(op_file) in line and __import__("re").search(message, line), line


@pytest.fixture(scope="module")
def predicted(trained, calibrated):
    """Predict with an operating point whose pixel threshold gives masks (a low one), on square and
    non-square images, with and without --min-area."""
    cfg, tmp = trained["cfg"], trained["tmp"]
    op = dict(calibrated["op"])
    maxima = sorted(img["map_max"] for img in op["images"])
    op["pixel_threshold"] = float(np.mean(maxima[:2]))  # below most maxima: masks on most images
    op_file = tmp / "low_pixel_threshold.json"
    write_operating_point(op_file, {k: v for k, v in op.items() if k not in ("format", "created")})
    folder = tmp / "mixed"
    folder.mkdir()
    src = sorted((trained["coal"] / "test").rglob("*.png"))
    for p in src[:3]:
        shutil.copy(p, folder / f"{p.parent.name}_{p.name}")
    Image.open(src[4]).resize((150, 70), Image.BICUBIC).save(folder / "wide.png")
    Image.open(src[5]).resize((60, 110), Image.BICUBIC).save(folder / "tall.png")
    runs = {}
    for name, extra in (("all", []), ("min_area", ["--min-area", "40"]), ("threshold", ["--threshold=-1e9"])):
        out = tmp / f"predict_{name}"
        assert run_cli(predict_main, trained["argv"] + ["--operating-point", str(op_file), "--out", str(out),
                                                        *extra, str(folder)]) == 0
        with open(out / "scores.csv") as f:
            csv_rows = list(csv.DictReader(f))
        runs[name] = {"out": out, "rows": json.loads((out / "scores.json").read_text()), "csv": csv_rows}
    return {"runs": runs, "folder": folder, "op": op}


def outputs(run, row):
    stem = row["file"].rsplit("/", 1)[1].rsplit(".", 1)[0]
    mask = cv2.imread(str(run["out"] / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.cvtColor(cv2.imread(str(run["out"] / f"{stem}_overlay.png")), cv2.COLOR_BGR2RGB)
    return mask, overlay, np.load(run["out"] / f"{stem}_maps.npz")["m_fused"]


def test_masks_and_boxes_at_the_image_size(predicted):
    run, op = predicted["runs"]["all"], predicted["op"]
    n_boxes = 0
    for row, csv_row in zip(run["rows"], run["csv"]):
        mask, overlay, m_eval = outputs(run, row)
        w, h = Image.open(row["file"]).size
        assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        # the mask is the fused map at the image's own size above the pixel threshold
        amap = cv2.resize(m_eval, (w, h), interpolation=cv2.INTER_LINEAR)
        expected = amap > op["pixel_threshold"]
        assert np.mean((mask > 0) != expected) < 1e-3  # float32 round-off at the threshold only
        # the boxes are the mask's connected components, in the image's own pixels
        assert_same_boxes(row["boxes"], reference_boxes(mask > 0, amap))
        assert json.loads(csv_row["boxes"]) == row["boxes"]
        assert row["verdict"] == ("anomalous" if row["score"] > op["image_threshold"] else "normal")
        for b in row["boxes"]:  # drawn on the overlay: the box's top-left corner is the box colour
            assert 0 <= b["x0"] < b["x1"] <= w and 0 <= b["y0"] < b["y1"] <= h
            assert tuple(overlay[b["y0"], b["x0"]]) == BOX_COLOUR
        n_boxes += len(row["boxes"])
    assert n_boxes >= 3  # the test has boxes to check, on the non-square images too
    assert any(r["boxes"] for r in run["rows"] if r["file"].endswith(("wide.png", "tall.png")))


def test_min_area_drops_small_regions(predicted):
    every, big = predicted["runs"]["all"]["rows"], predicted["runs"]["min_area"]["rows"]
    assert sum(len(r["boxes"]) for r in big) < sum(len(r["boxes"]) for r in every)
    for row_all, row_big in zip(every, big):
        assert row_big["boxes"] == [b for b in row_all["boxes"] if b["area"] >= 40]
        mask, _, _ = outputs(predicted["runs"]["min_area"], row_big)
        labels, n = ndimage.label(mask > 0, structure=EIGHT)
        assert n == len(row_big["boxes"]) and (n == 0 or np.bincount(labels.ravel())[1:].min() >= 40)


def test_threshold_overrides_the_image_threshold(predicted):
    runs = predicted["runs"]
    assert all(r["verdict"] == "anomalous" for r in runs["threshold"]["rows"])  # --threshold -1e9
    assert [r["boxes"] for r in runs["threshold"]["rows"]] == [r["boxes"] for r in runs["all"]["rows"]]


def test_predict_without_an_operating_point_keeps_its_old_outputs(trained, tmp_path):
    cfg = with_overrides(trained["cfg"], f"paths.models={tmp_path / 'models'}")
    (tmp_path / "models").mkdir()
    shutil.copytree(model_path(trained["cfg"], "maclu").parent, tmp_path / "models" / "coal_ad")
    operating_point_path(cfg).unlink()
    out = tmp_path / "o"
    assert run_cli(predict_main, config_argv(cfg, tmp_path) + ["--out", str(out), str(trained["held"][0])]) == 0
    (row,) = json.loads((out / "scores.json").read_text())
    assert row["verdict"] is None and row["boxes"] is None and not list(out.glob("*_mask.png"))


def test_evaluation_at_the_operating_point(trained, calibrated, capsys):
    """test_fusion.py's operating_point section (metrics.json and the printed report) against a brute-force
    computation from the same predictions."""
    import test_fusion

    cfg = trained["cfg"]
    test_fusion.main(trained["argv"] + ["--heatmaps", "0", "--panels", "0"])
    printed = capsys.readouterr().out
    section = json.loads((trained["tmp"] / "results" / "coal_ad" / "metrics.json").read_text())["metrics"]["operating_point"]
    preds = evaluate(cfg)
    assert section == json.loads(json.dumps(operating_point_section(cfg, preds)))
    assert format_operating_point(section) in printed
    op = calibrated["op"]
    assert section["image_threshold"] == op["image_threshold"] and section["n_calibration_images"] == 12
    called = preds.scores["s_fused"] > op["image_threshold"]
    labels = preds.label == 1
    tp, fp = int((called & labels).sum()), int((called & ~labels).sum())
    assert (section["image"]["tp"], section["image"]["fp"]) == (tp, fp)
    assert section["image"]["false_alarm_rate"] == fp / int((~labels).sum())
    pred = preds.maps["m_fused"] > op["pixel_threshold"]
    gt = preds.mask.astype(bool)
    union = (pred | gt).sum()
    assert section["pixel"]["iou"] == (pytest.approx((pred & gt).sum() / union) if union else None)
    assert section["region"]["n_regions"] == sum(ndimage.label(g, structure=EIGHT)[1] for g in gt)
    assert section["calibration_images_in_test"] == 0
    # none without a file; a warning, not an error, when the file belongs to other models
    assert operating_point_section(with_overrides(cfg, "paths.models=/nonexistent"), preds) is None
    assert operating_point_section(with_overrides(cfg, "fusion.lambda_m=2.0"), preds) is None
