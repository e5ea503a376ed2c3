"""Generated scenes in the MVTec LOCO AD folder layout, with logical and structural anomalies.

    <root>/<category>/train/good/000.png ...
    <root>/<category>/validation/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/logical_anomalies/000.png ...
    <root>/<category>/test/structural_anomalies/000.png ...
    <root>/<category>/ground_truth/logical_anomalies/000/000.png, 001.png ...     (one PNG per defect region)
    <root>/<category>/ground_truth/structural_anomalies/000/000.png ...
    <root>/<category>/defects_config.json

As in MVTec LOCO AD, each anomalous test image has a folder of masks named after
its stem, one L-mode PNG per defect region, holding 0 on normal pixels and the
defect's ``pixel_value`` on the region (one positive value per PNG).
``defects_config.json`` lists every defect with that value and its saturation
threshold (MVTec's keys: ``defect_name``, ``pixel_value``, ``saturation_threshold``,
``relative_saturation``; an absolute threshold is an int in pixels at the
generated size, a relative one a float in (0, 1] of the region's area).

A normal scene (fixed counts and places, small jitter):
- a grey tray with 2 x 3 compartments, exactly one yellow pushpin in each;
- a red block bottom left and a blue block bottom right, nothing between them.

Logical anomalies (the parts look normal, the arrangement does not):
- ``missing_pushpin``     one or two compartments empty; a region is where the pin was;
- ``additional_pushpin``  a second pin in one compartment; the region is the extra pin;
- ``misplaced_block``     a block moved to the empty middle slot; two regions: its
                          old place (now empty) and its new place.
Structural anomalies (damage on a part):
- ``scratch``  a thin bright line across a pin, a block or the tray;
- ``stain``    a brown translucent blob.

A region's mask is exactly the pixels the defect changed (or, for a missing part,
the pixels the part would have covered): rendering the same image without its
defect (``draw_scene(..., defect=None)``) differs only inside the masks.
Everything is drawn with numpy + cv2 from generators seeded by
``(seed, split, index)``, so the same arguments give byte-identical files.

Other modules use ``make_synthetic_loco`` (write a dataset) and read it back with
``usad.core.data.layouts.read_layout``.

    python -m usad.core.data.loco_synthetic --root data --category pushpins --size 128
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

from usad.core.data.dataset import DatasetError, NORMAL_KIND
from usad.core.data.synthetic import _move_into_place, _write_png, parse_size, staging_folder
from usad.core.errors import UsadError

LOGICAL = "logical_anomalies"
STRUCTURAL = "structural_anomalies"
LOGICAL_KINDS = ("missing_pushpin", "additional_pushpin", "misplaced_block")
STRUCTURAL_KINDS = ("scratch", "stain")
SPLIT_IDS = {"train": 0, "validation": 1, "test_good": 2, LOGICAL: 3, STRUCTURAL: 4}

GRID = (2, 3)                                   # compartment rows, columns of the tray
TRAY = (0.08, 0.08, 0.92, 0.62)                 # x0, y0, x1, y1 as fractions of width, height
PIN_RADIUS = 0.045                              # of the short side
PIN_JITTER = 0.12                               # of a compartment's size
BLOCK_SIZE = (0.2, 0.12)                        # width, height fractions
BLOCK_SLOTS = {"red": (0.22, 0.8), "blue": (0.78, 0.8), "middle": (0.5, 0.8)}  # centres (x, y fractions)
BLOCK_JITTER = 0.015
COLOURS = {                                     # BGR
    "background": (196.0, 200.0, 204.0), "tray": (92.0, 96.0, 100.0), "wall": (150.0, 154.0, 158.0),
    "pin": (40.0, 200.0, 232.0), "pin_head": (20.0, 120.0, 160.0), "red": (40.0, 45.0, 200.0),
    "blue": (190.0, 90.0, 40.0), "scratch": (250.0, 250.0, 250.0), "stain": (30.0, 60.0, 95.0),
}
STAIN_ALPHA = 0.6
NOISE_SIGMA = 2.0

# MVTec's defects_config.json entries. Absolute thresholds (pixels) are the fraction of a pin's
# area below, at the generated size; relative ones a fraction of each region's area.
DEFECTS = (
    {"defect_name": "missing_pushpin", "pixel_value": 255, "relative_saturation": False, "pin_area_fraction": 1.0},
    {"defect_name": "additional_pushpin", "pixel_value": 254, "relative_saturation": False,
     "pin_area_fraction": 0.5},
    {"defect_name": "misplaced_block", "pixel_value": 253, "relative_saturation": True, "saturation_threshold": 0.5},
    {"defect_name": "scratch", "pixel_value": 252, "relative_saturation": True, "saturation_threshold": 1.0},
    {"defect_name": "stain", "pixel_value": 251, "relative_saturation": True, "saturation_threshold": 1.0},
)


# --------------------------------------------------------------------------- geometry


def _pin_radius(width: int, height: int) -> float:
    return max(1.5, PIN_RADIUS * min(width, height))


def compartments(width: int, height: int) -> list[tuple[float, float, float, float]]:
    """The tray's compartments as (x0, y0, x1, y1) in pixels, row by row."""
    x0, y0, x1, y1 = TRAY[0] * width, TRAY[1] * height, TRAY[2] * width, TRAY[3] * height
    rows, cols = GRID
    cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
    return [(x0 + c * cw, y0 + r * ch, x0 + (c + 1) * cw, y0 + (r + 1) * ch) for r in range(rows) for c in range(cols)]


