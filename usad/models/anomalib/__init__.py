"""The Table 1 baselines that come from anomalib (``requirements-baselines.txt``): PatchCore, EfficientAD,
DRAEM and RD4AD, as methods of ``usad.compare``.

- ``data``: anomalib inputs from the split's file lists (no test set, validation from ``train/good``);
- ``weights``: local weights files and image folders, checked before compute; optional download;
- ``modules``: anomalib's Lightning modules with local weights and the authors' optimiser settings;
- ``training``: Lightning fit (no checkpoints, no metric-based choice) and batched prediction;
- ``methods``: the four adapters (``usad.models.base.Method``).
"""
