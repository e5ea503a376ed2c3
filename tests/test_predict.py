"""Detection on your own images (usad.predict, usad.Detector) and the Fig. 9 panels, on the golden models."""

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from usad import Detector
from usad.figures import save_panels
from usad.predict import main as predict_main

from conftest import require_golden


@pytest.fixture(scope="module")
def detector(golden_run):
    return Detector.from_config(golden_run["config"])


def test_detector_matches_evaluation(golden_run, detector):
    ours = golden_run["ours"]
    files = [str(require_golden() / "data" / f) for f in ours["files"][:5]]
    results = detector.predict(files)
    np.testing.assert_allclose([r.score for r in results], ours["s_fused"][:5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(results[0].maps["m_fused"], ours["m_fused"][0], atol=1e-5)


def test_detector_accepts_pil_and_arrays(detector):
    path = require_golden() / "data" / "test" / "wood" / "000.png"
    pil = Image.open(path)
    by_path, by_pil, by_array = detector.predict([path, pil, np.asarray(pil.convert("RGB"))])
    assert by_pil.score == pytest.approx(by_path.score, rel=1e-6)
    assert by_array.score == pytest.approx(by_path.score, rel=1e-6)
    assert by_path.anomaly_map().shape == (256, 256)
    assert by_path.anomaly_map(original_size=False).shape == (406, 406)


def test_predict_folder_mixed_sizes_with_a_corrupt_file(golden_run, tmp_path):
    src = require_golden() / "data" / "test"
    folder = tmp_path / "belt"
    folder.mkdir()
    shutil.copy(src / "metal" / "003.png", folder / "a_square.png")
    Image.open(src / "bag" / "002.png").resize((300, 180)).save(folder / "b_wide.png")
    Image.open(src / "good" / "000.png").resize((90, 140)).save(folder / "c_tall.jpg")
    (folder / "d_corrupt.png").write_bytes((src / "good" / "001.png").read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc = predict_main(golden_run["argv"] + ["--threshold", "2.5", "--out", str(out), str(folder)])
    assert rc == 1  # one image failed, the others are done
    with open(out / "scores.csv") as f:
        rows = {r["file"].split("/")[-1]: r for r in csv.DictReader(f)}
    assert set(rows) == {"a_square.png", "b_wide.png", "c_tall.jpg", "d_corrupt.png"}
    assert rows["d_corrupt.png"]["status"].startswith("error") and "d_corrupt.png" in rows["d_corrupt.png"]["status"]
    for name, size in (("a_square", (256, 256)), ("b_wide", (300, 180)), ("c_tall", (90, 140))):
        r = rows[name + (".jpg" if name == "c_tall" else ".png")]
        assert r["status"] == "ok" and np.isfinite(float(r["score"]))
        assert r["verdict"] == ("anomalous" if float(r["score"]) > 2.5 else "normal")
        assert Image.open(out / f"{name}_overlay.png").size == size
        assert np.load(out / f"{name}_maps.npz")["m_fused"].shape == (406, 406)
    # the square test image scores as in the evaluation
    i = list(golden_run["ours"]["files"]).index("test/metal/003.png")
    assert float(rows["a_square.png"]["score"]) == pytest.approx(float(golden_run["ours"]["s_fused"][i]), rel=1e-4)


def test_panels(golden_run, tmp_path):
    ours = golden_run["ours"]

    class Preds:  # the fields save_panels reads, from the saved predictions file
        files = list(ours["files"])
        mask = ours["mask"]
        maps = {k: ours[k] for k in ("m_obj", "m_attr", "m_pc", "m_fused")}

    paths = save_panels(tmp_path, require_golden() / "data", Preds, [0, 5])
    assert [p.name for p in paths] == ["bag_002_panel.png", "good_003_panel.png"]
    w, h = Image.open(paths[0]).size
    assert (w, h) == (6 * 406, 406 + 28)
