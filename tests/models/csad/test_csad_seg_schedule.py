"""The segmentor's learning-rate schedule: constant (CSAD's code) or cosine annealing to min_lr over every
optimisation step (AeCSAD, Sec. IV), checked against the closed form."""

import math

import numpy as np
import pytest

from usad.core.config import load_config
from usad.models.csad.segmentor import Segmentor

from conftest import REPO


def fitted(section_name: str, *overrides: str) -> Segmentor:
    cfg = load_config(REPO / "tests" / "golden.yaml", [f"{section_name}.image_size=64", *overrides])
    section = cfg[section_name]
    seg = Segmentor(section, "cpu")
    rs = np.random.RandomState(0)
    n, s = 6, seg.size
    images = rs.randint(0, 255, (n, s, s, 3), dtype=np.uint8)
    labels = rs.randint(0, 3, (n, s, s)).astype(np.int64)
    return seg.fit(images, labels, images[:2], num_classes=3, seed=0)


def test_aecsad_anneals_to_min_lr_by_cosine():
    seg = fitted("aecsad", "aecsad.segmentor.epochs=2", "aecsad.segmentor.min_lr=1.0e-6")
    c = seg.cfg
    total = 2 * (6 // int(c["batch_size"]))
    lr0, eta = float(c["lr"]), 1.0e-6
    expected = [eta + (lr0 - eta) * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    assert c["schedule"] == "cosine"
    assert seg.lr_history == pytest.approx(expected, rel=1e-9)


def test_csad_keeps_the_code_constant_rate():
    seg = fitted("csad", "csad.segmentor.epochs=2")
    assert seg.cfg["schedule"] == "none"
    assert seg.lr_history == [float(seg.cfg["lr"])] * 6


def test_unknown_schedule_is_a_config_error():
    from usad.core.config import ConfigError

    with pytest.raises(ConfigError, match="csad.segmentor.schedule"):
        load_config(None, ["csad.segmentor.schedule=linear"])
