"""Frozen feature extractors: DINOv2 ViTs (timm) and ResNets (torchvision).

Weights, from the config section of a branch:
- ``pretrained: true``: the official weights (timm / Hugging Face hub for
  DINOv2, torchvision ``IMAGENET1K_V1`` for ResNets), downloaded or taken from
  the local cache.
- ``weights: PATH``: a local checkpoint. For timm it loads the way a
  pretrained file loads, so the 37 x 37 position embedding of a DINOv2
  checkpoint is resampled to the branch's grid.
- ``pretrained: false`` and no path: random weights, with a loud warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from .errors import UsadError

log = logging.getLogger(__name__)


class BackboneWeightsError(UsadError, RuntimeError):
    """Weights could not be obtained (offline, missing or mismatched file)."""


def _offline_help(what: str, name: str, key: str, reason: str) -> BackboneWeightsError:
    return BackboneWeightsError(
        f"could not get the pretrained weights of {what} {name!r}: {reason}\n"
        f"  - with network: rerun, the weights download once into the torch / Hugging Face cache;\n"
        f"  - offline: put the checkpoint file somewhere local and pass --set {key}.weights=/path/to/file "
        f"(a state dict .pth/.bin/.safetensors of that exact model), or copy the Hugging Face cache "
        f"(~/.cache/huggingface) / torch hub cache (~/.cache/torch/hub/checkpoints) from a machine with network."
    )


def _random_weights_warning(name: str, key: str) -> None:
    log.warning(
        "!" * 78 + "\n!! %s uses RANDOM weights (%s.pretrained=false, no %s.weights): results are a smoke "
        "run, NOT the paper's detector.\n" + "!" * 78, name, key, key,
    )


def _check_file(path: str | Path, key: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(f"{key}.weights = {str(path)!r} does not exist; give the path of a local checkpoint file")
    return path


class ViTFeatures(nn.Module):
    """DINOv2 ViT built at the branch size: returns CLS (B, D) and patch tokens (B, N, D).

    Tokens come from ``forward_features`` after the final norm; token 0 is CLS,
    then the patch grid in row-major order (these checkpoints have no registers).
    """

    def __init__(self, name: str, image_size: int, pretrained: bool = True, weights: str | None = None,
                 model_kwargs: dict | None = None, key: str = "backbone"):
        super().__init__()
        import timm

        kwargs = dict(num_classes=0, dynamic_img_size=True, img_size=image_size, **(model_kwargs or {}))
        if weights is not None:
            path = _check_file(weights, key)
            try:
                self.model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
            except (RuntimeError, KeyError, ValueError) as e:
                raise BackboneWeightsError(
                    f"{key}.weights = {str(path)!r} does not fit timm model {name!r} with model_kwargs "
                    f"{model_kwargs or {}}: {str(e).splitlines()[0]}"
                ) from None
        elif pretrained:
            try:
                self.model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as e:  # hub errors come in many types (OSError, HTTP, LocalEntryNotFound...)
                raise _offline_help("timm model", name, key, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        else:
            _random_weights_warning(name, key)
            self.model = timm.create_model(name, pretrained=False, **kwargs)
        self.model.eval().requires_grad_(False)
        self.num_prefix_tokens = getattr(self.model, "num_prefix_tokens", 1)
        self.patch_size = self.model.patch_embed.patch_size[0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.forward_features(x)
        return tokens[:, 0], tokens[:, self.num_prefix_tokens:]


class ResNetFeatures(nn.Module):
    """torchvision ResNet truncated after layer3: returns the layer2[-1] and layer3[-1] maps."""

    def __init__(self, name: str = "wide_resnet50_2", pretrained: bool = True, weights: str | None = None,
                 key: str = "patchcore"):
        super().__init__()
        import torchvision

        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError:
            raise BackboneWeightsError(f"{key}.backbone = {name!r} is not a torchvision model") from None
        if weights is not None:
            path = _check_file(weights, key)
            model = builder(weights=None)
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise BackboneWeightsError(f"{key}.weights = {str(path)!r} is not a readable state dict: {e}") from None
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError) as e:
                raise BackboneWeightsError(
                    f"{key}.weights = {str(path)!r} does not fit torchvision {name!r}: {str(e).splitlines()[0]}"
                ) from None
        elif pretrained:
            try:
                model = builder(weights="IMAGENET1K_V1")
            except Exception as e:
                raise _offline_help("torchvision model", name, key, f"{type(e).__name__}: {e}") from None
        else:
            _random_weights_warning(name, key)
            model = builder(weights=None)
        if not hasattr(model, "layer3"):
            raise BackboneWeightsError(f"{key}.backbone = {name!r} has no layer2/layer3; use a torchvision ResNet")
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
        self.layer2, self.layer3 = model.layer2, model.layer3
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f2 = self.layer2(self.stem(x))
        return f2, self.layer3(f2)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device = {name!r} but no CUDA GPU is available; use --set device=cpu or auto")
    return device
