"""Run MVTec's own MVTec LOCO AD evaluation code on our anomaly maps, side by side with ours.

MVTec's code is never copied into this project: this tool runs it, unmodified, in a
subprocess, from a clone the user made (a public copy is
``git clone https://github.com/cinout/loco_ad_eval``; this project checks against commit
``PINNED_COMMIT``), given with ``--authors DIR`` (default ``../shared/authors/mvtec_loco_eval``
beside the repository). It needs ``tifffile`` (``requirements-test.txt``), numpy, pillow, tqdm.

    python tools/loco_eval_harness.py --data DATA/pushpins --maps maps.npz --work WORK --out result.json

``--data``: an MVTec LOCO layout category folder (e.g. one made by
``usad.core.data.loco_synthetic``). ``--maps``: an ``.npz`` with ``maps`` (n, H, W) float, one
per test image in ``read_layout(data).test`` order, at the images' size. The tool writes

    WORK/dataset/<object> -> DATA              (a link: their code accepts only the five LOCO names)
    WORK/anomaly_maps/<object>/test/<defect>/<stem>.tiff     (float32)
    WORK/official/metrics.json                 (their output)

and ``--out``: ``{"official": their metrics.json, "ours": usad.core.loco_metrics.loco_metrics on the
same float32 maps, "authors_commit", "pinned_commit", "object_name", "curve_max_distance", "data"}``.
The commit comes from ``git rev-parse HEAD`` of the clone, else from the row of its folder in an
``ABOUT.md`` beside it, else "unknown".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from usad.core.data.layouts import Layout, read_layout  # noqa: E402
from usad.core.errors import UsadError  # noqa: E402
from authors_harness import authors_commit  # noqa: E402 (tools/: one way to record a clone's commit)

DEFAULT_AUTHORS = REPO.parent / "shared" / "authors" / "mvtec_loco_eval"
PINNED_COMMIT = "966f15a77e8a55c3aad0e9cc12d03952c81dd1d3"
OBJECT_NAMES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")  # their choices
SCRIPT = "evaluate_experiment.py"
CURVE_MAX_DISTANCE = 0.01      # their default


class HarnessError(UsadError, RuntimeError):
    """Bad arguments or a failed run of MVTec's code: one message."""


def check_authors(authors) -> Path:
    authors = Path(authors).expanduser().resolve()
    missing = [s for s in (SCRIPT, "src/metrics.py", "src/aggregation.py") if not (authors / s).is_file()]
    if missing:
        raise HarnessError(f"{authors} is not a clone of MVTec's LOCO evaluation code (missing {missing}); "
                           f"pass --authors DIR (git clone https://github.com/cinout/loco_ad_eval)")
    return authors


def object_name_for(layout: Layout, object_name: str | None) -> str:
    name = object_name or (layout.category if layout.category in OBJECT_NAMES else "pushpins")
    if name not in OBJECT_NAMES:
        raise HarnessError(f"--object {name!r}: MVTec's code accepts only {list(OBJECT_NAMES)}")
    return name


def write_tiff(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array, np.float32), mode="F").save(path, format="TIFF")


def write_maps(layout: Layout, maps: np.ndarray, folder: Path) -> None:
    """``folder/test/<defect>/<stem>.tiff`` for each test item, float32."""
    for item, m in zip(layout.test, maps):
        write_tiff(folder / "test" / item.defect / f"{item.path.stem}.tiff", m)


