"""Synthetic conveyor-belt coal scenes in the CoalAD / MVTec-AD folder layout.

    <root>/<category>/train/good/000.png ...
    <root>/<category>/test/good/000.png ...
    <root>/<category>/test/<kind>/000.png ...             (kind: wood, metal, rope, bag)
    <root>/<category>/ground_truth/<kind>/000_mask.png    (L-mode, 0 background / 255 object)

A scene is a dark rubber belt (noise, longitudinal streaks and wear bands)
covered with coal lumps (dark polygons with faint lit facets) and a few lighter
gangue lumps. An anomalous scene adds one foreign object that is partly buried:
coal lumps are drawn over it, and its mask is exactly its visible pixels.
Everything is drawn with numpy + cv2 from a seeded ``numpy.random.Generator``,
so the same arguments give byte-identical files.

    python -m usad.data.synthetic --root data --n-train 32 --size 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from usad.core.errors import UsadError
from usad.core.data.dataset import DatasetError, NORMAL_KIND

KINDS = ("wood", "metal", "rope", "bag")
LIGHT = np.array([-0.6, -0.8])                 # unit vector towards the light (x, y), from the top left
SPLIT_IDS = {"train": 0, "test_good": 1, "test_anomalous": 2}


# --------------------------------------------------------------------------- belt and lumps


def belt_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Dark rubber belt, float32 BGR: base grey + streaks along x + wear bands + fine noise."""
    base = rng.uniform(38.0, 58.0)
    profile = cv2.GaussianBlur(rng.normal(0.0, 4.0, (h, 1)).astype(np.float32), (1, 0), 2.0).ravel()
    y = np.arange(h, dtype=np.float32)
    for _ in range(rng.integers(1, 4)):  # a few lighter worn bands running along the belt
        centre, width, amp = rng.uniform(0, h), rng.uniform(1.5, 0.03 * h + 2), rng.uniform(5.0, 14.0)
        profile += amp * np.exp(-0.5 * ((y - centre) / width) ** 2)
    streaks = cv2.GaussianBlur(rng.normal(0.0, 7.0, (h, w)).astype(np.float32), (15, 1), 0)
    grey = base + profile[:, None] + streaks
    tint = np.array([1.02, 1.0, 0.98], np.float32)  # rubber is very slightly bluish
    return grey[:, :, None] * tint


def lump_polygons(rng: np.random.Generator, centres: np.ndarray, radii: np.ndarray, k: int = 7) -> np.ndarray:
    """Irregular star-shaped polygons, (n, k, 2) int32: jittered angles and radii around each centre."""
    n = len(centres)
    angles = np.sort(np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi / k, (n, k)), axis=1)
    r = radii[:, None] * rng.uniform(0.6, 1.15, (n, k))
    pts = centres[:, None, :] + r[..., None] * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return np.round(pts).astype(np.int32)


def lit_sides(polys: np.ndarray):
    """Facets (centre, v_i, v_i+1) and rim segments of every edge facing the light: (n, k, 3, 2), (n, k, 2, 2), lit (n, k)."""
    centres = np.round(polys.mean(axis=1, keepdims=True)).astype(np.int32)
    nxt = np.roll(polys, -1, axis=1)
    outward = (polys + nxt) / 2.0 - centres
    lit = (outward @ LIGHT) / (np.linalg.norm(outward, axis=-1) + 1e-6) > 0.3
    facets = np.stack([np.broadcast_to(centres, polys.shape), polys, nxt], axis=2)
    return facets, facets[:, :, 1:], lit


def draw_lump(img, poly, facets, rims, colour, mask=None) -> None:
    """One lump: filled polygon, brighter facets and rim on its lit side. Pixels drawn are cleared in ``mask``."""
    shades = [tuple(float(v) for v in c) for c in (colour, colour + 10, colour + 28)]
    for canvas, (fill, facet, rim) in ((img, shades), (mask, (0, 0, 0))):
        if canvas is None:
            continue
        cv2.fillPoly(canvas, [poly], fill, cv2.LINE_8)
        if len(facets):
            cv2.fillPoly(canvas, list(facets), facet, cv2.LINE_8)
            cv2.polylines(canvas, list(rims), False, rim, 1, cv2.LINE_8)


def draw_lumps(img, polys, colours, mask=None) -> None:
    facets, rims, lit = lit_sides(polys)
    for i in range(len(polys)):
        draw_lump(img, polys[i], facets[i][lit[i]], rims[i][lit[i]], colours[i], mask)


def lump_colours(rng: np.random.Generator, n: int, gangue: bool) -> np.ndarray:
    """BGR lump colours: coal near-black with a blue cast, gangue lighter grey-brown."""
    grey = rng.uniform(85.0, 140.0, n) if gangue else rng.uniform(14.0, 38.0, n)
    tint = np.array([0.88, 0.97, 1.03]) if gangue else np.array([1.06, 1.0, 0.96])
    return grey[:, None] * tint * rng.uniform(0.95, 1.05, (n, 3))


