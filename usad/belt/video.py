"""Detection on a video file or a camera stream: every N-th frame through the detector.

    python -m usad.predict --config configs/coalad.yaml --video FILE_OR_CAMERA_INDEX [--every N] [--out DIR]

Writes, in --out (default <paths.results>/<category>/predict/):
- ``<stem>.jsonl``: one JSON line per processed frame: ``frame`` (index in the
  video, from 0), ``time_s`` (frame / the video's frame rate; for a camera,
  seconds since the stream opened), ``score``, ``verdict`` and ``boxes``
  (null without an operating point / threshold; see usad.belt.decisions);
- ``<stem>_annotated.mp4``: the processed frames at their own size, with the
  fused map over them, the boxes, and the score and verdict written on top,
  at the video's frame rate divided by N.

<stem> is the file's stem, or ``camera<index>``. Frames per second through
the detector are logged. A frame that fails to decode is reported and skipped;
a file that cannot be opened as a video (missing, damaged, not a video) or a
camera that cannot be opened is one clear error before any model is loaded. A
camera stream runs until it stops delivering frames or Ctrl-C, which ends it
normally (both outputs are kept); for a file, Ctrl-C keeps nothing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from usad.core.artifacts import WriteError, default_file_mode
from usad.belt.decisions import overlay_with_boxes
from usad.core.errors import UsadError

log = logging.getLogger("usad")

FOURCC = "mp4v"          # MPEG-4 part 2: the mp4 encoder every OpenCV build (opencv-python-headless too) has
MAX_FAILED_READS = 50    # consecutive frames that fail to decode before a stream of unknown length is taken as ended
STREAM_FPS = 25.0        # frame rate assumed for a camera that reports none (timing of the annotated video only)
LOG_EVERY_S = 10.0       # seconds between progress lines
TEXT_HEIGHT = 1 / 30     # caption height as a share of the frame height
VERDICT_COLOUR = {"anomalous": (255, 40, 40), "normal": (60, 220, 60), None: (255, 255, 255)}


class VideoError(UsadError, OSError):
    """A video file or camera that cannot be opened or decoded."""


def parse_source(text: str) -> str | int:
    """A camera index (digits, when no file of that name exists) or a file path."""
    return int(text) if text.isdigit() and not Path(text).exists() else text


def source_stem(source: str | int) -> str:
    return f"camera{source}" if isinstance(source, int) else Path(source).stem


def open_video(source: str | int) -> cv2.VideoCapture:
    """An opened capture, or one clear VideoError."""
    if isinstance(source, int):
        cap = cv2.VideoCapture(source)
        if not cap.isOpened():
            raise VideoError(f"cannot open camera {source}: no camera with this index, or it is in use "
                             f"(0 is the first camera); give a video file instead")
        return cap
    path = Path(source)
    if not path.is_file():
        raise VideoError(f"video file {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
                         + ": give a video file or a camera index")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"cannot read {path} as a video: damaged, incomplete, or not a format OpenCV (FFmpeg) "
                         f"decodes. Re-encode it (e.g. to H.264 mp4) or give another file")
    return cap


def read_frames(cap: cv2.VideoCapture, every: int, live: bool, name: str) -> Iterator[tuple[int, float | None, np.ndarray]]:
    """``(index, time_s, RGB frame)`` of every ``every``-th frame. A frame that fails to decode is reported and
    skipped; a stream ends at its frame count, or after MAX_FAILED_READS failures in a row."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    total = 0 if live else int(max(cap.get(cv2.CAP_PROP_FRAME_COUNT), 0))
    start, index, failed = time.perf_counter(), 0, []
    while True:
        ok = cap.grab()
        frame = None
        if ok and index % every == 0:
            ok, frame = cap.retrieve()
        if not ok:
            failed.append(index)
            if len(failed) >= MAX_FAILED_READS or (total and index >= total - 1):
                break
            index += 1
            continue
        if failed:
            log.warning("%s: frame(s) %s could not be decoded: skipped", name, ", ".join(map(str, failed)))
            failed = []
        if frame is not None:
            t = time.perf_counter() - start if live else (index / fps if fps > 0 else None)
            yield index, t, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1
    broken = [i for i in failed if i < total]  # failures past the end are just the end of the stream
    if broken:
        log.warning("%s: frame(s) %s could not be decoded: skipped", name, ", ".join(map(str, broken)))


def caption(rgb: np.ndarray, text: str, colour) -> np.ndarray:
    """``text`` in the top-left corner, outlined in black so it reads on any background."""
    h, w = rgb.shape[:2]
    scale = max(h * TEXT_HEIGHT, 8) / 22  # Hershey simplex: ~22 px high at scale 1
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    scale *= min(1.0, 0.95 * w / width)  # narrow frames: smaller text, not cut off
    thick = max(1, round(scale * 2))
    org = (round(4 * scale), round(26 * scale))
    out = np.ascontiguousarray(rgb)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)
    return out


