"""Run the trained detector on your own images, or on a video or camera stream.

    python -m usad.predict --config configs/coalad.yaml [--set KEY=VALUE] [--out DIR]
                           [--operating-point FILE] [--threshold T] [--min-area A] IMAGE_OR_FOLDER...
    python -m usad.predict ... --video FILE_OR_CAMERA_INDEX [--every N]      (see usad.belt.video)

Folders are scanned for images, recursively (sorted; hidden files ignored).
Files without an image extension (usad.core.data.dataset.IMAGE_EXTENSIONS) are
skipped, and a warning says how many and names the first few. Images of any
size and aspect ratio work: each is stretched to the square evaluation size
like the test images (see usad.belt.detector). Per image, in --out (default
<paths.results>/<category>/predict/): <name>_overlay.png (fused map, min-max
scaled, over the image at its own size), <name>_maps.png (input | M_obj |
M_attr | M_pc | fused at the evaluation size, each map on its own range over
this image, printed under it; see usad.core.panels) and <name>_maps.npz (m_fused,
m_obj, m_attr, m_pc at the evaluation size); for all images
scores.csv and scores.json (file, status, score, s_obj, s_attr, s_pc,
verdict, boxes). <name> is the file stem, made unique when two inputs share one.

Decisions (usad.belt.decisions): with an operating point (--operating-point FILE,
or by default <paths.models>/<category>/operating_point.json when it exists,
made by ``python -m usad.calibrate``) every image gets a verdict ("anomalous"
when score > its image threshold), <name>_mask.png (the fused map at the
image's own size above its pixel threshold, 255 = anomalous) and boxes (the
mask's connected regions {x0, y0, x1, y1, area, peak} in the image's own
pixels, ends exclusive; JSON text in scores.csv), drawn on the overlay.
--min-area A drops regions of fewer than A pixels from the mask and the boxes.
--threshold T overrides the image threshold (and gives verdicts without an
operating point). An operating point made with other model files is refused. An unreadable image is reported (status
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

from usad.core.artifacts import atomic_write
from usad.core.config import add_config_args, config_from_args
from usad.core.data.dataset import IMAGE_EXTENSIONS, DatasetError, is_image_file, list_images
from usad.belt.decisions import overlay_with_boxes, write_mask_png
from usad.belt.detector import Detector
from usad.core.panels import maps_panel
from usad.core.cli import run_cli
from usad.core.paths import results_dir
from usad.core.outputs import write_npz, write_png
from usad.belt.video import open_video, parse_source, predict_video

log = logging.getLogger("usad")

FIELDS = ("file", "status", "score", "s_obj", "s_attr", "s_pc", "verdict", "boxes")


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
    w.writerows({**r, "boxes": json.dumps(r["boxes"]) if isinstance(r["boxes"], list) else r["boxes"]} for r in rows)
    as_json = [{k: (None if v == "" else v) for k, v in r.items()} for r in rows]
    atomic_write(out / "scores.csv", lambda tmp: tmp.write_text(buf.getvalue()))
    atomic_write(out / "scores.json", lambda tmp: tmp.write_text(json.dumps(as_json, indent=2) + "\n"))


def predict_files(detector: Detector, files: list[Path], out: Path) -> list[dict]:
    """Detect in batches of ``data.batch_size`` at the detector's thresholds; an unreadable file is recorded
    and skipped."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(dict.fromkeys(FIELDS, ""), file=str(f)) for f in files]
    stems = unique_stems(files)

    def skipped(i: int, error: DatasetError) -> None:
        rows[i]["status"] = f"error: {error}"
        log.error("%s", error)

    for i, image, r in detector.predict_files(files, skipped):
        rows[i].update(status="ok", score=r.score, s_obj=r.s_obj, s_attr=r.s_attr, s_pc=r.s_pc,
                       verdict=r.verdict or "", boxes="" if r.boxes is None else r.boxes)
        write_png(out / f"{stems[i]}_overlay.png", overlay_with_boxes(np.asarray(image), r.anomaly_map(), r.boxes or []))
        if r.mask is not None:
            write_mask_png(out / f"{stems[i]}_mask.png", r.mask)
        size = r.maps["m_fused"].shape[-1]  # the input as the detector saw it: stretched to the eval size
        write_png(out / f"{stems[i]}_maps.png", maps_panel(np.asarray(image.resize((size, size), Image.BICUBIC)), r.maps))
        write_npz(out / f"{stems[i]}_maps.npz", r.maps)
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
            boxes = f", {len(r['boxes'])} box(es)" if isinstance(r["boxes"], list) else ""
            lines.append(f"{r['file']:{width}s}  {nums}  {r['verdict']}{boxes}")
        else:
            lines.append(f"{r['file']:{width}s}  {'-':>9s}  {'-':>9s}  {'-':>9s}  {'-':>9s}  {r['status']}")
    return "\n".join(lines)


def count(minimum: int):
    """argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        if not (text.isdigit() and text.isascii() and int(text) >= minimum):
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return int(text)
    return parse


def main(argv=None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("inputs", nargs="*", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--video", metavar="FILE_OR_CAMERA_INDEX", help="a video file, or a camera index (0 = first camera)")
    parser.add_argument("--every", type=count(1), default=1, help="with --video: process every N-th frame (default 1)")
    parser.add_argument("--operating-point", metavar="FILE",
                        help="operating point from usad.calibrate (default <paths.models>/<category>/operating_point.json "
                             "when it exists)")
    parser.add_argument("--threshold", type=float,
                        help="image score above which an image is called anomalous (overrides the operating point's)")
    parser.add_argument("--min-area", type=count(0), default=0,
                        help="drop mask regions (and boxes) of fewer pixels, at the image's own size (default 0)")
    parser.add_argument("--out", help="output folder (default <paths.results>/<category>/predict)")
    args = parser.parse_args(argv)
    if bool(args.inputs) == bool(args.video):
        parser.error("give images or folders, or --video FILE_OR_CAMERA_INDEX (one of the two)")
    if args.every != 1 and not args.video:
        parser.error("--every applies to --video only")
    cfg = config_from_args(args)
    out = Path(args.out) if args.out else results_dir(cfg) / "predict"
    if args.video:
        source = parse_source(args.video)
        cap = open_video(source)  # an unreadable video is reported before the models are loaded
        try:
            detector = Detector.from_config(cfg, args.operating_point, args.threshold, args.min_area)
        except BaseException:
            cap.release()
            raise
        predict_video(detector, cap, source, out, args.every)
        return 0
    files = gather(args.inputs)
    if not files:
        raise DatasetError(f"no image files found in {', '.join(args.inputs)}")
    rows = predict_files(Detector.from_config(cfg, args.operating_point, args.threshold, args.min_area), files, out)
    print(format_rows(rows))
    log.info("results in %s (scores.csv, scores.json, *_overlay.png, *_mask.png with an operating point, *_maps.png, "
             "*_maps.npz)", out)
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        log.error("%d of %d images could not be processed (see the status column of %s)",
                  len(failed), len(rows), out / "scores.csv")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
