"""Run the trained detector on your own images.

    python -m usad.predict --config configs/coalad.yaml [--set KEY=VALUE] [--threshold T] [--out DIR] IMAGE_OR_FOLDER...

Folders are scanned for images, recursively (sorted; hidden files ignored).
Files without an image extension (usad.data.dataset.IMAGE_EXTENSIONS) are
skipped, and a warning says how many and names the first few. Images of any
size and aspect ratio work: each is stretched to the square evaluation size
like the test images (see usad.detector). Per image, in --out (default
<paths.results>/<category>/predict/): <name>_overlay.png (fused map, min-max
scaled, over the image at its own size), <name>_maps.png (input | M_obj |
M_attr | M_pc | fused at the evaluation size, each map on its own range over
this image, printed under it; see usad.figures) and <name>_maps.npz (m_fused,
m_obj, m_attr, m_pc at the evaluation size); for all images
scores.csv and scores.json (file, status, score, s_obj, s_attr, s_pc, and
verdict with --threshold: "anomalous" when score > T). <name> is the file stem,
made unique when two inputs share one. An unreadable image is reported (status
"error: ...") and skipped; the others are still processed, and the exit status
is 1. Config or model problems, an input path that does not exist, or no
image at all among the inputs stop the run before any work (exit status 2).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .artifacts import atomic_write
from .config import add_config_args, config_from_args
from .data.dataset import IMAGE_EXTENSIONS, DatasetError, is_image_file, list_images, load_rgb
from .detector import Detector
from .figures import maps_panel
from .pipeline import results_dir, run_cli
from .report import overlay, write_png

log = logging.getLogger("usad")

FIELDS = ("file", "status", "score", "s_obj", "s_attr", "s_pc", "verdict")


SHOW_SKIPPED = 5  # skipped files named in the warning


def non_image_files(folder: Path) -> list[Path]:
    """Visible files under ``folder`` that the image scan skips (extension not in IMAGE_EXTENSIONS)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def gather(inputs: list[str]) -> list[Path]:
    """Image files named directly or found in the given folders, in order; skipped files are reported."""
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += list_images(p)
            skipped = [str(f.relative_to(p)) for f in non_image_files(p)]
            if skipped:
                log.warning("%s: skipped %d file(s) without an image extension (%s): %s%s", p, len(skipped),
                            " ".join(IMAGE_EXTENSIONS), ", ".join(skipped[:SHOW_SKIPPED]),
                            ", ..." if len(skipped) > SHOW_SKIPPED else "")
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p} does not exist: give image files or folders")
    return files


def unique_stems(files: list[Path]) -> list[str]:
    """Output names: the file stem; where stems collide, the parent folder and the extension are added,
    then a counter, so no two inputs write to the same file."""
    def candidates(f: Path):
        yield f.stem
        yield f"{f.parent.name}_{f.stem}"
        yield f"{f.parent.name}_{f.stem}_{f.suffix.lstrip('.')}"

    names = [f.stem for f in files]
    for level in (1, 2):
        clash = {n for n in names if names.count(n) > 1}
        names = [list(candidates(f))[level] if n in clash else n for f, n in zip(files, names)]
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return unique


def write_table(out: Path, rows: list[dict]) -> None:
    """scores.csv (empty cells for missing values) and scores.json (null for them), atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    as_json = [{k: (None if v == "" else v) for k, v in r.items()} for r in rows]
    atomic_write(out / "scores.csv", lambda tmp: tmp.write_text(buf.getvalue()))
    atomic_write(out / "scores.json", lambda tmp: tmp.write_text(json.dumps(as_json, indent=2) + "\n"))


def save_maps(path: Path, maps: dict[str, np.ndarray]) -> None:
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez(f, **maps)
    atomic_write(path, write)


def predict_files(detector: Detector, files: list[Path], out: Path, threshold: float | None) -> list[dict]:
    """Detect in batches of ``data.batch_size``; an unreadable file is recorded and skipped."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(dict.fromkeys(FIELDS, ""), file=str(f)) for f in files]
    stems = unique_stems(files)
    bs = detector.cfg.data.batch_size
    for start in range(0, len(files), bs):
        batch = []
        for i in range(start, min(start + bs, len(files))):
            try:
                batch.append((i, load_rgb(files[i])))
            except DatasetError as e:
                rows[i]["status"] = f"error: {e}"
                log.error("%s", e)
        if not batch:
            continue
        results = detector.predict_rgb([image for _, image in batch], [str(files[i]) for i, _ in batch])
        for (i, image), r in zip(batch, results):
            rows[i].update(status="ok", score=r.score, s_obj=r.s_obj, s_attr=r.s_attr, s_pc=r.s_pc)
            if threshold is not None:
                rows[i]["verdict"] = "anomalous" if r.score > threshold else "normal"
            write_png(out / f"{stems[i]}_overlay.png", overlay(np.asarray(image), r.anomaly_map()))
            size = r.maps["m_fused"].shape[-1]  # the input as the detector saw it: stretched to the eval size
            write_png(out / f"{stems[i]}_maps.png", maps_panel(np.asarray(image.resize((size, size), Image.BICUBIC)), r.maps))
            save_maps(out / f"{stems[i]}_maps.npz", r.maps)
    write_table(out, rows)
    return rows


def format_rows(rows: list[dict]) -> str:
    """The scores as a plain-text table; failed images show their reason."""
    width = max([len("file")] + [len(r["file"]) for r in rows])
    head = f"{'file':{width}s}  {'score':>9s}  {'s_obj':>9s}  {'s_attr':>9s}  {'s_pc':>9s}  verdict / status"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["status"] == "ok":
            nums = "  ".join(f"{r[k]:9.4f}" for k in ("score", "s_obj", "s_attr", "s_pc"))
            lines.append(f"{r['file']:{width}s}  {nums}  {r['verdict']}")
        else:
            lines.append(f"{r['file']:{width}s}  {'-':>9s}  {'-':>9s}  {'-':>9s}  {'-':>9s}  {r['status']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--threshold", type=float, help="image score above which an image is called anomalous")
    parser.add_argument("--out", help="output folder (default <paths.results>/<category>/predict)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    files = gather(args.inputs)
    if not files:
        raise DatasetError(f"no image files found in {', '.join(args.inputs)}")
    out = Path(args.out) if args.out else results_dir(cfg) / "predict"
    rows = predict_files(Detector.from_config(cfg), files, out, args.threshold)
    print(format_rows(rows))
    log.info("results in %s (scores.csv, scores.json, *_overlay.png, *_maps.png, *_maps.npz)", out)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        log.error("%d of %d images could not be processed (see the status column of %s)",
                  len(failed), len(rows), out / "scores.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
