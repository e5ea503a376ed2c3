"""usad.belt.decisions without models: thresholds from normal scores, masks and boxes, metrics at an operating point."""

import cv2
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import precision_recall_fscore_support

from usad.belt.decisions import (BOX_COLOUR, allowed_false_alarms, draw_boxes, image_decision_metrics, mask_metrics,
                            regions, required_images, threshold_at_rate)

EIGHT = np.ones((3, 3), int)  # 8-connectivity for scipy.ndimage.label


@pytest.mark.parametrize("n", [10, 37, 100, 1000])
@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1, 0.25, 0.5])
def test_threshold_keeps_the_rate_within_one_over_n(n, rate):
    """Also below required_images(rate) (k = 0: the maximum, no image above it; 1 / n > rate)."""
    scores = np.random.default_rng(n).normal(size=n) * 10 + 70
    t = threshold_at_rate(scores, rate)
    above = np.count_nonzero(scores > t) / n   # brute force: the share of normals called anomalous
    assert rate - 1 / n < above <= rate
    assert above == allowed_false_alarms(n, rate) / n
    assert t in scores  # an order statistic: a calibration score itself


def test_required_images_is_the_fewest_with_one_false_alarm():
    for rate in (0.01, 0.02, 0.03, 0.1, 1 / 3, 0.5, 0.07):
        need = required_images(rate)
        assert allowed_false_alarms(need, rate) == 1 and allowed_false_alarms(need - 1, rate) == 0
    assert required_images(0.01) == 100 and required_images(0.1) == 10  # no float round-off (1 / 0.1 = 10.000000000000002?)
    assert allowed_false_alarms(30, 0.1) == 3  # 0.1 * 30 = 3.0000000000000004


def blob_map(h, w, seed):
    """A smooth random map with several separate peaks."""
    rng = np.random.default_rng(seed)
    m = ndimage.gaussian_filter(rng.random((h, w)), 3)
    return (m - m.min()) / (m.max() - m.min())


def reference_boxes(mask, amap, min_area=0):
    """Boxes by scipy (independent of OpenCV): 8-connected labels, slices, sizes and maxima."""
    labels, n = ndimage.label(mask, structure=EIGHT)
    out = []
    for j, sl in enumerate(ndimage.find_objects(labels), start=1):
        area = int((labels == j).sum())
        if area >= min_area:
            out.append({"x0": sl[1].start, "y0": sl[0].start, "x1": sl[1].stop, "y1": sl[0].stop, "area": area,
                        "peak": float(amap[labels == j].max())})
    return sorted(out, key=lambda b: -b["peak"])


BOX_INTS = ("x0", "y0", "x1", "y1", "area")


def assert_same_boxes(got: list[dict], expected: list[dict], rel: float = 1e-5) -> None:
    """Boxes field by field: the integer coordinates and area exactly, ``peak`` to ``rel`` (any pytest version:
    ``pytest.approx`` refuses nested structures from pytest 9.2 on)."""
    assert len(got) == len(expected), (got, expected)
    for g, e in zip(got, expected):
        assert set(g) == set(e), (g, e)
        assert {k: g[k] for k in BOX_INTS} == {k: e[k] for k in BOX_INTS}, (g, e)
        assert all(isinstance(g[k], int) for k in BOX_INTS), g
        assert g["peak"] == pytest.approx(e["peak"], rel=rel), (g, e)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_area", [0, 1, 12])
def test_boxes_are_the_connected_components_of_the_mask(seed, min_area):
    amap = blob_map(57, 90, seed)
    mask, boxes = regions(amap, 0.62, min_area)
    assert boxes == reference_boxes(amap > 0.62, amap, min_area)
    assert len(boxes) > 1 or min_area > 1
    # the mask keeps exactly the regions that became boxes (no specks under min_area)
    assert mask.dtype == bool and mask.shape == amap.shape
    assert mask.sum() == sum(b["area"] for b in boxes)
    assert boxes == reference_boxes(mask, amap)
    for b in boxes:  # each box is tight around its region and holds the peak
        inside = mask[b["y0"]:b["y1"], b["x0"]:b["x1"]]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert amap[b["y0"]:b["y1"], b["x0"]:b["x1"]][inside].max() == pytest.approx(b["peak"])


