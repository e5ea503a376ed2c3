"""Calibrate the operating point on normal images: image and pixel thresholds at a false-alarm rate.

    python -m usad.calibrate --config configs/coalad.yaml [--set KEY=VALUE] \\
        (--images DIR_OR_FILE... | --holdout) [--false-alarm-rate 0.01] [--out FILE]

Scores normal images the models were NOT fitted on with the trained detector
and writes <paths.models>/<category>/operating_point.json (or --out FILE):
the image threshold at the false-alarm rate (the (k+1)-th largest normal
score, k = floor(rate * n): at most k of the n images score above it) and the
pixel threshold by the same rule on the per-image maxima of the fused maps (at
most k images get any mask pixel); see usad.belt.decisions. ``usad.predict`` and
``test_fusion.py`` then use it. The file records the SHA-256 of the three
model files, so it is refused once a branch is retrained: recalibrate.

--images: files or folders (scanned recursively, like usad.predict) of
normal belt images only. --holdout: the share of train/good that
``data.holdout_ratio`` kept out of fitting (train the three branches with the
same setting first). Both may be given. Refused: anomalous test images of the
dataset, and fewer than ceil(1 / rate) images (k would be 0). Warned about:
training images the models were fitted on (their scores are biased low:
PatchCore's memory bank holds their patches and the Gaussians were fitted on
them, so the threshold would be too low and new normal images would raise
more false alarms than asked), and test images (the evaluation's
operating-point metrics would then be in-sample for them). An unreadable image
is reported and skipped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from usad.core.artifacts import check_writable, file_sha256
from usad.core.config import add_config_args, config_from_args
from usad.core.data.dataset import NORMAL_KIND, holdout_split, train_samples
from usad.belt.decisions import (allowed_false_alarms, model_hashes, operating_point_path, required_images, score_config,
                        threshold_at_rate, write_operating_point)
from usad.belt.detector import Detector
from usad.core.errors import UsadError
from usad.core.cli import run_cli
from usad.belt.predict import gather

log = logging.getLogger("usad")

DEFAULT_RATE = 0.01   # false alarms per normal image (1 in 100), the default of --false-alarm-rate
SHOW = 5              # files named in a warning


class CalibrationError(UsadError, ValueError):
    """Calibration images that cannot give an operating point (none, too few, anomalous)."""


def false_alarm_rate(text: str) -> float:
    """argparse type of --false-alarm-rate: a number strictly between 0 and 1."""
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not 0 < rate < 1:
        raise argparse.ArgumentTypeError(f"expected a false-alarm rate between 0 and 1 (e.g. 0.01), got {text!r}")
    return rate


def dataset_dir(cfg) -> Path:
    return Path(cfg.data.root) / cfg.data.category


def training_split(cfg) -> tuple[list[Path], list[Path]]:
    """(images the models were fitted on, images ``data.holdout_ratio`` held out); empty without the dataset."""
    if not (dataset_dir(cfg) / "train" / NORMAL_KIND).is_dir():
        return [], []
    fitted, held = holdout_split(train_samples(dataset_dir(cfg)), cfg.data.holdout_ratio, cfg.seed)
    return [s.path for s in fitted], [s.path for s in held]


def held_out_images(cfg) -> list[Path]:
    """The train/good images kept out of fitting by ``data.holdout_ratio`` (--holdout)."""
    if cfg.data.holdout_ratio == 0:
        raise CalibrationError("--holdout: data.holdout_ratio is 0, so every training image was used for fitting. "
                               "Train the three branches with --set data.holdout_ratio=0.1 (say) and calibrate with "
                               "the same --set, or give other normal images with --images")
    held = training_split(cfg)[1]
    if not held:
        raise CalibrationError(f"--holdout: no training images in {dataset_dir(cfg) / 'train' / NORMAL_KIND}")
    return held


def training_overlap(images: list[Path], training: list[Path]) -> list[Path]:
    """Calibration images that are training images: the same file (resolved path) or the same content
    (SHA-256, compared only between files of equal size)."""
    resolved = {p.resolve() for p in training}
    by_size: dict[int, list[Path]] = {}
    for p in training:
        by_size.setdefault(p.stat().st_size, []).append(p)
    hashes: dict[Path, str] = {}

    def digest(p: Path) -> str:
        if p not in hashes:
            hashes[p] = file_sha256(p)
        return hashes[p]

    return [p for p in images if p.resolve() in resolved
            or any(digest(p) == digest(t) for t in by_size.get(p.stat().st_size, []))]


def in_folder(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def anomalous_test_images(cfg, images: list[Path]) -> list[Path]:
    """Images under the dataset's test/<kind> for an anomalous kind, or under ground_truth/."""
    root = dataset_dir(cfg)
    test = root / "test"
    return [p for p in images if in_folder(p, root / "ground_truth")
            or (in_folder(p, test) and p.resolve().relative_to(test.resolve()).parts[0] != NORMAL_KIND)]


def named(files: list[Path]) -> str:
    return ", ".join(str(f) for f in files[:SHOW]) + (", ..." if len(files) > SHOW else "")