def lump_radii(rng: np.random.Generator, n: int, s: int) -> np.ndarray:
    """Many small lumps, few big ones (log-uniform radii between 1.2 % and 6 % of the short side)."""
    return np.exp(rng.uniform(np.log(0.012 * s + 1.5), np.log(0.06 * s + 2.0), n))


def scatter_lumps(rng: np.random.Generator, img: np.ndarray) -> None:
    """Cover the belt with coal lumps (40-90 % of the area) and ~10 % gangue lumps, in random order."""
    h, w = img.shape[:2]
    s = min(h, w)
    mean_area = np.pi * (0.03 * s + 1.7) ** 2 * 0.75
    n = max(1, int(h * w * rng.uniform(0.4, 0.9) / mean_area))
    gangue = rng.random(n) < 0.1
    centres = rng.uniform([-0.03 * w, -0.03 * h], [1.03 * w, 1.03 * h], (n, 2))
    polys = lump_polygons(rng, centres, lump_radii(rng, n, s))
    colours = np.where(gangue[:, None], lump_colours(rng, n, True), lump_colours(rng, n, False))
    draw_lumps(img, polys, colours)


# --------------------------------------------------------------------------- foreign objects


def object_frame(rng: np.random.Generator, h: int, w: int):
    """Random object centre (inner 60 % of the scene), orientation and per-pixel (along, across) coordinates."""
    centre = rng.uniform([0.2 * w, 0.2 * h], [0.8 * w, 0.8 * h])
    theta = rng.uniform(0, np.pi)
    axis = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-axis[1], axis[0]])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - centre[0], yy - centre[1]
    return centre, axis, normal, dx * axis[0] + dy * axis[1], dx * normal[0] + dy * normal[1]


def rotated_rect(centre, axis, normal, length: float, width: float) -> np.ndarray:
    corners = [centre + a * length / 2 * axis + b * width / 2 * normal for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    return np.round(corners).astype(np.int32)


def wood_object(rng, h, w, s):
    """Brown elongated plank with wavy grain along its length and a dark knot."""
    centre, axis, normal, u, v = object_frame(rng, h, w)
    length, width = rng.uniform(0.25, 0.5) * s, rng.uniform(0.05, 0.1) * s
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [rotated_rect(centre, axis, normal, length, width)], 255, cv2.LINE_8)
    colour = np.array([45.0, 85.0, 135.0]) * rng.uniform(0.8, 1.2)
    period = rng.uniform(2.5, 5.0)
    grain = 1.0 + 0.13 * np.sin(2 * np.pi * (v + 1.5 * np.sin(u / (0.15 * length + 1))) / period)
    knot_u, knot_v = rng.uniform(-0.35, 0.35) * length, rng.uniform(-0.2, 0.2) * width
    knot = 1.0 - 0.35 * np.exp(-((u - knot_u) ** 2 + (v - knot_v) ** 2) / (0.15 * width + 1) ** 2)
    return mask, (grain * knot)[:, :, None] * colour


def metal_object(rng, h, w, s):
    """Bright grey bar or plate, shaded across its width with a specular streak along it."""
    centre, axis, normal, u, v = object_frame(rng, h, w)
    if rng.random() < 0.5:
        length, width = rng.uniform(0.2, 0.4) * s, rng.uniform(0.03, 0.06) * s + 2
    else:
        length, width = rng.uniform(0.12, 0.25) * s, rng.uniform(0.08, 0.18) * s
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [rotated_rect(centre, axis, normal, length, width)], 255, cv2.LINE_8)
    across = np.clip(v / (width / 2), -1, 1)
    streak_at = rng.uniform(-0.5, 0.5)
    grey = rng.uniform(135, 185) - 25 * across + 75 * np.exp(-((across - streak_at) / 0.18) ** 2)
    return mask, grey[:, :, None] * np.array([1.03, 1.0, 0.97])


