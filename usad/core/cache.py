"""On-disk cache of test-image backbone features, so reruns of evaluation skip the backbones.

One file per (branch, image): ``<dir>/<branch>/<key>.pt`` where the key hashes
everything the features depend on: the backbone name, its weights (path,
size and mtime of a local file), model kwargs, the branch input size, the
evaluation size, the stored dtype (``cache.dtype``: float16 entries are never
read as float32 ones or back), and the image file (absolute path, size,
mtime). Changing any of them misses the cache; nothing stale is ever reused. Files are written
atomically and read with ``weights_only=True``. Training features are never
cached (training is a one-off pass).

Size for CoalAD's 1,754 test images at paper defaults, float32: MACLU
626 x 384 (1.0 MB), MA2Patch 841 x 768 (2.6 MB), PatchCore 900 x 1536
(5.5 MB) per image, about 16 GB in all; ``cache.dtype: float16`` halves it
(scores then move by ~1e-3 relative).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from usad.core.artifacts import atomic_write
from usad.core.config import plain

log = logging.getLogger(__name__)


def file_identity(path) -> dict:
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def backbone_fingerprint(branch_cfg, eval_size: int) -> dict:
    """What a branch's test features depend on, besides the image."""
    weights = branch_cfg.get("weights")
    return {
        "backbone": branch_cfg["backbone"],
        "pretrained": branch_cfg["pretrained"],
        "weights": file_identity(weights) if weights else None,
        "model_kwargs": plain(branch_cfg.get("model_kwargs", {})),
        "image_size": branch_cfg["image_size"],
        "eval_size": eval_size,
    }


class FeatureCache:
    def __init__(self, root, dtype: str = "float32"):
        self.root = Path(root)
        self.dtype = getattr(torch, dtype)
        self.hits = self.misses = 0

    def _path(self, branch: str, fingerprint: dict, image) -> Path:
        blob = json.dumps({"branch": branch, "fp": fingerprint, "dtype": str(self.dtype), "image": file_identity(image)},
                          sort_keys=True)
        return self.root / branch / f"{hashlib.sha1(blob.encode()).hexdigest()}.pt"

    def load(self, branch: str, fingerprint: dict, images: list) -> dict[str, torch.Tensor] | None:
        """Stacked features of all ``images`` if every one is cached, else None."""
        parts = []
        for image in images:
            path = self._path(branch, fingerprint, image)
            try:
                parts.append(torch.load(path, map_location="cpu", weights_only=True))
            except FileNotFoundError:
                self.misses += 1
                return None
            except Exception as e:  # a damaged entry is recomputed, never trusted
                log.warning("feature cache entry %s unreadable (%s): recomputing", path, e)
                self.misses += 1
                return None
        self.hits += len(images)
        return {k: torch.stack([p[k] for p in parts]).float() for k in parts[0]}

    def save(self, branch: str, fingerprint: dict, images: list, feats: dict[str, torch.Tensor]) -> None:
        for i, image in enumerate(images):
            entry = {k: v[i].detach().to("cpu", self.dtype).clone() for k, v in feats.items()}
            atomic_write(self._path(branch, fingerprint, image), lambda tmp, e=entry: torch.save(e, tmp))
