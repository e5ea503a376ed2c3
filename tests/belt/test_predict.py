"""Detection on your own images (usad.predict, usad.Detector), with the models trained on the golden fixture."""

import csv
import json
import logging
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from usad import Detector
from usad.core.data.dataset import DatasetError
from usad.core.cli import run_cli
from usad.core.panels import BAR_HEIGHT
from usad.belt.predict import gather, main as predict_main, unique_stems
from usad.core.outputs import overlay

from conftest import require_golden
from test_figures import assert_jet

EVAL = 406  # data.eval_size of the golden config


@pytest.fixture(scope="module")
def detector(golden_run):
    return Detector.from_config(golden_run["config"])


def eval_score(golden_run, rel: str, key: str = "s_fused") -> float:
    ours = golden_run["ours"]
    return float(ours[key][list(ours["files"]).index(rel)])


def test_detector_matches_evaluation(golden_run, detector):
    ours = golden_run["ours"]
    idx = [0, 2, 4, 5, 7]  # anomalous and normal test images
    results = detector.predict([require_golden() / "data" / ours["files"][i] for i in idx])
    for key, attr in (("s_fused", "score"), ("s_obj", "s_obj"), ("s_attr", "s_attr"), ("s_pc", "s_pc")):
        np.testing.assert_allclose([getattr(r, attr) for r in results], ours[key][idx], atol=1e-4, err_msg=key)
    for r, i in zip(results, idx):
        for key in ("m_fused", "m_obj", "m_attr", "m_pc"):
            np.testing.assert_allclose(r.maps[key], ours[key][i], atol=1e-4, err_msg=key)


def test_detector_accepts_paths_pil_and_arrays(detector):
    path = require_golden() / "data" / "test" / "wood" / "000.png"
    pil = Image.open(path)
    side = pil.size[0]  # the fixture's images are square
    rgb = np.asarray(pil.convert("RGB"))
    by_path, by_str, by_pil, by_array, by_rgba = detector.predict(
        [path, str(path), pil, rgb, np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])])
    for r in (by_str, by_pil, by_array, by_rgba):
        assert r.score == pytest.approx(by_path.score, abs=1e-5)
        np.testing.assert_allclose(r.maps["m_fused"], by_path.maps["m_fused"], atol=1e-5)
    assert by_path.original_size == (side, side)
    assert by_path.anomaly_map().shape == (side, side)
    assert by_path.anomaly_map(original_size=False).shape == (EVAL, EVAL)
    # one image without a list; a grayscale array is read as RGB with three equal channels
    gray = rgb.mean(axis=2).astype(np.uint8)
    (single,) = detector.predict(path)
    (by_gray,) = detector.predict([gray])
    (by_gray_rgb,) = detector.predict([np.repeat(gray[..., None], 3, axis=2)])
    assert single.score == pytest.approx(by_path.score, abs=1e-5)
    assert by_gray.score == pytest.approx(by_gray_rgb.score, abs=1e-5)
    assert detector.predict([]) == []


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 2), np.uint8), 3, "no_such_file.png"])
def test_detector_rejects_bad_inputs_clearly(detector, bad):
    with pytest.raises(DatasetError, match="image|array"):
        detector.predict([bad])


def test_non_square_image_is_stretched_to_the_square_eval_size(detector):
    """A 300 x 180 image scores as that image stretched (bicubic) to eval_size x eval_size; its map comes back 300 x 180."""
    img = Image.open(require_golden() / "data" / "test" / "bag" / "000.png").convert("RGB").resize((300, 180), Image.BICUBIC)
    stretched = img.resize((EVAL, EVAL), Image.BICUBIC)
    wide, square = detector.predict([img, stretched])
    assert wide.original_size == (300, 180) and square.original_size == (EVAL, EVAL)
    assert wide.score == pytest.approx(square.score, abs=1e-5)
    np.testing.assert_allclose(wide.maps["m_fused"], square.maps["m_fused"], atol=1e-5)
    m = wide.anomaly_map()
    assert m.shape == (180, 300)
    # bilinear resize back, brute force with align_corners=False sampling
    y, x = (np.arange(180) + 0.5) * EVAL / 180 - 0.5, (np.arange(300) + 0.5) * EVAL / 300 - 0.5
    y, x = np.clip(y, 0, EVAL - 1), np.clip(x, 0, EVAL - 1)
    y0, x0 = np.minimum(np.floor(y).astype(int), EVAL - 2), np.minimum(np.floor(x).astype(int), EVAL - 2)
    wy, wx = (y - y0)[:, None], (x - x0)[None, :]
    f = wide.maps["m_fused"].astype(np.float64)
    ref = ((1 - wy) * (1 - wx) * f[np.ix_(y0, x0)] + (1 - wy) * wx * f[np.ix_(y0, x0 + 1)]
           + wy * (1 - wx) * f[np.ix_(y0 + 1, x0)] + wy * wx * f[np.ix_(y0 + 1, x0 + 1)])
    np.testing.assert_allclose(m, ref, atol=1e-3 * f.max())


