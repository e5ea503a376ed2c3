"""python -m usad.predict --video: frames of a video made with OpenCV from generated belt images, tiny random
backbones trained once for this module."""

import json
import logging

import cv2
import numpy as np
import pytest

from usad import Detector
from usad.core.data.synthetic import make_synthetic_coalad
from usad.belt.decisions import model_hashes, score_config, write_operating_point
from usad.core.cli import run_cli
from usad.models.usad.branches import train_branch
from usad.belt.predict import main as predict_main

from conftest import config_argv, tiny_config
from test_decisions import assert_same_boxes

SMALL = ("maclu.image_size=70", "ma2patch.image_size=84", "patchcore.image_size=64", "data.eval_size=84",
         "patchcore.coreset_ratio=0.1")
FPS, N_FRAMES, SIZE = 5.0, 10, (64, 48)   # frames of width x height 64 x 48: not square


def write_video(path, frames_rgb, fourcc):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, SIZE)
    assert w.isOpened(), f"OpenCV cannot write {fourcc} here"
    for f in frames_rgb:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()


def decoded(path) -> list[np.ndarray]:
    """Every frame of a video as OpenCV decodes it (RGB): what the detector must have seen."""
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("video")
    coal = make_synthetic_coalad(tmp / "data", n_train=6, n_test_good=5, n_test_anomalous=5, size=SIZE, seed=4)
    cfg = tiny_config(tmp, coal.parent, "coal_ad", *SMALL)
    for b in ("maclu", "ma2patch", "patchcore"):
        train_branch(b, cfg)
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((coal / "test").rglob("*.png"))]
    write_video(tmp / "belt.mp4", images[:N_FRAMES], "mp4v")
    # an operating point in the middle of these frames' scores and map maxima, so both verdicts and boxes occur
    raw = Detector(cfg).predict(decoded(tmp / "belt.mp4"))
    op_file = tmp / "op.json"
    write_operating_point(op_file, {
        "image_threshold": float(np.median([r.score for r in raw])),
        "pixel_threshold": float(np.median([r.maps["m_fused"].max() for r in raw])),
        "false_alarm_rate": 0.5, "n_images": len(raw), "models": model_hashes(cfg), "score_config": score_config(cfg)})
    return {"tmp": tmp, "cfg": cfg, "images": images, "op": op_file,
            "argv": config_argv(cfg, tmp) + ["--operating-point", str(op_file)]}


@pytest.fixture(scope="module")
def every_third(setup):
    out = setup["tmp"] / "out"
    assert run_cli(predict_main, setup["argv"] + ["--video", str(setup["tmp"] / "belt.mp4"), "--every", "3",
                                                  "--out", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "belt.jsonl").read_text().splitlines()]
    return {"out": out, "lines": lines}


def test_one_line_per_processed_frame(setup, every_third):
    lines = every_third["lines"]
    assert [ln["frame"] for ln in lines] == [0, 3, 6, 9]
    assert all(set(ln) == {"frame", "time_s", "score", "verdict", "boxes"} for ln in lines)
    assert [ln["time_s"] for ln in lines] == pytest.approx([i / FPS for i in (0, 3, 6, 9)])
    # the same scores, verdicts and boxes as the detector gives on the decoded frames
    detector = Detector.from_config(setup["cfg"], setup["op"])
    expected = detector.predict([decoded(setup["tmp"] / "belt.mp4")[i] for i in (0, 3, 6, 9)])
    assert [ln["score"] for ln in lines] == pytest.approx([r.score for r in expected], abs=1e-4)
    assert [ln["verdict"] for ln in lines] == [r.verdict for r in expected]
    for ln, r in zip(lines, expected):
        assert_same_boxes(ln["boxes"], r.boxes)
    # boxes in the frame's own pixels (64 x 48), and the operating point at work on this video
    assert all(b["x1"] <= SIZE[0] and b["y1"] <= SIZE[1] for ln in lines for b in ln["boxes"])
    assert {ln["verdict"] for ln in lines} <= {"anomalous", "normal"} and any(ln["boxes"] for ln in lines)


def test_annotated_video(every_third):
    frames = decoded(every_third["out"] / "belt_annotated.mp4")
    assert len(frames) == 4 and all(f.shape == (SIZE[1], SIZE[0], 3) for f in frames)
    cap = cv2.VideoCapture(str(every_third["out"] / "belt_annotated.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS / 3, rel=0.01)
    assert sorted(p.name for p in every_third["out"].iterdir()) == ["belt.jsonl", "belt_annotated.mp4"]  # no temporaries


def test_frames_per_second_are_logged(setup, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="usad"):
        assert run_cli(predict_main, setup["argv"] + ["--video", str(setup["tmp"] / "belt.mp4"), "--out",
                                                      str(tmp_path)]) == 0
    assert f"{N_FRAMES} frames processed (every 1)" in caplog.text and "frames/s" in caplog.text
    assert len((tmp_path / "belt.jsonl").read_text().splitlines()) == N_FRAMES


def corrupt_frame(path, index):
    """Zero the start of one frame's JPEG data in a Motion-JPEG AVI: that frame no longer decodes."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG start markers
    assert len(starts) == 6
    data[starts[index]:starts[index] + 600] = bytes(600)
    path.write_bytes(bytes(data))


def test_a_frame_that_fails_to_decode_is_reported_and_skipped(setup, tmp_path, caplog):
    video = tmp_path / "belt.avi"
    write_video(video, setup["images"][:6], "MJPG")
    corrupt_frame(video, 2)
    with caplog.at_level(logging.WARNING, logger="usad"):
        assert run_cli(predict_main, setup["argv"] + ["--video", str(video), "--out", str(tmp_path / "o")]) == 0
    assert "frame(s) 2 could not be decoded: skipped" in caplog.text
    lines = [json.loads(line) for line in (tmp_path / "o" / "belt.jsonl").read_text().splitlines()]
    assert [ln["frame"] for ln in lines] == [0, 1, 3, 4, 5]
    assert len(decoded(tmp_path / "o" / "belt_annotated.mp4")) == 5


@pytest.mark.parametrize("what", ["garbage", "truncated", "missing", "folder", "camera"])
def test_an_unreadable_video_is_one_clear_error(setup, tmp_path, caplog, what):
    source = {"garbage": tmp_path / "belt.mp4", "truncated": tmp_path / "cut.mp4", "missing": tmp_path / "none.mp4",
              "folder": tmp_path, "camera": "99"}[what]
    if what == "garbage":
        source.write_bytes(b"not a video at all" * 100)
    if what == "truncated":
        source.write_bytes((setup["tmp"] / "belt.mp4").read_bytes()[:400])
    with caplog.at_level(logging.ERROR, logger="usad"):
        rc = run_cli(predict_main, setup["argv"] + ["--video", str(source), "--out", str(tmp_path / "o")])
    assert rc == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    expected = {"garbage": "as a video", "truncated": "as a video", "missing": "does not exist",
                "folder": "does not exist (it is a folder)", "camera": "cannot open camera 99"}[what]
    assert expected in line and str(source) in line
    assert not (tmp_path / "o").exists()


def test_video_options_are_checked(setup):
    for argv in (["--video", "x.mp4", "frame.png"], [], ["--every", "2", "frame.png"], ["--video", "x.mp4", "--every", "0"]):
        with pytest.raises(SystemExit) as e:
            predict_main(setup["argv"] + argv)
        assert e.value.code == 2
