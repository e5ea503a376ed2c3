"""Run the trained detector on your own images.

    python -m usad.predict --config configs/coalad.yaml [--set KEY=VALUE] [--threshold T] [--out DIR] IMAGE_OR_FOLDER...

Folders are scanned for images (sorted; hidden and non-image files ignored).
Per image, in --out (default <paths.results>/<category>/predict/):
<name>_overlay.png (fused map over the image at its own size) and
<name>_maps.npz (fused and branch maps at the evaluation size); for all
images, scores.csv and scores.json (file, status, score, s_obj, s_attr, s_pc,
and verdict with --threshold). An unreadable image is reported and skipped;
the others are still processed (exit status 1 if any failed).
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

from .artifacts import atomic_write
from .config import add_config_args, config_from_args
from .data.dataset import DatasetError, list_images, load_rgb
from .detector import Detector
from .pipeline import results_dir, run_cli
from .report import overlay, write_png

log = logging.getLogger("usad")

FIELDS = ("file", "status", "score", "s_obj", "s_attr", "s_pc", "verdict")


def gather(inputs: list[str]) -> list[Path]:
    """Image files named directly or found in the given folders, in order."""
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p} does not exist: give image files or folders")
    return files


def unique_stems(files: list[Path]) -> list[str]:
    """Output names: the file stem, made unique with the parent folder when two stems collide."""
    stems = [f.stem for f in files]
    return [f"{f.parent.name}_{f.stem}" if stems.count(f.stem) > 1 else f.stem for f in files]


def write_table(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write(out / "scores.csv", lambda tmp: tmp.write_text(buf.getvalue()))
    atomic_write(out / "scores.json", lambda tmp: tmp.write_text(json.dumps(rows, indent=2) + "\n"))


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
        for (i, image), r in zip(batch, detector.predict([image for _, image in batch])):
            rows[i].update(status="ok", score=r.score, s_obj=r.s_obj, s_attr=r.s_attr, s_pc=r.s_pc)
            if threshold is not None:
                rows[i]["verdict"] = "anomalous" if r.score > threshold else "normal"
            write_png(out / f"{stems[i]}_overlay.png", overlay(np.asarray(image), r.anomaly_map()))
            save_maps(out / f"{stems[i]}_maps.npz", r.maps)
    write_table(out, rows)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'file':40s} {'score':>10s}  verdict / status"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"{Path(r['file']).name:40s} {r['score']:10.4f}  {r['verdict'] or ''}")
        else:
            lines.append(f"{Path(r['file']).name:40s} {'-':>10s}  {r['status']}")
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
    log.info("results in %s (scores.csv, *_overlay.png, *_maps.npz)", out)
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
