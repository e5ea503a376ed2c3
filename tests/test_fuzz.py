"""Fuzzing: corrupted PNG bytes and random configs always end in a clean, named UsadError."""

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from usad.config import DEFAULT_CONFIG, load_config, parse_override
from usad.data.checks import check_dataset
from usad.data.dataset import load_rgb
from usad.data.synthetic import make_synthetic_coalad
from usad.errors import UsadError

RNG_SEED = 20261123


def corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    how = rng.integers(4)
    if how == 0:  # flip random bytes
        for i in rng.integers(0, len(b), rng.integers(1, 20)):
            b[i] = int(rng.integers(256))
    elif how == 1:  # truncate
        b = b[: int(rng.integers(0, len(b)))]
    elif how == 2:  # splice in garbage
        i = int(rng.integers(0, len(b)))
        b[i:i] = rng.bytes(int(rng.integers(1, 200)))
    else:  # zero a block
        i = int(rng.integers(0, len(b)))
        b[i:i + int(rng.integers(1, 400))] = bytes(min(len(b) - i, 400))
    return bytes(b)


def test_corrupted_png_bytes(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    root = make_synthetic_coalad(tmp_path, n_train=2, n_test_good=1, n_test_anomalous=1, size=48)
    target = root / "train" / "good" / "000.png"
    failures = 0
    for case in range(150):
        target.write_bytes(corrupt(png, rng))
        try:
            load_rgb(target)
        except UsadError as e:
            assert str(target) in str(e), case
            failures += 1
        try:
            check_dataset(root, splits=("train",))
        except UsadError as e:
            assert str(target) in str(e) and "cannot be decoded" in str(e), case
    assert failures > 50  # most corruptions are caught (some flips only touch pixel data)


KEYS = ["seed", "device", "data.root", "data.batch_size", "maclu.tau", "maclu.model_kwargs", "maclu.weights",
        "patchcore.coreset_ratio", "fusion", "fusion.lambda_m", "nope", "maclu.tau.x", "", "a..b", "cache.dtype"]
VALUES = ["1", "-3", "2.5", "abc", "true", "null", "[1, 2]", "{a: 1}", "{", "'", "2026-11-23", "1e400", ".nan",
          "!!python/object:os.system ls", "", "{depth: [}", "- x", "0x10"]


def test_random_overrides_and_config_files(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    for case in range(300):
        text = f"{KEYS[rng.integers(len(KEYS))]}{'=' if rng.random() < 0.9 else ':'}{VALUES[rng.integers(len(VALUES))]}"
        try:
            cfg = load_config(None, [text])
        except UsadError as e:
            assert str(e), case
        else:
            assert isinstance(cfg.maclu.tau, float) and isinstance(cfg.data.batch_size, int), text
    base = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for case in range(100):
        doc = dict(base)
        section = list(doc)[rng.integers(len(doc))]
        if rng.random() < 0.5:
            raw = VALUES[rng.integers(len(VALUES))]
            try:
                doc[section] = yaml.safe_load(raw or "null")
            except yaml.YAMLError:
                doc[section] = raw
        text = yaml.safe_dump(doc)
        if rng.random() < 0.3:
            i = int(rng.integers(len(text)))
            text = text[:i] + str(rng.choice(["{", ":", "\t", "]", "- "])) + text[i:]
        f = tmp_path / f"c{case}.yaml"
        f.write_text(text)
        try:
            load_config(f)
        except UsadError as e:
            assert str(e), case


def test_parse_override_never_leaks_library_errors():
    with pytest.raises(UsadError):
        parse_override("maclu.tau=!!python/object:os.system ls")