def scene_layout(rng: np.random.Generator, width: int, height: int) -> dict:
    """Jittered positions of the normal scene: one pin per compartment, two blocks, brightness."""
    pins = []
    for x0, y0, x1, y1 in compartments(width, height):
        jitter = rng.uniform(-PIN_JITTER, PIN_JITTER, 2) * (x1 - x0, y1 - y0)
        pins.append(((x0 + x1) / 2 + jitter[0], (y0 + y1) / 2 + jitter[1]))
    s = min(width, height)
    blocks = {name: (BLOCK_SLOTS[name][0] * width + rng.uniform(-1, 1) * BLOCK_JITTER * s,
                     BLOCK_SLOTS[name][1] * height + rng.uniform(-1, 1) * BLOCK_JITTER * s) for name in ("red", "blue")}
    return {"pins": pins, "blocks": blocks, "gain": rng.uniform(0.95, 1.05)}


def disc_mask(width: int, height: int, centre, radius: float) -> np.ndarray:
    m = np.zeros((height, width), np.uint8)
    cv2.circle(m, (int(round(centre[0])), int(round(centre[1]))), int(round(radius)), 1, -1, cv2.LINE_8)
    return m.astype(bool)


def block_mask(width: int, height: int, centre) -> np.ndarray:
    bw, bh = BLOCK_SIZE[0] * width, BLOCK_SIZE[1] * height
    m = np.zeros((height, width), np.uint8)
    p0 = (int(round(centre[0] - bw / 2)), int(round(centre[1] - bh / 2)))
    p1 = (int(round(centre[0] + bw / 2)), int(round(centre[1] + bh / 2)))
    cv2.rectangle(m, p0, p1, 1, -1, cv2.LINE_8)
    return m.astype(bool)


# --------------------------------------------------------------------------- drawing


