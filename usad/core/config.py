"""Configuration: one YAML of paper defaults plus overrides, nanoGPT-style.

``configs/coalad.yaml`` is both the paper's defaults and the schema: every
other config file and every ``--set key=value`` override is merged on top of
it, and a key it does not know, or a value of the wrong type, is an error
that names the key. Each other method of ``usad.compare`` has its defaults in
``configs/methods/<name>.yaml``, which become the section ``<name>`` of the
same schema (``--set efficientad.train_steps=100``). There a key whose default
is null takes a path string, and a key ending in ``_kwargs`` is a free-form
mapping passed to a library.
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from usad.core.errors import UsadError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "coalad.yaml"
METHOD_CONFIGS = REPO_ROOT / "configs" / "methods"   # <name>.yaml: the defaults of method <name> (usad.compare)

# Keys whose value is a free-form mapping (passed through to a library).
FREE_FORM = {"maclu.model_kwargs", "ma2patch.model_kwargs"}
# Keys that default to null but take a value of this type.
NULLABLE = {"cache.dir": str, "patchcore.bank_memmap": str, "maclu.weights": str, "ma2patch.weights": str, "patchcore.weights": str}
# Numeric keys with a valid range, checked after the type: (lo, hi) with inclusive bounds, None = open;
# a bound written as an ``Open(x)`` excludes x itself (e.g. cov_eps must be > 0, not >= 0).


class Open(float):
    """An exclusive range bound: ``(Open(0.0), None)`` means ``value > 0``."""


RANGES = {
    "data.batch_size": (1, None), "data.eval_size": (14, None), "data.holdout_ratio": (0.0, Open(1.0)),
    "maclu.image_size": (14, None), "ma2patch.image_size": (14, None), "patchcore.image_size": (32, None),
    "maclu.n_clusters": (2, None), "patchcore.k_nearest": (2, None),
    "maclu.sigma": (0.0, None), "ma2patch.sigma": (0.0, None), "patchcore.sigma": (0.0, None),
    "maclu.cov_eps": (Open(0.0), None), "ma2patch.cov_eps": (Open(0.0), None), "fusion.blur_ksize": (1, None),
    "patchcore.train_ratio": (0.0, 1.0), "patchcore.coreset_ratio": (0.0, 1.0),
    "patchcore.projection_eps": (Open(0.0), Open(1.0)),
    "compare.validation_ratio": (0.0, Open(1.0)),  # share of train/good held out as validation (usad.compare)  # the Johnson-Lindenstrauss bound needs 0 < eps < 1
}


def in_range(value, lo, hi) -> bool:
    """``lo <= value <= hi``, strict at an ``Open`` bound; None is unbounded."""
    if lo is not None and (value <= lo if isinstance(lo, Open) else value < lo):
        return False
    return hi is None or (value < hi if isinstance(hi, Open) else value <= hi)


def describe_range(lo, hi) -> str:
    """``[1, inf)``, ``(0.0, inf)``, ``[0.0, 1.0]``, ``(0.0, 1.0)``."""
    left = "(-inf" if lo is None else f"({float(lo)!r}" if isinstance(lo, Open) else f"[{lo!r}"
    right = "inf)" if hi is None else f"{float(hi)!r})" if isinstance(hi, Open) else f"{hi!r}]"
    return f"{left}, {right}"


# ``device``: auto, cpu, cuda or cuda:N (checked here; whether a GPU is there is checked when it is used).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
DEVICE_CHOICES = "auto | cpu | cuda | cuda:N (N = GPU index, e.g. cuda:0)"
# Keys that take an int or the word "auto".
INT_OR_AUTO = {"data.num_workers"}
# Keys restricted to a set of values.
CHOICES = {"patchcore.bank_dtype": ("float32", "float16"), "cache.dtype": ("float32", "float16"),
           "maclu.kmeans": ("auto", "sklearn", "torch"), "precision": ("fp32", "bf16"),
           "csad.segmentor.schedule": ("none", "cosine"), "aecsad.segmentor.schedule": ("none", "cosine")}


class ConfigError(UsadError, ValueError):
    """A config file or override that does not fit the schema."""


class Config(dict):
    """A nested dict with attribute access: ``cfg.maclu.tau``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def to_dict(self) -> dict:
        return {k: plain(v) for k, v in self.items()}


def plain(value: Any) -> Any:
    """A config value as plain Python (Config sections become dicts), e.g. for saving."""
    return value.to_dict() if isinstance(value, Config) else copy.deepcopy(value)


def _wrap(d: dict) -> Config:
    return Config({k: _wrap(v) if isinstance(v, dict) else v for k, v in d.items()})


