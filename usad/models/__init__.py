"""The methods: the paper's USAD (``usad.models.usad``) and the others that ``usad.compare`` runs beside it.

Each method is one folder (one concept a module) with an adapter class that
implements ``usad.models.base.Method``. ``METHODS`` maps the name used on the
command line (``--methods usad,patchcore,...``) to ``module:Class``; modules
are imported only when their method runs, so a method whose optional
requirements are not installed does not stop the others.
"""

from __future__ import annotations

import importlib

from usad.core.errors import UsadError

METHODS = {
    "usad": "usad.models.usad.method:USAD",
    # Table 1 baselines from anomalib (requirements-baselines.txt)
    "patchcore": "usad.models.anomalib.methods:PatchCore",
    "efficientad": "usad.models.anomalib.methods:EfficientAD",
    "draem": "usad.models.anomalib.methods:DRAEM",
    "rd4ad": "usad.models.anomalib.methods:RD4AD",
    # Table 1 baselines run from their official code (tools/official_harness.py)
    "simplenet": "usad.models.official.methods:SimpleNet",
    "rdpp": "usad.models.official.methods:RDPlusPlus",
    "ckaad": "usad.models.official.methods:CKAAD",
    "isstad": "usad.models.official.methods:ISSTAD",
    # the seed systems
    "csad": "usad.models.csad.method:CSAD",
    "aecsad": "usad.models.csad.method:AeCSAD",
    "npgmf": "usad.models.npgmf.method:NPGMF",
}


class UnknownMethodError(UsadError, ValueError):
    """A method name that is not in ``METHODS``."""


def method_class(name: str):
    """The adapter class of ``name`` (imports its module). ImportError when its module or packages are missing."""
    if name not in METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