def background(width: int, height: int, gain: float) -> np.ndarray:
    """Light table, float32 BGR, with the tray and its compartment walls."""
    img = np.empty((height, width, 3), np.float32)
    img[:] = COLOURS["background"]
    x0, y0, x1, y1 = (int(round(v)) for v in (TRAY[0] * width, TRAY[1] * height, TRAY[2] * width, TRAY[3] * height))
    cv2.rectangle(img, (x0, y0), (x1, y1), COLOURS["tray"], -1, cv2.LINE_8)
    wall = max(1, min(width, height) // 64)
    cv2.rectangle(img, (x0, y0), (x1, y1), COLOURS["wall"], wall, cv2.LINE_8)
    for cx0, cy0, cx1, cy1 in compartments(width, height):
        cv2.rectangle(img, (int(round(cx0)), int(round(cy0))), (int(round(cx1)), int(round(cy1))),
                      COLOURS["wall"], wall, cv2.LINE_8)
    return img * gain


def draw_pin(img: np.ndarray, centre, radius: float, gain: float) -> None:
    """A pushpin seen from above: yellow disc with a darker head in its middle."""
    c = (int(round(centre[0])), int(round(centre[1])))
    cv2.circle(img, c, int(round(radius)), tuple(v * gain for v in COLOURS["pin"]), -1, cv2.LINE_8)
    cv2.circle(img, c, max(1, int(round(radius * 0.4))), tuple(v * gain for v in COLOURS["pin_head"]), -1, cv2.LINE_8)


def draw_block(img: np.ndarray, centre, colour: str, gain: float) -> None:
    h, w = img.shape[:2]
    img[block_mask(w, h, centre)] = np.array(COLOURS[colour], np.float32) * gain


def render(width: int, height: int, layout: dict) -> np.ndarray:
    """The noise-free float32 BGR image of a layout (pins, blocks, extra pins, moved blocks)."""
    img = background(width, height, layout["gain"])
    r = _pin_radius(width, height)
    for centre in layout["pins"]:
        if centre is not None:
            draw_pin(img, centre, r, layout["gain"])
    for name, centre in layout["blocks"].items():
        draw_block(img, centre, name, layout["gain"])
    return img


# --------------------------------------------------------------------------- defects


def _extra_pin_place(rng: np.random.Generator, box, existing, radius: float):
    """A place for a second pin in compartment ``box``: the candidate farthest from the existing pin."""
    x0, y0, x1, y1 = box
    margin = radius + 2
    cand = rng.uniform((x0 + margin, y0 + margin), (x1 - margin, y1 - margin), (16, 2))
    far = np.linalg.norm(cand - np.asarray(existing), axis=1)
    return tuple(cand[int(np.argmax(far))])


def logical_defect(rng: np.random.Generator, kind: str, width: int, height: int, layout: dict):
    """Change ``layout`` in place; return the defect regions as [(defect_name, bool mask)]."""
    r = _pin_radius(width, height)
    if kind == "missing_pushpin":
        n = 1 + int(rng.random() < 0.4)
        gone = rng.choice(len(layout["pins"]), n, replace=False)
        regions = [(kind, disc_mask(width, height, layout["pins"][i], r)) for i in sorted(gone)]
        for i in gone:
            layout["pins"][i] = None
        return regions
    if kind == "additional_pushpin":
        i = int(rng.integers(len(layout["pins"])))
        place = _extra_pin_place(rng, compartments(width, height)[i], layout["pins"][i], r)
        layout["pins"].append(place)
        return [(kind, disc_mask(width, height, place, r))]
    if kind == "misplaced_block":
        name = ("red", "blue")[int(rng.integers(2))]
        old = layout["blocks"][name]
        new = (BLOCK_SLOTS["middle"][0] * width, BLOCK_SLOTS["middle"][1] * height)
        layout["blocks"][name] = new
        was, now = block_mask(width, height, old), block_mask(width, height, new)
        return [(kind, was), (kind, now)]
    raise DatasetError(f"unknown logical anomaly kind {kind!r}: choose from {list(LOGICAL_KINDS)}")


def _target_point(rng: np.random.Generator, layout: dict):
    """A point on a pin, a block or the tray, where a structural defect goes."""
    pick = int(rng.integers(3))
    if pick == 0:
        return np.asarray(layout["pins"][int(rng.integers(len(layout["pins"])))], float)
    if pick == 1:
        return np.asarray(layout["blocks"][("red", "blue")[int(rng.integers(2))]], float)
    return None


def structural_defect(rng: np.random.Generator, kind: str, img: np.ndarray, layout: dict):
    """Draw a scratch or stain on the noise-free image in place; return [(defect_name, bool mask)]."""
    h, w = img.shape[:2]
    s = min(w, h)
    centre = _target_point(rng, layout)
    if centre is None:
        inset = 0.1 * s
        centre = rng.uniform((TRAY[0] * w + inset, TRAY[1] * h + inset), (TRAY[2] * w - inset, TRAY[3] * h - inset))
    mask = np.zeros((h, w), np.uint8)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.15, 0.3) * s
        bend = rng.normal(0, 0.04 * s, 2)
        d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
        pts = np.round(np.stack([centre - d, centre + bend, centre + d])).astype(np.int32)
        cv2.polylines(mask, [pts], False, 1, max(1, s // 100), cv2.LINE_8)
        m = mask.astype(bool)
        img[m] = COLOURS["scratch"]
    elif kind == "stain":
        k = 14
        angles = np.linspace(0, 2 * np.pi, k, endpoint=False)
        radius = rng.uniform(0.04, 0.08) * s * rng.uniform(0.7, 1.3, k)
        pts = np.round(centre + radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, cv2.LINE_8)
        m = mask.astype(bool)
        img[m] = (1 - STAIN_ALPHA) * img[m] + STAIN_ALPHA * np.array(COLOURS["stain"], np.float32)
    else:
        raise DatasetError(f"unknown structural anomaly kind {kind!r}: choose from {list(STRUCTURAL_KINDS)}")
    return [(kind, m)]


# --------------------------------------------------------------------------- scenes


def draw_scene(width: int, height: int, seed: int, split: str, index: int, defect: str | None = None):
    """Image ``index`` of ``split``: (BGR uint8 image, [(defect_name, bool mask), ...]).

    The scene (positions, brightness), the defect and the sensor noise come from three
    generators seeded by ``(seed, split, index, 0 / 1 / 2)``, so ``defect=None`` draws the
    same scene without its defect: the two differ only inside the returned masks.
    """
    layout = scene_layout(np.random.default_rng([seed, SPLIT_IDS[split], index, 0]), width, height)
    defect_rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 1])
    regions = []
    if defect in LOGICAL_KINDS:
        regions = logical_defect(defect_rng, defect, width, height, layout)
    img = render(width, height, layout)
    if defect in STRUCTURAL_KINDS:
        regions = structural_defect(defect_rng, defect, img, layout)
    elif defect is not None and defect not in LOGICAL_KINDS:
        raise DatasetError(f"unknown defect {defect!r}: choose from {list(LOGICAL_KINDS + STRUCTURAL_KINDS)}")
    noise = np.random.default_rng([seed, SPLIT_IDS[split], index, 2]).normal(0.0, NOISE_SIGMA, img.shape)
    img = np.clip(np.round(img + noise.astype(np.float32)), 0, 255).astype(np.uint8)
    return img, [(name, m) for name, m in regions if m.any()]