def prepare(layout: Layout, maps, work: Path, object_name: str) -> tuple[Path, Path]:
    """The dataset link and the TIFF maps under ``work`` (their previous content replaced)."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or len(maps) != len(layout.test):
        raise HarnessError(f"maps must be (n, H, W) with n = {len(layout.test)} test images of {layout.root}; "
                           f"got {maps.shape}")
    with Image.open(layout.test[0].path) as im:
        if maps.shape[1:] != (im.height, im.width):
            raise HarnessError(f"maps are {maps.shape[2]} x {maps.shape[1]} px but the images are "
                               f"{im.width} x {im.height}: MVTec's code needs maps at the image size")
    for sub in ("dataset", "anomaly_maps", "official"):
        shutil.rmtree(work / sub, ignore_errors=True)
    (work / "dataset").mkdir(parents=True)
    os.symlink(layout.root.resolve(), work / "dataset" / object_name, target_is_directory=True)
    write_maps(layout, maps, work / "anomaly_maps" / object_name)
    return work / "dataset", work / "anomaly_maps"


def run_official(authors, data, maps, work, object_name: str | None = None,
                 curve_max_distance: float = CURVE_MAX_DISTANCE, timeout: float = 600) -> dict:
    """Their ``evaluate_experiment.py`` on ``maps`` (in ``read_layout(data).test`` order): their metrics.json."""
    authors = check_authors(authors)
    layout = read_layout(data)
    if layout.kind != "loco":
        raise HarnessError(f"{layout.root} is not an MVTec LOCO layout (no defects_config.json)")
    name = object_name_for(layout, object_name)
    work = Path(work).resolve()
    dataset_dir, maps_dir = prepare(layout, maps, work, name)
    cmd = [sys.executable, SCRIPT, "--object_name", name, "--dataset_base_dir", str(dataset_dir),
           "--anomaly_maps_dir", str(maps_dir), "--output_dir", str(work / "official"),
           "--curve_max_distance", repr(float(curve_max_distance)), "--niceness", str(os.nice(0))]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        out = subprocess.run(cmd, cwd=authors, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"MVTec's evaluation did not finish in {timeout} s") from None
    if out.returncode != 0:
        raise HarnessError(f"MVTec's evaluation failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads((work / "official" / "metrics.json").read_text())


def compare(authors, data, maps, work, object_name: str | None = None,
            curve_max_distance: float = CURVE_MAX_DISTANCE) -> dict:
    """Their metrics and ours on the same float32 maps, with the commit of their code."""
    from usad.core.loco_metrics import loco_metrics

    maps = np.asarray(maps, np.float32)
    official = run_official(authors, data, maps, work, object_name, curve_max_distance)
    layout = read_layout(data)
    return {"official": official, "ours": loco_metrics(layout, maps),
            "authors_commit": authors_commit(check_authors(authors)), "pinned_commit": PINNED_COMMIT,
            "object_name": object_name_for(layout, object_name), "curve_max_distance": curve_max_distance,
            "data": str(Path(data).resolve())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors", default=str(DEFAULT_AUTHORS), help="clone of MVTec's LOCO evaluation code")
    p.add_argument("--data", required=True, help="MVTec LOCO layout category folder")
    p.add_argument("--maps", required=True, help=".npz with `maps` (n, H, W) in read_layout(data).test order")
    p.add_argument("--work", required=True, help="working folder (its dataset/, anomaly_maps/, official/ replaced)")
    p.add_argument("--out", required=True, help="JSON file receiving their metrics and ours")
    p.add_argument("--object", default=None, help=f"object name given to their code, one of {list(OBJECT_NAMES)}")
    p.add_argument("--curve-max-distance", type=float, default=CURVE_MAX_DISTANCE)
    a = p.parse_args(argv)
    try:
        with np.load(a.maps) as z:
            if "maps" not in z:
                raise HarnessError(f"{a.maps} has no array `maps`")
            maps = z["maps"]
        result = compare(a.authors, a.data, maps, a.work, a.object, a.curve_max_distance)
    except (UsadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    o, u = result["official"], result["ours"]
    for kind in ("logical_anomalies", "structural_anomalies", "mean"):
        print(f"{kind:22s} AU-sPRO@0.05 official {o['localization']['auc_spro'][kind]['0.05']:.6f} "
              f"ours {u['au_spro'][kind]:.6f} | image AUROC official {o['classification']['auc_roc'][kind]:.6f} "
              f"ours {u['image_auroc'][kind]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