class Outputs:
    """``<stem>.jsonl`` and ``<stem>_annotated.mp4``, written under temporary names and renamed when done."""

    def __init__(self, out: Path, stem: str, fps: float):
        self.jsonl, self.mp4, self.fps = out / f"{stem}.jsonl", out / f"{stem}_annotated.mp4", fps
        try:
            out.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".jsonl.tmp", dir=out)
            fd_mp4, tmp_mp4 = tempfile.mkstemp(prefix=f".{stem}.", suffix="_annotated.mp4", dir=out)  # .mp4: the container
            os.close(fd_mp4)
        except OSError as e:
            raise WriteError(f"cannot write in {out}: {e.strerror or e}; choose another --out") from None
        self.lines, self.tmp_jsonl, self.tmp_mp4 = os.fdopen(fd, "w"), Path(tmp), Path(tmp_mp4)
        self.writer = None

    def add(self, record: dict, frame_rgb: np.ndarray) -> None:
        self.lines.write(json.dumps(record) + "\n")
        self.lines.flush()
        if self.writer is None:
            h, w = frame_rgb.shape[:2]
            self.size = (w, h)
            self.writer = cv2.VideoWriter(str(self.tmp_mp4), cv2.VideoWriter_fourcc(*FOURCC), self.fps, self.size)
            if not self.writer.isOpened():
                raise WriteError(f"cannot write {self.mp4}: OpenCV cannot open an {FOURCC} mp4 writer there")
        if frame_rgb.shape[1::-1] != self.size:  # a stream that changes size mid-way
            frame_rgb = cv2.resize(frame_rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))

    def close(self, keep: bool) -> None:
        """Rename both files into place (``keep``), or remove them."""
        self.lines.close()
        if self.writer is not None:
            self.writer.release()
        for tmp, final in ((self.tmp_jsonl, self.jsonl), (self.tmp_mp4, self.mp4)):
            if keep and tmp.is_file():
                try:
                    os.chmod(tmp, default_file_mode())
                    os.replace(tmp, final)
                except OSError as e:
                    raise WriteError(f"cannot write {final}: {e.strerror or e}; choose another --out") from None
            else:
                tmp.unlink(missing_ok=True)


def predict_video(detector, cap: cv2.VideoCapture, source: str | int, out: Path, every: int = 1) -> dict:
    """Every ``every``-th frame of an opened capture through ``detector``; returns a summary
    (frames processed, seconds, frames per second, output paths)."""
    live = isinstance(source, int)
    name, stem = str(source) if not live else f"camera {source}", source_stem(source)
    fps = cap.get(cv2.CAP_PROP_FPS)
    outputs = Outputs(Path(out), stem, (fps if fps > 0 else STREAM_FPS) / every)
    batch_size = 1 if live else detector.cfg.data.batch_size  # a live stream is not held back to fill a batch
    batch, done, keep = [], 0, False
    start = last_log = time.perf_counter()

    def process(batch) -> int:
        if not batch:
            return 0
        images = [Image.fromarray(rgb) for _, _, rgb in batch]
        for (index, t, rgb), r in zip(batch, detector.predict_rgb(images, [f"{name} frame {i}" for i, _, _ in batch])):
            outputs.add({"frame": index, "time_s": t, "score": r.score, "verdict": r.verdict, "boxes": r.boxes},
                        caption(overlay_with_boxes(rgb, r.anomaly_map(), r.boxes or []),
                                f"frame {index}  score {r.score:.4g}" + (f"  {r.verdict}" if r.verdict else ""),
                                VERDICT_COLOUR[r.verdict]))
        return len(batch)

    try:
        for frame in read_frames(cap, every, live, name):
            batch.append(frame)
            if len(batch) == batch_size:
                done += process(batch)
                batch = []
                if time.perf_counter() - last_log > LOG_EVERY_S:
                    last_log = time.perf_counter()
                    log.info("%s: %d frames, %.2f frames/s", name, done, done / (last_log - start))
        done += process(batch)
        keep = done > 0
    except KeyboardInterrupt:
        if not live:
            raise
        log.info("%s: stopped (Ctrl-C)", name)
        keep = done > 0
    finally:
        cap.release()
        outputs.close(keep)
    if not done:
        raise VideoError(f"no frame of {name} could be decoded (damaged or empty video): nothing was written")
    seconds = time.perf_counter() - start
    log.info("%s: %d frames processed (every %d) in %.1f s: %.2f frames/s; wrote %s and %s",
             name, done, every, seconds, done / seconds, outputs.jsonl, outputs.mp4)
    return {"frames": done, "seconds": seconds, "frames_per_s": done / seconds,
            "jsonl": outputs.jsonl, "video": outputs.mp4}