def rope_object(rng, h, w, s):
    """Thick curved rope: a smoothed random walk drawn as a wide polyline, with a twisted-strand pattern."""
    centre = rng.uniform([0.25 * w, 0.25 * h], [0.75 * w, 0.75 * h])
    heading = rng.uniform(0, 2 * np.pi)
    turns = np.cumsum(rng.normal(0, 0.6, 5))
    steps = rng.uniform(0.06, 0.12, 5)[:, None] * s * np.stack([np.cos(heading + turns), np.sin(heading + turns)], 1)
    ctrl = centre + np.vstack([[0, 0], np.cumsum(steps, axis=0)]) - steps.sum(0) / 2
    t = np.linspace(0, 1, 40)[:, None]
    curve = np.concatenate([(1 - t) ** 2 * a + 2 * (1 - t) * t * b + t ** 2 * c  # quadratic Bezier through midpoints
                            for a, b, c in zip((ctrl[:-2] + ctrl[1:-1]) / 2, ctrl[1:-1], (ctrl[1:-1] + ctrl[2:]) / 2)])
    thickness = max(3, int(round(rng.uniform(0.025, 0.045) * s)))
    mask = np.zeros((h, w), np.uint8)
    cv2.polylines(mask, [np.round(curve).astype(np.int32)], False, 255, thickness, cv2.LINE_8)
    palette = np.array([[40, 140, 230], [60, 200, 230], [180, 110, 40], [70, 150, 60], [200, 205, 210]], float)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    strands = 0.8 + 0.2 * np.sin(2 * np.pi * (xx + yy) / rng.uniform(3.0, 6.0))
    return mask, strands[:, :, None] * palette[rng.integers(len(palette))]


def bag_object(rng, h, w, s):
    """Coloured irregular blob (woven plastic bag) with a fine weave and a few darker wrinkles."""
    centre = rng.uniform([0.25 * w, 0.25 * h], [0.75 * w, 0.75 * h])
    k = 24
    angles = np.linspace(0, 2 * np.pi, k, endpoint=False)
    wobble = np.convolve(np.tile(rng.normal(0, 0.25, k), 3), np.ones(3) / 3, mode="same")[k:2 * k]
    radius = rng.uniform(0.08, 0.16) * s * np.clip(1 + wobble, 0.5, 1.6)
    aspect = rng.uniform(0.6, 1.0)
    pts = centre + radius[:, None] * np.stack([np.cos(angles), aspect * np.sin(angles)], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255, cv2.LINE_8)
    palette = np.array([[225, 225, 220], [190, 120, 40], [80, 160, 70], [50, 50, 190], [60, 180, 210]], np.float32)
    colour = palette[rng.integers(len(palette))]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    weave = 1.0 + 0.05 * np.sin(2 * np.pi * xx / 3.0) * np.sin(2 * np.pi * yy / 3.0)
    layer = np.ascontiguousarray(weave[:, :, None] * colour)
    for _ in range(rng.integers(2, 5)):  # wrinkles
        a, b = np.round(centre + rng.normal(0, 0.06 * s, (2, 2))).astype(int)
        cv2.line(layer, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), tuple(float(c) for c in 0.7 * colour), 1)
    return mask, layer


OBJECTS = {"wood": wood_object, "metal": metal_object, "rope": rope_object, "bag": bag_object}


def bury(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, keep: float = 0.5) -> None:
    """Partly bury the object: coal lumps centred on object pixels, each kept only if >= ``keep`` of it stays visible."""
    s = min(img.shape[:2])
    total = np.count_nonzero(mask)
    n = int(rng.integers(2, 6))
    on_object = np.flatnonzero(mask)
    picks = on_object[rng.integers(0, len(on_object), n)]
    centres = np.stack([picks % mask.shape[1], picks // mask.shape[1]], 1).astype(float)
    polys = lump_polygons(rng, centres, rng.uniform(0.02, 0.05, n) * s + 2)
    colours = lump_colours(rng, n, False)
    facets, rims, lit = lit_sides(polys)
    for i in range(n):
        lump = (polys[i], facets[i][lit[i]], rims[i][lit[i]], colours[i])
        trial = mask.copy()
        draw_lump(None, *lump, mask=trial)
        if np.count_nonzero(trial) >= keep * total:
            draw_lump(img, *lump, mask=mask)


# --------------------------------------------------------------------------- scenes


def render_scene(rng: np.random.Generator, width: int, height: int, kind: str | None = None):
    """One BGR uint8 scene and its object mask (all zero for a normal scene)."""
    img = belt_texture(rng, height, width)
    scatter_lumps(rng, img)
    mask = np.zeros((height, width), np.uint8)
    if kind is not None:
        mask, layer = OBJECTS[kind](rng, height, width, min(width, height))
        img[mask > 0] = layer[mask > 0]
        bury(rng, img, mask)
    img += rng.normal(0.0, 2.5, img.shape).astype(np.float32)  # sensor noise
    return np.clip(np.round(img), 0, 255).astype(np.uint8), mask


def parse_size(size) -> tuple[int, int]:
    """``size`` as (width, height): an int (square), a (w, h) pair, or text '256' / '320x240'."""
    if isinstance(size, str):
        parts = size.lower().split("x")
        try:
            size = tuple(int(p) for p in parts) if len(parts) == 2 else int(size)
        except ValueError:
            raise DatasetError(f"size {size!r} is not an int or WIDTHxHEIGHT (e.g. 256 or 320x240)") from None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size)):
        raise DatasetError(f"size {size!r} must be an int or a (width, height) pair of ints")
    width, height = int(size[0]), int(size[1])
    if min(width, height) < 32:
        raise DatasetError(f"size {size!r} is too small: width and height must be at least 32 pixels")
    return width, height


