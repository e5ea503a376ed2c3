"""Read a dataset folder in one of the three layouts the project evaluates on.

CoalAD and MVTec AD (``kind="mvtec"``)::

    <category>/train/good/*.png
    <category>/test/good/*.png, <category>/test/<defect>/*.png
    <category>/ground_truth/<defect>/<stem>_mask.png        (0 normal, >= 128 anomalous)

MVTec LOCO AD (``kind="loco"``)::

    <category>/train/good/*.png
    <category>/validation/good/*.png
    <category>/test/{good,logical_anomalies,structural_anomalies}/*.png
    <category>/ground_truth/<type>/<stem>/000.png, 001.png ...   (one PNG per defect region, 0 normal,
                                                                   the defect's pixel_value on the region)
    <category>/defects_config.json                               (each defect's pixel_value and saturation)

A folder is LOCO when it has ``defects_config.json``, a ``validation`` folder or a
``test/logical_anomalies`` / ``test/structural_anomalies`` folder; MVTec otherwise.
Images are listed with ``usad.core.data.dataset``'s functions (ImageFolder order:
defect folders sorted, then files sorted), which is also the order of MVTec's LOCO
evaluation code. Anything that does not fit raises ``LayoutError`` naming the path.

    layout = read_layout("data/pushpins")
    masks = np.stack([load_gt(item, 256) for item in layout.test])     # (n, 256, 256) uint8 0 / 1
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from usad.core.data.dataset import (NORMAL_KIND, DatasetError, list_images, mask_transform, require_category_dir,
                                    test_samples, train_samples)

LOCO_TYPES = ("logical_anomalies", "structural_anomalies")
DEFECTS_CONFIG = "defects_config.json"
LOCO_MARKERS = (DEFECTS_CONFIG, "validation", "test/logical_anomalies", "test/structural_anomalies")
MASK_THRESHOLD = 128        # MVTec AD / CoalAD masks: >= 128 of 255 is anomalous (dataset.mask_transform)


class LayoutError(DatasetError):
    """A dataset folder that is not a complete MVTec AD / CoalAD or MVTec LOCO layout."""


@dataclass(frozen=True)
class DefectConfig:
    """One entry of MVTec LOCO's defects_config.json.

    ``saturation_threshold``: pixels (int) when ``relative_saturation`` is false, else a
    fraction (float in (0, 1]) of each region's area.
    """
    name: str
    pixel_value: int
    saturation_threshold: int | float
    relative_saturation: bool


@dataclass(frozen=True)
class TestImage:
    """One test image: ``label`` 0 normal / 1 anomalous; ``defect`` its test folder's name
    (``good``, an MVTec defect kind, or ``logical_anomalies`` / ``structural_anomalies``);
    ``masks``: MVTec: ``[<stem>_mask.png]``, LOCO: the region PNGs of its mask folder, sorted;
    ``[]`` for normal images."""
    __test__ = False         # not a pytest test class
    path: Path
    label: int
    defect: str
    masks: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Layout:
    """A read dataset folder. ``validation`` is empty for MVTec layouts, ``defects`` (pixel_value ->
    DefectConfig) too."""
    root: Path
    kind: str                                   # "mvtec" | "loco"
    category: str
    train: list[Path]
    validation: list[Path]
    test: list[TestImage]
    defects: dict[int, DefectConfig] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return np.array([t.label for t in self.test], np.int64)

    @property
    def defect_types(self) -> list[str]:
        """The anomalous test folders, sorted (``good`` left out)."""
        return sorted({t.defect for t in self.test if t.label})


# --------------------------------------------------------------------------- reading


def read_layout(root) -> Layout:
    """Read ``root`` (a category folder) as an MVTec AD / CoalAD or MVTec LOCO layout."""
    root = Path(root)
    try:
        require_category_dir(root)
    except DatasetError as e:
        raise LayoutError(str(e)) from None
    if any((root / m).exists() for m in LOCO_MARKERS):
        return _read_loco(root)
    return _read_mvtec(root)


def _listed(fn, root: Path):
    """Call a dataset.py listing function; its DatasetError becomes a LayoutError."""
    try:
        return fn(root)
    except LayoutError:
        raise
    except DatasetError as e:
        raise LayoutError(str(e)) from None


def _read_mvtec(root: Path) -> Layout:
    train = [s.path for s in _listed(train_samples, root)]
    test = []
    for s in _listed(test_samples, root):
        if s.label and not s.mask_path.is_file():
            raise LayoutError(f"anomalous test image {s.path} has no mask: expected {s.mask_path} "
                              f"(MVTec AD layout: ground_truth/<defect>/<stem>_mask.png)")
        test.append(TestImage(s.path, s.label, s.kind, [s.mask_path] if s.label else []))
    if not any(t.label == 0 for t in test):
        raise LayoutError(f"no normal test images in {root / 'test' / NORMAL_KIND}: put the good test images there")
    return Layout(root, "mvtec", root.name, train, [], test, {})


def _read_loco(root: Path) -> Layout:
    for folder in ("train/good", "validation/good", "test/good", *(f"test/{t}" for t in LOCO_TYPES)):
        if not (root / folder).is_dir():
            raise LayoutError(f"{root / folder} is missing: an MVTec LOCO layout has train/good, validation/good, "
                              f"test/good, test/logical_anomalies, test/structural_anomalies, ground_truth/ and "
                              f"{DEFECTS_CONFIG}")
    other = sorted(d.name for d in (root / "test").iterdir()
                   if d.is_dir() and not d.name.startswith(".") and d.name not in (NORMAL_KIND, *LOCO_TYPES))
    if other:
        raise LayoutError(f"{root / 'test' / other[0]} is not an MVTec LOCO test folder: expected only good, "
                          f"logical_anomalies and structural_anomalies")
    defects = read_defects_config(root / DEFECTS_CONFIG)
    train = [s.path for s in _listed(train_samples, root)]
    validation = list_images(root / "validation" / NORMAL_KIND)
    test = []
    for s in _listed(test_samples, root):
        if not s.label:
            test.append(TestImage(s.path, 0, NORMAL_KIND, []))
            continue
        folder = root / "ground_truth" / s.kind / s.path.stem
        pngs = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not pngs:
            raise LayoutError(f"anomalous test image {s.path} has no masks: expected {folder}/000.png ... "
                              f"(MVTec LOCO layout: one PNG per defect region)")
        test.append(TestImage(s.path, 1, s.kind, pngs))
    if not any(t.label == 0 for t in test):
        raise LayoutError(f"no normal test images in {root / 'test' / NORMAL_KIND}: put the good test images there")
    return Layout(root, "loco", root.name, train, validation, test, defects)


def read_defects_config(path: Path) -> dict[int, DefectConfig]:
    """MVTec LOCO's defects_config.json as pixel_value -> DefectConfig, checked as MVTec's code checks it
    (pixel values 1..255; an absolute threshold an int, a relative one a float in (0, 1])."""
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path} is missing: an MVTec LOCO category lists its defects there "
                          f"(defect_name, pixel_value, saturation_threshold, relative_saturation)")
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayoutError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise LayoutError(f"{path} must be a non-empty JSON list of defect entries")
    defects: dict[int, DefectConfig] = {}
    keys = {"defect_name", "pixel_value", "saturation_threshold", "relative_saturation"}
    for i, e in enumerate(entries):
        where = f"{path} entry {i}"
        if not isinstance(e, dict) or not keys <= set(e):
            raise LayoutError(f"{where} must be an object with keys {sorted(keys)}; got {e!r}")
        name, value, sat, rel = e["defect_name"], e["pixel_value"], e["saturation_threshold"], e["relative_saturation"]
        if not isinstance(name, str) or not name:
            raise LayoutError(f"{where}: defect_name must be a non-empty string; got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            raise LayoutError(f"{where} ({name}): pixel_value must be an int in 1..255; got {value!r}")
        if value in defects:
            raise LayoutError(f"{where} ({name}): pixel_value {value} is also {defects[value].name}'s")
        if not isinstance(rel, bool):
            raise LayoutError(f"{where} ({name}): relative_saturation must be true or false; got {rel!r}")
        if rel and not (isinstance(sat, float) and 0 < sat <= 1):
            raise LayoutError(f"{where} ({name}): a relative saturation_threshold must be a float in (0, 1], "
                              f"e.g. 1.0; got {sat!r}")
        if not rel and (isinstance(sat, bool) or not isinstance(sat, int) or sat < 0):
            raise LayoutError(f"{where} ({name}): an absolute saturation_threshold must be an int of pixels; "
                              f"got {sat!r}")
        defects[value] = DefectConfig(name, value, sat, rel)
    return defects


# --------------------------------------------------------------------------- masks


def read_region(png: Path, defects: dict[int, DefectConfig]) -> tuple[DefectConfig, np.ndarray]:
    """One LOCO region PNG at its own size: (its DefectConfig, bool mask). One positive value per PNG,
    listed in defects_config.json, as MVTec's evaluation code requires."""
    try:
        with Image.open(png) as im:
            arr = np.asarray(im)
    except Exception as e:
        raise LayoutError(f"cannot read mask {png}: {type(e).__name__}: {e}") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise LayoutError(f"mask {png} must be a single-channel integer PNG (L mode); got shape {arr.shape}, "
                          f"dtype {arr.dtype}")
    values = np.unique(arr)
    positive = values[values > 0]
    if len(positive) != 1 or values.min() < 0:
        raise LayoutError(f"mask {png} must hold 0 and exactly one defect pixel_value; got values "
                          f"{values[:10].tolist()}")
    value = int(positive[0])
    if value not in defects:
        raise LayoutError(f"mask {png} has pixel value {value}, which defects_config.json does not list "
                          f"(it lists {sorted(defects)})")
    return defects[value], arr > 0


