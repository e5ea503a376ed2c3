"""Fig. 9-style panels: tiles, order and colour ranges recomputed independently from the evaluation outputs."""

import cv2
import numpy as np
import pytest
from PIL import Image

import test_fusion
import usad.experiments.evaluation
from usad.experiments.evaluation import pick_images
from usad.core.panels import BAR_HEIGHT, save_panels
from usad.models.usad.inference import Predictions

from conftest import require_golden

MAP_KEYS = ("m_obj", "m_attr", "m_pc", "m_fused")


def predictions(files, label, maps, mask) -> Predictions:
    return Predictions(files=list(files), label=np.asarray(label), maps=dict(maps), mask=np.asarray(mask))


def read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


JET = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1].astype(int)  # level -> RGB


def assert_jet(tile: np.ndarray, m: np.ndarray, lo: float, hi: float, key: str) -> None:
    """The tile is ``m`` coloured linearly on [lo, hi] (clipped) with OpenCV's JET, to one of 256 levels
    (a neighbouring level is accepted where float rounding puts a value on the boundary)."""
    level = np.floor(np.clip((m.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255).astype(int)
    err = np.min([np.abs(tile.astype(int) - JET[np.clip(level + d, 0, 255)]).max(-1) for d in (-1, 0, 1)], axis=0)
    assert err.max() == 0, f"{key}: {int((err > 0).sum())} pixels off the colour scale"


def tiles(panel: np.ndarray, size: int) -> list[np.ndarray]:
    """The six image areas of a panel (without the text strips)."""
    return [panel[BAR_HEIGHT:BAR_HEIGHT + size, k * size:(k + 1) * size] for k in range(6)]


@pytest.fixture(scope="module")
def golden_preds(golden_run):
    ours = golden_run["ours"]
    return predictions(ours["files"], ours["label"], {k: ours[k] for k in MAP_KEYS}, ours["mask"])


def test_panels_on_golden(golden_preds, tmp_path):
    root = require_golden() / "data"
    size = golden_preds.maps["m_fused"].shape[-1]
    paths = save_panels(tmp_path, root, golden_preds, [0, 4])  # an anomalous and a normal image
    assert [p.name for p in paths] == ["bag_000_panel.png", "good_003_panel.png"]
    for i, path in zip([0, 4], paths):
        panel = read_rgb(path)
        assert panel.shape == (size + 2 * BAR_HEIGHT, 6 * size, 3)
        t = tiles(panel, size)
        image = np.asarray(Image.open(root / golden_preds.files[i]).convert("RGB").resize((size, size), Image.BICUBIC))
        np.testing.assert_array_equal(t[0], image)
        np.testing.assert_array_equal(t[1], np.repeat(golden_preds.mask[i][..., None] * 255, 3, axis=2))
        for k, key in enumerate(MAP_KEYS):
            every = golden_preds.maps[key]  # one range per map type over the whole test set
            assert_jet(t[2 + k], every[i], min(0.0, float(every.min())), float(every.max()), key)
    # the anomalous image's fused map is hotter (more red) than the normal image's on the shared range
    red = [tiles(read_rgb(p), size)[5][..., 0].mean() for p in paths]
    assert red[0] > red[1]


def test_panels_small_non_square_sources(tmp_path):
    """Tiny evaluation size (titles shrink to fit); source images of other sizes are resized like the maps."""
    root = tmp_path / "cat"
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "rope").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 50, 3), np.uint8)).save(root / "test" / "good" / "000.png")
    Image.fromarray(rng.integers(0, 255, (48, 48), np.uint8)).save(root / "test" / "rope" / "001.png")
    size = 40
    maps = {k: rng.random((2, size, size)).astype(np.float32) * s for k, s in zip(MAP_KEYS, (1.0, 30.0, 1.0, 1e-3))}
    maps["m_attr"][0, 0, 0] = -2.0  # a negative value widens the range below 0
    mask = np.zeros((2, size, size), np.uint8)
    mask[1, 10:20, 5:15] = 1
    preds = predictions(["test/good/000.png", "test/rope/001.png"], [0, 1], maps, mask)
    paths = save_panels(tmp_path / "out", root, preds, [1])
    assert [p.name for p in paths] == ["rope_001_panel.png"]
    panel = read_rgb(paths[0])
    assert panel.shape == (size + 2 * BAR_HEIGHT, 6 * size, 3)
    t = tiles(panel, size)
    assert (t[1][10:20, 5:15] == 255).all() and t[1].sum() == 10 * 10 * 3 * 255
    for k, key in enumerate(MAP_KEYS):
        lo, hi = min(0.0, float(maps[key].min())), float(maps[key].max())
        assert_jet(t[2 + k], maps[key][1], lo, hi, key)
    assert (panel[:BAR_HEIGHT] < 128).any() and (panel[-BAR_HEIGHT:, 2 * size:] < 128).any()  # titles and ranges drawn


def test_panels_need_the_branch_maps(golden_preds, tmp_path):
    fused_only = predictions(golden_preds.files, golden_preds.label, {"m_fused": golden_preds.maps["m_fused"]}, golden_preds.mask)
    with pytest.raises(ValueError, match="m_obj"):
        save_panels(tmp_path, require_golden() / "data", fused_only, [0])


def test_default_selection_mixes_anomalous_and_normal_images(golden_run):
    """The golden run saved --heatmaps 2 and the default 4 panels: half of each are normal test images."""
    results = golden_run["tmp"] / "results" / "data"
    heatmaps = sorted(p.name for p in (results / "heatmaps").glob("*.png"))
    panels = sorted(p.name for p in (results / "panels").glob("*.png"))
    assert heatmaps == ["bag_000.png", "good_000.png"]  # the first anomalous and the first normal image
    assert panels == ["bag_000_panel.png", "good_000_panel.png", "good_001_panel.png", "metal_000_panel.png"]


def test_pick_images():
    labels = np.array([1, 1, 0, 1, 0, 0, 0, 0, 1])
    assert pick_images(labels, "0") == []
    assert pick_images(labels, "1") == [0]
    assert pick_images(labels, "2") == [0, 2]
    assert pick_images(labels, "4") == [0, 1, 2, 4]
    assert pick_images(labels, "8") == [0, 1, 2, 3, 4, 5, 6, 8]  # 4 anomalous (all there are), then normal ones fill in
    assert pick_images(labels, "20") == pick_images(labels, "all") == list(range(9))
    assert pick_images(np.zeros(3, int), "2") == [0, 1]


@pytest.mark.parametrize("option", ["--heatmaps", "--panels"])
@pytest.mark.parametrize("value", ["eight", "-1", "2.5", ""])
def test_bad_image_counts_fail_at_parse_time(golden_run, monkeypatch, capsys, option, value):
    monkeypatch.setattr(usad.experiments.evaluation, "evaluate", lambda *a, **k: pytest.fail("evaluated before the options were checked"))
    with pytest.raises(SystemExit) as e:
        test_fusion.main(golden_run["argv"] + [option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert option in err and "number of images" in err and repr(value) in err