def test_diagonal_pixels_are_one_region():
    amap = np.zeros((5, 5))
    amap[1, 1] = amap[2, 2] = 1.0
    amap[4, 0] = 0.5
    _, boxes = regions(amap, 0.1)
    assert boxes == [{"x0": 1, "y0": 1, "x1": 3, "y1": 3, "area": 2, "peak": 1.0},
                     {"x0": 0, "y0": 4, "x1": 1, "y1": 5, "area": 1, "peak": 0.5}]


@pytest.mark.parametrize("size", [(300, 150), (90, 160), (406, 406)])
def test_box_coordinates_map_back_for_non_square_images(size):
    """A square evaluation-size map with a blob at a known place: resized to a W x H image, the box lands at the
    place scaled by W / 406 and H / 406 (x with the width, y with the height)."""
    eval_size, (w, h) = 406, size
    amap = np.zeros((eval_size, eval_size), np.float32)
    amap[100:140, 250:330] = 1.0       # rows (y) 100..139, columns (x) 250..329
    amap = cv2.GaussianBlur(amap, (0, 0), 2)
    resized = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    mask, (box,) = regions(resized, 0.5)
    assert mask.shape == (h, w)
    sx, sy = w / eval_size, h / eval_size
    for key, edge, s in (("x0", 250, sx), ("x1", 330, sx), ("y0", 100, sy), ("y1", 140, sy)):
        assert abs(box[key] - edge * s) <= 1.5, (key, box)
    assert box == reference_boxes(resized > 0.5, resized)[0]


def test_boxes_are_drawn_on_their_edges():
    rgb = np.zeros((40, 60, 3), np.uint8)
    box = {"x0": 10, "y0": 5, "x1": 30, "y1": 25, "area": 1, "peak": 1.0}
    drawn = draw_boxes(rgb, [box])
    edge = np.zeros((40, 60), bool)
    edge[5, 10:30] = edge[24, 10:30] = edge[5:25, 10] = edge[5:25, 29] = True
    assert (drawn[edge] == BOX_COLOUR).all() and (drawn[~edge] == 0).all()
    assert (rgb == 0).all()  # the input is untouched


def test_image_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    labels, anomalous = rng.random(200) < 0.4, rng.random(200) < 0.5
    m = image_decision_metrics(labels, anomalous)
    p, r, f, _ = precision_recall_fscore_support(labels, anomalous, average="binary")
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f))
    assert m["false_alarm_rate"] == pytest.approx((anomalous & ~labels).sum() / (~labels).sum())
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == 200
    none = image_decision_metrics(np.array([0, 1]), np.array([False, False]))
    assert none["precision"] is None and none["recall"] == 0 and none["false_alarm_rate"] == 0


def test_mask_metrics_by_hand():
    """Two images: one anomalous with two ground-truth regions (one found by a box), one normal with a speck."""
    maps = np.zeros((2, 10, 10))
    gt = np.zeros((2, 10, 10), np.uint8)
    gt[0, 1:4, 1:4] = 1          # region A, 9 px
    gt[0, 7:9, 7:9] = 1          # region B, 4 px, missed
    maps[0, 2:5, 2:5] = 1.0      # predicted 9 px, overlapping A on 4 px
    maps[1, 0, 0] = 1.0          # a false speck on the normal image
    m = mask_metrics(maps, gt, np.array([1, 0]), 0.5)
    inter, union, pred, true = 4, 9 + 9 + 4 + 1 - 4, 9 + 1, 13
    assert m["iou"] == pytest.approx(inter / union) and m["dice"] == pytest.approx(2 * inter / (pred + true))
    assert (m["region_recall"], m["n_regions"], m["n_regions_found"]) == (0.5, 2, 1)
    assert m["normal_images_with_mask"] == 1.0
    # a box overlaps a region when a region pixel lies inside it, even where the mask itself does not touch it
    maps[0] = 0
    maps[0, 0, 0] = maps[0, 4, 4] = maps[0, 1:4, 0] = maps[0, 4, 1:4] = 1.0  # an L around A's corner: box covers A
    assert mask_metrics(maps, gt, np.array([1, 0]), 0.5)["n_regions_found"] == 1
