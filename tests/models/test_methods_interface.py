"""Every method of the registry is one adapter of the same interface (usad.models.base.Method)."""

import json

import pytest
import torch

from usad.core.config import load_config
from usad.models import METHODS, UnknownMethodError, method_class
from usad.models.base import Method

from conftest import REPO


def adapter(name):
    try:
        cls = method_class(name)
    except ImportError as e:  # an optional group that is not installed (the harness says "not run: ...")
        pytest.skip(f"{name}: {e}")
    return cls(load_config(REPO / "tests" / "golden.yaml"), torch.device("cpu"))


@pytest.mark.parametrize("name", list(METHODS))
def test_adapter_implements_the_interface(name):
    m = adapter(name)
    assert isinstance(m, Method) and m.name == name
    # USAD's settings are the whole of configs/coalad.yaml; every other method has its own section
    assert name == "usad" or m.section is not None, f"{name}: no config section {m.section_key!r} (configs/methods/{m.section_key}.yaml)"
    for step in ("fit", "predict"):
        assert getattr(type(m), step) is not getattr(Method, step), f"{name} does not implement {step}"
    # what the harness records must be plain JSON (table1.json, stamps)
    json.dumps(m.fit_config())
    json.dumps(m.settings())
    assert all(isinstance(k, str) for k in m.weights_files())


def test_unknown_method_is_one_clear_error():
    with pytest.raises(UnknownMethodError, match="unknown method 'nope'; known methods: usad, "):
        method_class("nope")
