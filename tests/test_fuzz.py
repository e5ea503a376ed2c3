"""Fuzzing (seeded loops): corrupted images and random configs always end in a clean, named UsadError.

Never a raw exception from deep inside PIL, PyYAML or numpy; and the dataset
checks reject exactly the files the loaders cannot use.
"""

import io
import math

import numpy as np
import pytest
import yaml
from PIL import Image

from usad.core.config import DEFAULT_CONFIG, load_config, parse_override
from usad.core.data.checks import check_dataset
from usad.core.data import dataset as ds
from usad.core.data.synthetic import make_synthetic_coalad
from usad.core.errors import UsadError

RNG_SEED = 20261123


def corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: flipped bytes, a truncation, spliced-in garbage or a zeroed block."""
    b = bytearray(data)
    how = rng.integers(4)
    if how == 0:
        for i in rng.integers(0, len(b), rng.integers(1, 20)):
            b[i] = int(rng.integers(256))
    elif how == 1:
        b = b[: int(rng.integers(0, len(b)))]
    elif how == 2:
        i = int(rng.integers(0, len(b)))
        b[i:i] = rng.bytes(int(rng.integers(1, 200)))
    else:
        i = int(rng.integers(0, len(b)))
        b[i:i + int(rng.integers(1, 400))] = bytes(min(len(b) - i, 400))
    return bytes(b)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def outcome(fn, *args):
    """None if ``fn`` succeeds, else its error, which must be a UsadError with a message."""
    try:
        fn(*args)
    except UsadError as e:
        assert str(e)
        return e
    except Exception as e:  # noqa: BLE001 - the point of the test
        pytest.fail(f"raw {type(e).__name__} leaked from {getattr(fn, '__name__', fn)}: {e}")
    return None


def test_corrupted_images_are_named_and_agree_with_the_loaders(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    root = make_synthetic_coalad(tmp_path, n_train=2, n_test_good=1, n_test_anomalous=1, size=48)
    image = root / "train" / "good" / "000.png"
    anomalous = next(p for p in sorted((root / "test").glob("*/*.png")) if p.parent.name != "good")
    mask = root / "ground_truth" / anomalous.parent.name / f"{anomalous.stem}_mask.png"
    with Image.open(image) as im:
        images = [encoded(im, "PNG"), encoded(im.convert("L"), "PNG"), encoded(im, "JPEG")]
    with Image.open(mask) as m:
        masks = [encoded(m, "PNG"), encoded(m.convert("RGB"), "PNG")]
    test_set = ds.TestDataset(root, 32)
    rejected = 0
    for case in range(160):
        if case % 2 == 0:   # a training image: the check fails exactly when the loader does
            image.write_bytes(corrupt(images[case // 2 % len(images)], rng))
            loaded, checked = outcome(ds.load_rgb, image), outcome(check_dataset, root, None, ("train",))
            assert (loaded is None) == (checked is None), case
            if checked is not None:
                assert str(image) in str(loaded) and f"{image}: cannot be decoded" in str(checked), case
        else:               # a mask: whatever the loader fails on, or would give an empty mask, the check rejects
            mask.write_bytes(corrupt(masks[case // 2 % len(masks)], rng))
            sample = next(s for s in test_set.samples if s.path == anomalous)
            loaded, checked = outcome(test_set.load_mask, sample), outcome(check_dataset, root, None, ("test",))
            if loaded is not None:
                assert checked is not None and str(mask) in str(checked), case
            if checked is None:
                assert test_set.load_mask(sample).sum() > 0, case
            else:
                assert str(mask) in str(checked), case
        rejected += checked is not None
    assert rejected > 60  # most corruptions are caught (some flips only touch pixel data)


# ------------------------------------------------------------------------------------ configs
DEFAULTS = yaml.safe_load(DEFAULT_CONFIG.read_text())
DEFAULTS.update({f.stem: yaml.safe_load(f.read_text()) for f in sorted((DEFAULT_CONFIG.parent / "methods").glob("*.yaml"))})
KEYS = ["seed", "device", "data.root", "data.batch_size", "data.num_workers", "maclu.tau", "maclu.model_kwargs",
        "maclu.weights", "patchcore.coreset_ratio", "fusion", "fusion.lambda_m", "nope", "maclu.tau.x", "", "a..b",
        "cache.dtype", "patchcore.bank_dtype", "data.download"]
VALUES = ["1", "-3", "2.5", "abc", "true", "null", "[1, 2]", "{a: 1}", "{", "'", "2026-11-23", "1e400", "1.0e400",
          ".nan", ".inf", "-.inf", "!!python/object:os.system ls", "", "{depth: [}", "- x", "0x10", "auto",
          "float16", "&a [*a]", "{<<: [1]}", "1" + "0" * 400, "1" + "0" * 5000]  # deep nesting: see below (slow)
ALPHABET = list("abc.=:{}[]'\"!&*#|>-\n\t\x00é 0123456789%@`,?") + ["maclu.tau=", "data.", "!!python/", "\ufeff", "\u2028"]


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("_kwargs"):  # maclu.model_kwargs, a method's *_kwargs: free-form
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def well_typed(cfg) -> None:
    """Every value of an accepted config has its default's type (floats finite); checked independently of config.py."""
    got, want = flat(cfg.to_dict()), flat(DEFAULTS)
    assert set(got) == set(want)
    for key, default in want.items():
        value = got[key]
        if key == "data.num_workers":
            assert value == "auto" or (type(value) is int and value >= 0), (key, value)
        elif default is None:
            assert value is None or isinstance(value, str), (key, value)
        elif isinstance(default, float):
            assert type(value) is float and math.isfinite(value), (key, value)
        else:
            assert type(value) is type(default), (key, value)