def _read_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read as UTF-8 text: {e}") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as e:  # too deep / too many digits: PyYAML raises these raw
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _is_finite(x: int | float) -> bool:
    """A finite float (ints too large for a float are not)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _method_section(key: str) -> bool:
    """Whether ``key`` lies in a section from ``configs/methods/``."""
    return (METHOD_CONFIGS / f"{key.split('.')[0]}.yaml").is_file()


def _free_form(key: str) -> bool:
    return key in FREE_FORM or (key.endswith("_kwargs") and _method_section(key))


@functools.lru_cache(maxsize=None)
def _method_defaults(section: str) -> dict:
    return _read_yaml(METHOD_CONFIGS / f"{section}.yaml")


def _method_path_key(key: str) -> bool:
    """A key of a method section whose default (in its configs/methods file) is null: a path string or null, also
    after another config file gave it a path."""
    if not _method_section(key):
        return False
    node: Any = _method_defaults(key.split(".")[0])
    for part in key.split(".")[1:]:
        node = node.get(part) if isinstance(node, dict) else None
    return node is None


def _check_value(key: str, value: Any, default: Any) -> Any:
    """Validate ``value`` against the type of ``default``; returns the value (ints widened to float)."""
    if key not in NULLABLE and _method_path_key(key):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a path string or null, got {value!r}")
        return value
    if _free_form(key):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        for name, arg in value.items():
            if isinstance(name, str) and ":" in name:
                raise ConfigError(
                    f"config key {key!r}: {name!r} is not a keyword argument name. YAML needs a space after "
                    f"each colon: write {key}=\"{{{name.replace(':', ': ', 1)}}}\", not {{{name}}} (which YAML "
                    f"reads as one key {name!r} without a value)")
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigError(f"config key {key!r}: {name!r} is not a keyword argument name "
                                  f"(give NAME: VALUE pairs, e.g. {key}=\"{{depth: 2}}\")")
            if arg is None:
                raise ConfigError(
                    f"config key {key!r}: {name!r} has no value (null). Give it one, with a space after the "
                    f"colon: {key}=\"{{{name}: VALUE}}\"; to use the model's default, leave {name!r} out")
        return value
    if key in NULLABLE:
        if value is not None and not isinstance(value, NULLABLE[key]):
            raise ConfigError(f"config key {key!r} must be a path string or null, got {value!r}")
        return value
    if key in INT_OR_AUTO:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ConfigError(f"config key {key!r} must be 'auto' or an integer >= 0, got {value!r}")
        return value
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"config key {key!r} must be one of {CHOICES[key]}, got {value!r}")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _is_finite(value)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"config key {key!r} must be of type {type(default).__name__} (default {default!r}), "
            f"got {type(value).__name__} {value!r}"
        )
    if key in RANGES and not in_range(value, *RANGES[key]):
        raise ConfigError(f"config key {key!r} must be in {describe_range(*RANGES[key])}, got {value!r}")
    if key == "device" and not DEVICE_PATTERN.fullmatch(value):
        raise ConfigError(f"config key 'device' must be one of {DEVICE_CHOICES}, got {value!r}")
    return value


def _merge(base: dict, override: dict, prefix: str = "") -> None:
    for key, value in override.items():
        full = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {full!r} (known keys here: {known})")
        if isinstance(base[key], dict) and not _free_form(full):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full!r} is a section; give a mapping or set {full}.<key>")
            _merge(base[key], value, prefix=f"{full}.")
        else:
            base[key] = _check_value(full, value, base[key])


def parse_override(text: str) -> dict:
    """``"maclu.tau=1.2"`` -> ``{"maclu": {"tau": 1.2}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. maclu.tau=1.2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, RecursionError, ValueError) as e:  # too deep / too many digits: PyYAML raises these raw
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def default_config() -> dict:
    """The schema: the paper's defaults, with each method's defaults file as its section."""
    cfg = _read_yaml(DEFAULT_CONFIG)
    for path in sorted(METHOD_CONFIGS.glob("*.yaml")):
        if path.stem in cfg:
            raise ConfigError(f"{path}: section {path.stem!r} is already in {DEFAULT_CONFIG.name}")
        cfg[path.stem] = _read_yaml(path)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Paper defaults and method defaults, then the file at ``path`` (if any), then ``KEY=VALUE`` overrides."""
    cfg = default_config()
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG.resolve():
        _merge(cfg, _read_yaml(Path(path)))
    for text in overrides:
        _merge(cfg, parse_override(text))
    return _wrap(cfg)


def with_overrides(cfg: Config, *overrides: str) -> Config:
    """A copy of ``cfg`` with ``KEY=VALUE`` overrides applied (validated like --set)."""
    d = cfg.to_dict()
    for text in overrides:
        _merge(d, parse_override(text))
    return _wrap(d)


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (merged onto configs/coalad.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one key, e.g. --set maclu.tau=1.2 (repeatable; value parsed as YAML)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