def check_images(cfg, images: list[Path], rate: float) -> int:
    """Refuse anomalous or too few images; warn about training and test images. Returns how many are
    training images the models were fitted on."""
    if not images:
        raise CalibrationError("no calibration images: give normal belt images with --images, or --holdout")
    anomalous = anomalous_test_images(cfg, images)
    if anomalous:
        raise CalibrationError(f"{len(anomalous)} calibration image(s) are anomalous test images or masks of "
                               f"{dataset_dir(cfg)} ({named(anomalous)}): calibrate on normal images only")
    check_count(len(images), rate, "calibration image(s)")
    trained = training_overlap(images, training_split(cfg)[0])
    if trained:
        log.warning("%d of %d calibration images are training images the models were fitted on (%s): their scores "
                    "are biased low (PatchCore's memory bank holds their patches, the Gaussians were fitted on them), "
                    "so the thresholds come out too low and new normal images will raise more false alarms than "
                    "asked. Calibrate on held-out normals: train with --set data.holdout_ratio=0.1 and use --holdout, "
                    "or give other normal images", len(trained), len(images), named(trained))
    in_test = [p for p in images if in_folder(p, dataset_dir(cfg) / "test")]
    if in_test:
        log.warning("%d calibration images are test images of %s (%s): test_fusion.py's operating-point metrics "
                    "will be in-sample for them", len(in_test), dataset_dir(cfg), named(in_test))
    return len(trained)


def check_count(n: int, rate: float, what: str) -> None:
    need = required_images(rate)
    if n < need:
        raise CalibrationError(f"{n} {what} for a false-alarm rate of {rate:g}: at least {need} normal images are "
                               f"needed (with fewer, not one false alarm is allowed and the rate cannot be set). "
                               f"Give more normal images, or a rate of at least {1 / n:.3g} (1 / {n})")


def score_images(detector: Detector, files: list[Path]) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Fused scores and per-image maxima of the fused maps (evaluation size), in batches; unreadable files are
    reported and skipped. Returns (files scored, scores, map maxima)."""
    done, scores, maxima = [], [], []
    for i, _, r in detector.predict_files(files, lambda i, e: log.error("%s (skipped)", e)):
        done.append(files[i])
        scores.append(r.score)
        maxima.append(float(r.maps["m_fused"].max()))
        if (i + 1) % detector.cfg.data.batch_size == 0 or i + 1 == len(files):
            log.info("scored %d of %d calibration images", i + 1, len(files))
    return done, np.array(scores, np.float64), np.array(maxima, np.float64)


def calibrate(cfg, images: list[Path], rate: float, detector: Detector | None = None) -> dict:
    """The operating point of ``cfg``'s models on the normal ``images`` at a false-alarm ``rate`` (the content
    of operating_point.json)."""
    n_trained = check_images(cfg, images, rate)
    detector = detector or Detector(cfg)  # no operating point applied: raw scores
    files, scores, maxima = score_images(detector, images)
    check_count(len(files), rate, f"readable calibration image(s) (of {len(images)})")
    t_image, t_pixel = threshold_at_rate(scores, rate), threshold_at_rate(maxima, rate)
    n = len(files)
    return {
        "image_threshold": t_image, "pixel_threshold": t_pixel, "false_alarm_rate": rate, "n_images": n,
        "allowed_false_alarms": allowed_false_alarms(n, rate),
        "calibration_false_alarm_rate": float(np.mean(scores > t_image)),
        "calibration_mask_rate": float(np.mean(maxima > t_pixel)),
        "rules": {"image": "anomalous when s_fused > image_threshold = the (k+1)-th largest calibration score, "
                           "k = floor(false_alarm_rate * n_images)",
                  "pixel": "mask = fused map > pixel_threshold = the (k+1)-th largest per-image maximum of the "
                           "calibration images' fused maps (evaluation size)"},
        "models": model_hashes(cfg), "score_config": score_config(cfg),
        "category": cfg.data.category, "holdout": {"data.holdout_ratio": cfg.data.holdout_ratio, "seed": cfg.seed},
        "n_training_images": n_trained,
        "images": [{"file": str(f.resolve()), "score": float(s), "map_max": float(m)}
                   for f, s, m in zip(files, scores, maxima)],
    }


def summary(content: dict, path: Path) -> str:
    n, k, s = content["n_images"], content["allowed_false_alarms"], np.array([i["score"] for i in content["images"]])
    return "\n".join([
        f"operating point from {n} normal images at a false-alarm rate of {content['false_alarm_rate']:g} "
        f"(k = {k} allowed above each threshold)",
        f"image threshold  {content['image_threshold']:.6g}   anomalous when score > it; "
        f"{100 * content['calibration_false_alarm_rate']:.2f}% of the calibration images are above it",
        f"pixel threshold  {content['pixel_threshold']:.6g}   mask = fused map > it; "
        f"{100 * content['calibration_mask_rate']:.2f}% of the calibration images have a mask pixel",
        f"normal scores    min {s.min():.6g}  median {np.median(s):.6g}  max {s.max():.6g}",
        f"written to {path}",
    ])


def main(argv=None) -> int:
    parser = add_config_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--images", nargs="+", default=[], metavar="DIR_OR_FILE", help="normal images (files or folders)")
    parser.add_argument("--holdout", action="store_true",
                        help="use the training images held out of fitting by data.holdout_ratio")
    parser.add_argument("--false-alarm-rate", type=false_alarm_rate, default=DEFAULT_RATE,
                        help=f"share of normal images allowed to be called anomalous (default {DEFAULT_RATE})")
    parser.add_argument("--out", help="operating point file (default <paths.models>/<category>/operating_point.json)")
    args = parser.parse_args(argv)
    if not args.images and not args.holdout:
        parser.error("give normal images with --images DIR_OR_FILE..., or --holdout")
    cfg = config_from_args(args)
    images = gather(args.images) + (held_out_images(cfg) if args.holdout else [])
    images = list({p.resolve(): p for p in images}.values())  # each file once (the first key keeps its place)
    out = Path(args.out) if args.out else operating_point_path(cfg)
    check_writable(out.parent, "--out" if args.out else "paths.models")
    content = calibrate(cfg, images, args.false_alarm_rate)
    write_operating_point(out, content)
    print(summary(content, out))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