def test_random_overrides():
    rng = np.random.default_rng(RNG_SEED)
    for case in range(300):
        if case % 3 == 2:   # free text
            text = "".join(rng.choice(ALPHABET, rng.integers(1, 30)))
        else:
            text = f"{KEYS[rng.integers(len(KEYS))]}{'=' if rng.random() < 0.9 else ':'}{VALUES[rng.integers(len(VALUES))]}"
        err = outcome(load_config, None, [text])
        if err is None:
            well_typed(load_config(None, [text]))


@pytest.mark.parametrize("value", ["1" + "0" * 400, "1" + "0" * 5000, "[" * 3000, "{a: " * 2000, ".nan", ".inf"],
                         ids=["huge-int", "over-4300-digits", "deep-list", "deep-map", "nan", "inf"])
def test_pathological_values_are_rejected_with_the_key(value):
    key = "maclu.model_kwargs" if value[0] in "[{" else "maclu.tau"
    with pytest.raises(UsadError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"])


def test_random_config_files(tmp_path):
    rng = np.random.default_rng(RNG_SEED)
    f = tmp_path / "fuzzed.yaml"
    for case in range(100):
        if case % 4 == 3:   # raw random bytes, often not UTF-8
            f.write_bytes(rng.bytes(int(rng.integers(1, 300))))
        else:
            doc = {k: dict(v) if isinstance(v, dict) else v for k, v in DEFAULTS.items()}
            section = list(doc)[rng.integers(len(doc))]
            target = doc[section] if isinstance(doc[section], dict) and rng.random() < 0.7 else doc
            key = list(target)[rng.integers(len(target))] if target is not doc else section
            raw = VALUES[rng.integers(len(VALUES))]
            try:
                target[key] = yaml.safe_load(raw or "null")
            except Exception:
                target[key] = raw
            text = yaml.safe_dump(doc)
            if rng.random() < 0.3:
                i = int(rng.integers(len(text)))
                text = text[:i] + str(rng.choice(["{", ":", "\t", "]", "- ", "&x ", "*x"])) + text[i:]
            f.write_text(text)
        err = outcome(load_config, f)
        if err is None:
            well_typed(load_config(f))
        elif case % 4 == 3:
            assert str(f) in str(err), case


def test_parse_override_never_leaks_library_errors():
    for text in ["maclu.tau=!!python/object:os.system ls", "maclu.tau", "=1", ".=1", "maclu.=1", "maclu.tau={"]:
        with pytest.raises(UsadError):
            parse_override(text)