def _check_args(category: str, counts: dict, kinds) -> tuple[str, ...]:
    if not category or category.startswith(".") or "/" in category or "\\" in category or category in ("..",):
        raise DatasetError(f"category {category!r} must be a plain folder name (no '/', not starting with '.')")
    for name, n in counts.items():
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise DatasetError(f"{name}={n!r} must be a non-negative int")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in OBJECTS]
    if unknown:
        raise DatasetError(f"unknown anomaly kind(s) {unknown}: choose from {list(OBJECTS)}")
    if counts["n_test_anomalous"] > 0 and not kinds:
        raise DatasetError("n_test_anomalous > 0 needs at least one kind in `kinds`")
    if len(set(kinds)) != len(kinds):
        raise DatasetError(f"kinds {list(kinds)} contain duplicates")
    return kinds


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise DatasetError(f"could not write {path}: check the folder is writable and the disk is not full")


def write_split(out: Path, split: str, n: int, width: int, height: int, seed: int, kinds: tuple[str, ...]) -> None:
    """Write one split; image i of a split is drawn from its own generator seeded by (seed, split, i)."""
    for i in range(n):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        if split == "test_anomalous":
            kind, name = kinds[i % len(kinds)], f"{i // len(kinds):03d}"
            img, mask = render_scene(rng, width, height, kind)
            _write_png(out / "test" / kind / f"{name}.png", img)
            _write_png(out / "ground_truth" / kind / f"{name}_mask.png", mask)
        else:
            img, _ = render_scene(rng, width, height)
            folder = out / "train" / NORMAL_KIND if split == "train" else out / "test" / NORMAL_KIND
            _write_png(folder / f"{i:03d}.png", img)


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def make_synthetic_coalad(root, category: str = "coal_ad", n_train: int = 32, n_test_good: int = 8,
                          n_test_anomalous: int = 8, size=256, kinds=KINDS, seed: int = 0,
                          overwrite: bool = False) -> Path:
    """Write a synthetic CoalAD-layout dataset to ``<root>/<category>`` and return that folder.

    Generated into ``<root>/.<category>.tmp-<random>`` and renamed into place, so the
    folder is either absent or complete. An existing non-empty folder is an error
    unless ``overwrite=True``.
    """
    kinds = _check_args(category, {"n_train": n_train, "n_test_good": n_test_good,
                                   "n_test_anomalous": n_test_anomalous}, kinds)
    width, height = parse_size(size)
    target, tmp = staging_folder(Path(root), category, overwrite)
    try:
        for split, n in (("train", n_train), ("test_good", n_test_good), ("test_anomalous", n_test_anomalous)):
            write_split(tmp, split, n, width, height, seed, kinds)
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def staging_folder(root: Path, category: str, overwrite: bool) -> tuple[Path, Path]:
    """``(target, tmp)``: the category folder to write (refused when it is a file, or not empty without
    ``overwrite``) and an empty folder beside it to write into first (``_move_into_place`` renames it)."""
    target = root / category
    if target.exists() and not target.is_dir():
        raise DatasetError(f"{target} exists and is not a folder: remove it or choose another root/category")
    if _is_nonempty_dir(target) and not overwrite:
        raise DatasetError(f"{target} already exists and is not empty: remove it, choose another root/category, "
                           f"or pass overwrite=True (--overwrite) to replace it")
    root.mkdir(parents=True, exist_ok=True)
    return target, Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root))


def _move_into_place(staged: Path, target: Path) -> None:
    """Rename ``staged`` to ``target``; an existing target is first renamed aside, then deleted."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m usad.data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="data", help="folder that receives <category>/ (default: data)")
    p.add_argument("--category", default="coal_ad")
    p.add_argument("--n-train", type=int, default=32)
    p.add_argument("--n-test-good", type=int, default=8)
    p.add_argument("--n-test-anomalous", type=int, default=8)
    p.add_argument("--size", default="256", help="int (square) or WIDTHxHEIGHT, e.g. 320x240")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated anomaly kinds (default {','.join(KINDS)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing <root>/<category>")
    a = p.parse_args(argv)
    try:
        out = make_synthetic_coalad(a.root, a.category, a.n_train, a.n_test_good, a.n_test_anomalous,
                                    a.size, [k for k in a.kinds.split(",") if k], a.seed, a.overwrite)
    except UsadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.n_train} train, {a.n_test_good} good and {a.n_test_anomalous} anomalous test images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