def _resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool mask at size x size: PIL nearest resize, as dataset.TestDataset resizes masks."""
    resized = mask_transform(size)(Image.fromarray(mask.astype(np.uint8) * 255))
    return resized.numpy().astype(bool)


def load_gt(item: TestImage, size: int, defects: dict[int, DefectConfig] | None = None) -> np.ndarray:
    """The union of an item's masks as uint8 0 / 1 at ``size x size`` (nearest resize; zeros for a
    normal image). MVTec masks: >= 128 is anomalous (dataset.TestDataset's convention). LOCO region
    PNGs: any positive value is anomalous; with ``defects`` given, each PNG's value is also checked."""
    out = np.zeros((size, size), np.uint8)
    if not item.label:
        return out
    for png in item.masks:
        if not png.is_file():
            raise LayoutError(f"test image {item.path} has no mask: expected {png}")
        if not is_loco_region(item, png):
            try:
                with Image.open(png) as m:
                    out |= mask_transform(size)(m.convert("L")).numpy().astype(np.uint8)
            except Exception as e:
                raise LayoutError(f"cannot read mask {png}: {type(e).__name__}: {e}") from None
        else:
            mask = read_region(png, defects)[1] if defects is not None else _loco_positive(png)
            out |= _resize_nearest(mask, size).astype(np.uint8)
    return out


def is_loco_region(item: TestImage, png: Path) -> bool:
    """A LOCO region PNG lies in a folder named after its image (``ground_truth/<type>/<stem>/``);
    an MVTec mask in the defect's folder (``ground_truth/<defect>/<stem>_mask.png``)."""
    return png.parent.name == item.path.stem


def _loco_positive(png: Path) -> np.ndarray:
    try:
        with Image.open(png) as im:
            arr = np.asarray(im)
    except Exception as e:
        raise LayoutError(f"cannot read mask {png}: {type(e).__name__}: {e}") from None
    if arr.ndim != 2:
        raise LayoutError(f"mask {png} must be a single-channel PNG (L mode); got shape {arr.shape}")
    return arr > 0