def defects_config(width: int, height: int) -> list[dict]:
    """MVTec's defects_config.json entries for scenes of this size."""
    pin_area = int(np.count_nonzero(disc_mask(width, height, (width / 2, height / 2), _pin_radius(width, height))))
    out = []
    for d in DEFECTS:
        entry = {k: d[k] for k in ("defect_name", "pixel_value", "relative_saturation")}
        if d["relative_saturation"]:
            entry["saturation_threshold"] = float(d["saturation_threshold"])
        else:
            entry["saturation_threshold"] = max(1, int(round(d["pin_area_fraction"] * pin_area)))
        out.append(entry)
    return out


def _pixel_values() -> dict[str, int]:
    return {d["defect_name"]: d["pixel_value"] for d in DEFECTS}


def write_split(out: Path, split: str, n: int, width: int, height: int, seed: int) -> None:
    """Write one split; anomalous images cycle through their kinds (image i gets kind i mod #kinds)."""
    kinds = {LOGICAL: LOGICAL_KINDS, STRUCTURAL: STRUCTURAL_KINDS}.get(split)
    folder = {"train": out / "train" / NORMAL_KIND, "validation": out / "validation" / NORMAL_KIND,
              "test_good": out / "test" / NORMAL_KIND}.get(split, out / "test" / split)
    values = _pixel_values()
    folder.mkdir(parents=True, exist_ok=True)          # every split folder exists, even when empty
    if kinds:
        (out / "ground_truth" / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        defect = kinds[i % len(kinds)] if kinds else None
        img, regions = draw_scene(width, height, seed, split, i, defect)
        _write_png(folder / f"{i:03d}.png", img)
        for j, (name, m) in enumerate(regions):
            _write_png(out / "ground_truth" / split / f"{i:03d}" / f"{j:03d}.png", m.astype(np.uint8) * values[name])


def _check_counts(category: str, counts: dict) -> None:
    if not category or category.startswith(".") or "/" in category or "\\" in category:
        raise DatasetError(f"category {category!r} must be a plain folder name (no '/', not starting with '.')")
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise DatasetError(f"{name}={n!r} must be a non-negative int")


def make_synthetic_loco(root, category: str = "pushpins", n_train: int = 8, n_validation: int = 4,
                        n_test_good: int = 4, n_logical: int = 6, n_structural: int = 4, size=128, seed: int = 0,
                        overwrite: bool = False) -> Path:
    """Write a generated MVTec-LOCO-layout dataset to ``<root>/<category>`` and return that folder.

    Args:
        root: folder that receives ``<category>/`` (created if needed).
        category: the folder name. MVTec's evaluation code accepts only its five object
            names, so the default ``pushpins`` lets it run on these scenes unchanged.
        n_train, n_validation, n_test_good: normal images in ``train/good``,
            ``validation/good``, ``test/good``.
        n_logical: images in ``test/logical_anomalies``, cycling through
            missing_pushpin, additional_pushpin, misplaced_block (image i gets kind i mod 3).
        n_structural: images in ``test/structural_anomalies``, cycling scratch, stain.
        size: int (square), (width, height), or text '128' / '160x128'; at least 32.
        seed: the same seed gives byte-identical files.
        overwrite: replace an existing non-empty ``<root>/<category>`` (otherwise a DatasetError).

    The folder is generated beside the target and renamed into place, so it is either
    absent or complete. Masks: ``ground_truth/<type>/<stem>/<k>.png``, one per region,
    0 / ``pixel_value`` (see ``defects_config.json`` in the folder and ``DEFECTS``).
    """
    _check_counts(category, {"n_train": n_train, "n_validation": n_validation, "n_test_good": n_test_good,
                             "n_logical": n_logical, "n_structural": n_structural})
    width, height = parse_size(size)
    target, tmp = staging_folder(Path(root), category, overwrite)
    try:
        for split, n in (("train", n_train), ("validation", n_validation), ("test_good", n_test_good),
                         (LOGICAL, n_logical), (STRUCTURAL, n_structural)):
            write_split(tmp, split, n, width, height, seed)
        (tmp / "defects_config.json").write_text(json.dumps(defects_config(width, height), indent=4) + "\n")
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m usad.core.data.loco_synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="data", help="folder that receives <category>/ (default: data)")
    p.add_argument("--category", default="pushpins")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-validation", type=int, default=4)
    p.add_argument("--n-test-good", type=int, default=4)
    p.add_argument("--n-logical", type=int, default=6)
    p.add_argument("--n-structural", type=int, default=4)
    p.add_argument("--size", default="128", help="int (square) or WIDTHxHEIGHT, e.g. 160x128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing <root>/<category>")
    a = p.parse_args(argv)
    try:
        out = make_synthetic_loco(a.root, a.category, a.n_train, a.n_validation, a.n_test_good, a.n_logical,
                                  a.n_structural, a.size, a.seed, a.overwrite)
    except UsadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.n_train} train, {a.n_validation} validation, {a.n_test_good} good, {a.n_logical} logical and "
          f"{a.n_structural} structural test images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