@pytest.fixture(scope="module")
def predicted(golden_run, tmp_path_factory):
    """usad.predict on a folder of mixed-size images, one of them corrupt, in batches of 3."""
    src = require_golden() / "data" / "test"
    folder = tmp_path_factory.mktemp("belt")
    (folder / "sub").mkdir()
    (folder / ".hidden").mkdir()
    shutil.copy(src / "wood" / "000.png", folder / "a_square.png")                        # anomalous, SIDE x SIDE
    shutil.copy(src / "good" / "003.png", folder / "e_normal.png")                        # normal, SIDE x SIDE
    Image.open(src / "bag" / "000.png").resize((300, 180)).save(folder / "b_wide.png")
    Image.open(src / "good" / "000.png").resize((90, 140)).save(folder / "sub" / "c_tall.jpg")
    Image.open(src / "good" / "001.png").convert("L").resize((64, 64)).save(folder / "sub" / "e_normal.png")  # same stem
    Image.new("RGB", (120, 80)).save(folder / "f_black.png")                            # a blank frame
    (folder / "d_corrupt.png").write_bytes((src / "good" / "001.png").read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image")
    shutil.copy(src / "good" / "002.png", folder / ".hidden" / "skip.png")
    shutil.copy(src / "good" / "002.png", folder / ".skip.png")
    threshold = (eval_score(golden_run, "test/wood/000.png") + eval_score(golden_run, "test/good/003.png")) / 2
    out = tmp_path_factory.mktemp("predict")
    argv = golden_run["argv"] + ["--set", "data.batch_size=3", "--threshold", str(threshold), "--out", str(out), str(folder)]
    rc = predict_main(argv)
    with open(out / "scores.csv") as f:
        rows = {r["file"].removeprefix(str(folder) + "/"): r for r in csv.DictReader(f)}
    return {"rc": rc, "rows": rows, "out": out, "folder": folder, "threshold": threshold}


SIDE = 128  # the golden fixture's image size (tests/golden/manifest.json)
OK_FILES = {"a_square.png": (SIDE, SIDE), "b_wide.png": (300, 180), "e_normal.png": (SIDE, SIDE),
            "f_black.png": (120, 80), "sub/c_tall.jpg": (90, 140), "sub/e_normal.png": (64, 64)}


def output_stem(predicted, name: str) -> str:
    """File stem, with the parent folder for the two e_normal.png (same stem)."""
    parent = predicted["folder"].name if "/" not in name else name.split("/")[0]
    return f"{parent}_e_normal" if name.endswith("e_normal.png") else name.split("/")[-1].rsplit(".", 1)[0]


def test_predict_folder_scan_and_exit_status(predicted):
    assert predicted["rc"] == 1  # one image failed, the others are done
    assert set(predicted["rows"]) == set(OK_FILES) | {"d_corrupt.png"}  # hidden and non-image files ignored
    assert list(predicted["rows"]) == sorted(predicted["rows"], key=lambda f: f.split("/"))


def test_corrupt_file_is_reported_and_the_others_are_kept(predicted, capsys):
    bad = predicted["rows"]["d_corrupt.png"]
    assert bad["status"].startswith("error: cannot read image") and "d_corrupt.png" in bad["status"]
    assert bad["score"] == "" and bad["verdict"] == ""
    assert not list(predicted["out"].glob("d_corrupt*"))
    js = {r["file"].removeprefix(str(predicted["folder"]) + "/"): r
          for r in json.loads((predicted["out"] / "scores.json").read_text())}
    assert js["d_corrupt.png"]["score"] is None and js["d_corrupt.png"]["status"] == bad["status"]
    for name in OK_FILES:
        assert js[name]["status"] == "ok" and js[name]["score"] == pytest.approx(float(predicted["rows"][name]["score"]))


@pytest.mark.parametrize("name", sorted(OK_FILES))
def test_outputs_per_image(predicted, name):
    row, out = predicted["rows"][name], predicted["out"]
    assert row["status"] == "ok"
    scores = [float(row[k]) for k in ("score", "s_obj", "s_attr", "s_pc")]
    assert np.isfinite(scores).all()
    maps = np.load(out / f"{output_stem(predicted, name)}_maps.npz")
    assert sorted(maps.files) == ["m_attr", "m_fused", "m_obj", "m_pc"]
    assert all(maps[k].shape == (EVAL, EVAL) and np.isfinite(maps[k]).all() for k in maps.files)
    # the overlay is the fused map, resized to the original width x height, over the original image
    original = np.asarray(Image.open(predicted["folder"] / name).convert("RGB"))
    written = cv2.cvtColor(cv2.imread(str(out / f"{output_stem(predicted, name)}_overlay.png")), cv2.COLOR_BGR2RGB)
    assert written.shape[1::-1] == OK_FILES[name]
    expected = overlay(original, cv2.resize(maps["m_fused"], OK_FILES[name], interpolation=cv2.INTER_LINEAR))
    assert np.abs(written.astype(int) - expected).max() <= 1
    # the maps PNG: the input as the detector saw it (stretched, bicubic) and each map on its range over this image
    row = cv2.cvtColor(cv2.imread(str(out / f"{output_stem(predicted, name)}_maps.png")), cv2.COLOR_BGR2RGB)
    assert row.shape == (EVAL + 2 * BAR_HEIGHT, 5 * EVAL, 3)
    tile = lambda k: row[BAR_HEIGHT:BAR_HEIGHT + EVAL, k * EVAL:(k + 1) * EVAL]
    np.testing.assert_array_equal(tile(0), np.asarray(Image.fromarray(original).resize((EVAL, EVAL), Image.BICUBIC)))
    for k, key in enumerate(("m_obj", "m_attr", "m_pc", "m_fused")):
        m = maps[key]
        assert_jet(tile(1 + k), m, min(0.0, float(m.min())), max(float(m.max()), min(0.0, float(m.min())) + 1e-12), key)


def test_scores_and_verdicts(golden_run, predicted):
    rows, t = predicted["rows"], predicted["threshold"]
    # unchanged test images score exactly as in the evaluation
    assert float(rows["a_square.png"]["score"]) == pytest.approx(eval_score(golden_run, "test/wood/000.png"), abs=1e-4)
    assert float(rows["e_normal.png"]["score"]) == pytest.approx(eval_score(golden_run, "test/good/003.png"), abs=1e-4)
    assert rows["a_square.png"]["verdict"] == "anomalous" and rows["e_normal.png"]["verdict"] == "normal"
    for name in OK_FILES:
        assert rows[name]["verdict"] == ("anomalous" if float(rows[name]["score"]) > t else "normal")


def test_printed_table(golden_run, tmp_path, capsys):
    image = require_golden() / "data" / "test" / "good" / "003.png"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    rc = predict_main(golden_run["argv"] + ["--out", str(tmp_path / "o"), str(image), str(bad)])
    text = capsys.readouterr().out
    assert rc == 1
    assert "score" in text and "s_attr" in text
    assert f"{eval_score(golden_run, 'test/good/003.png'):.4f}" in text
    assert f"{bad}" in text and "error: cannot read image" in text
    assert (tmp_path / "o" / "003_overlay.png").is_file()


def test_config_and_input_errors_exit_2(golden_run, tmp_path):
    image = str(require_golden() / "data" / "test" / "good" / "003.png")
    no_models = golden_run["argv"] + ["--set", f"paths.models={tmp_path / 'none'}", "--out", str(tmp_path / "o"), image]
    assert run_cli(predict_main, no_models) == 2
    assert run_cli(predict_main, golden_run["argv"] + [str(tmp_path / "missing.png")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(predict_main, golden_run["argv"] + [str(empty)]) == 2
    assert not (tmp_path / "o").exists()


def test_skipped_files_are_reported(tmp_path, caplog):
    src = require_golden() / "data" / "test" / "good" / "000.png"
    shutil.copy(src, tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    shutil.copy(src, tmp_path / "sub" / "b.JPG2")
    for k in range(6):
        (tmp_path / f"notes{k}.txt").write_text("not an image")
    (tmp_path / ".hidden.txt").write_text("hidden: ignored without a word")
    with caplog.at_level(logging.WARNING, logger="usad"):
        assert gather([str(tmp_path)]) == [tmp_path / "a.png"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "skipped 7 file(s) without an image extension" in line and ".png" in line
    assert "notes0.txt, notes1.txt, notes2.txt, notes3.txt, notes4.txt, ..." in line and ".hidden" not in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usad"):
        gather([str(tmp_path / "sub")])
    assert "skipped 1 file(s)" in caplog.text and "b.JPG2" in caplog.text


def test_unique_output_names():
    from pathlib import Path
    files = [Path("x/a.png"), Path("y/a.png"), Path("x/a.jpg"), Path("b.png"), Path("x/a.png")]
    names = unique_stems(files)
    assert len(set(names)) == len(names)
    assert names[3] == "b"
