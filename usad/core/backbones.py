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
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from usad.core.config import DEVICE_CHOICES, ConfigError
from usad.core.errors import UsadError

log = logging.getLogger(__name__)


class BackboneWeightsError(UsadError, RuntimeError):
    """Weights could not be obtained (offline, missing or mismatched file)."""


# Errors of a download (no network, hub or HTTP errors, timeouts): every other error while getting
# pretrained weights is a mismatch between the weights and the model built from the config.
NETWORK_MODULES = ("huggingface_hub", "httpx", "httpx2", "httpcore", "requests", "urllib3", "urllib", "ssl", "socket")


def is_download_error(error: BaseException) -> bool:
    return isinstance(error, (OSError, TimeoutError)) or type(error).__module__.split(".")[0] in NETWORK_MODULES


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _offline_help(what: str, name: str, key: str, reason: str, hub: bool = False) -> BackboneWeightsError:
    hf = ""
    if hub and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        hf = ";\n  - HF_HUB_OFFLINE is set, so only the Hugging Face cache was looked at: unset it to download"
    elif hub:
        hf = (";\n  - offline, set HF_HUB_OFFLINE=1 so that this message comes at once, not after about a minute of "
              "retries (weights in the cache still load)")
    cache = "Hugging Face cache (~/.cache/huggingface)" if hub else "torch hub cache (~/.cache/torch/hub/checkpoints)"
    return BackboneWeightsError(
        f"could not get the pretrained weights of {what} {name!r}: {reason}\n"
        f"  - with network: rerun, the weights download once into the {'Hugging Face' if hub else 'torch hub'} cache;\n"
        f"  - offline: put the checkpoint file somewhere local and pass --set {key}.weights=/path/to/file "
        f"(a state dict .pth/.bin/.safetensors of that exact model), or copy the {cache} from a machine with network{hf}."
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


def probe_vit(name: str, kwargs: dict, model_kwargs: dict, key: str) -> int:
    """Build timm model ``name`` without weights (meta device: no memory, no download); its patch size.

    An unknown name, or ``model_kwargs`` the model does not take, is a config error naming the key.
    """
    import difflib

    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"config key '{key}.backbone' = {name!r} is not a timm model{hint} "
                          f"(python -c \"import timm; print(timm.list_models('*dinov2*'))\" lists names)")
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        match = re.search(r"unexpected keyword argument '([^']+)'", str(e))
        if match and match.group(1) not in model_kwargs:  # one of ours (img_size, dynamic_img_size...)
            raise ConfigError(f"config key '{key}.backbone' = {name!r} is not a ViT that takes an image size "
                              f"({first_line(e)}); use a DINOv2 ViT (e.g. vit_small_patch14_dinov2.lvd142m)") from None
        if match:
            raise ConfigError(f"config key '{key}.model_kwargs' = {model_kwargs}: timm model {name!r} takes no "
                              f"argument {match.group(1)!r} ({first_line(e)}); fix or remove it") from None
        raise ConfigError(f"config key '{key}.model_kwargs' = {model_kwargs} cannot build timm model {name!r}: "
                          f"{first_line(e)}; check the values") from None
    except Exception as e:  # an invalid pretrained tag, a value the model rejects (AssertionError, ValueError...)
        raise ConfigError(f"config keys '{key}.backbone' = {name!r} and '{key}.model_kwargs' = {model_kwargs} do not "
                          f"build a timm model: {first_line(e)}; fix the name or the kwargs") from None
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        raise ConfigError(f"config key '{key}.backbone' = {name!r} is not a ViT with patch tokens; use a DINOv2 ViT "
                          f"(e.g. vit_small_patch14_dinov2.lvd142m)")
    return int(patch[0])


def vit_kwargs(image_size: int, model_kwargs: dict | None) -> dict:
    """timm.create_model arguments of a branch ViT: no head, built at the branch size (position embedding resampled)."""
    return dict(num_classes=0, dynamic_img_size=True, img_size=image_size, **(model_kwargs or {}))


def check_vit(name: str, image_size: int, model_kwargs: dict | None, key: str) -> int:
    """The name, ``model_kwargs`` and image size of a branch ViT, on a weightless build; its patch size."""
    patch = probe_vit(name, vit_kwargs(image_size, model_kwargs), model_kwargs or {}, key)
    check_patch_multiple(image_size, patch, name, key)
    return patch


def check_patch_multiple(image_size: int, patch: int, name: str, key: str) -> None:
    """The ViT cuts the image into patch x patch tiles: the size must be a multiple of the patch size."""
    if image_size % patch:
        below, above = image_size // patch * patch, (image_size // patch + 1) * patch
        sizes = f"{below} or {above}" if below >= 14 else f"{above}"
        raise ConfigError(f"config key '{key}.image_size' = {image_size} is not a multiple of the patch size {patch} "
                          f"of {name!r}; use {sizes} (nearest multiples of {patch})")


def forward_precision(x: torch.Tensor, precision: str):
    """Config key ``precision`` of the backbones' forward passes: ``fp32`` (the paper) runs as is;
    ``bf16`` runs under torch autocast on ``x``'s device (matrix products and convolutions in
    bfloat16, with float32 accumulation). The extractors return float32 features either way."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class ViTFeatures(nn.Module):
    """DINOv2 ViT built at the branch size: returns CLS (B, D) and patch tokens (B, N, D).

    Tokens come from ``forward_features`` after the final norm; token 0 is CLS,
    then the patch grid in row-major order (these checkpoints have no registers).
    ``precision``: fp32 or bf16 (``forward_precision``), set from the config by pipeline.build_branch.
    """

    precision = "fp32"

    def __init__(self, name: str, image_size: int, pretrained: bool = True, weights: str | None = None,
                 model_kwargs: dict | None = None, key: str = "backbone"):
        super().__init__()
        import timm

        kwargs = vit_kwargs(image_size, model_kwargs)
        self.patch_size = check_vit(name, image_size, model_kwargs, key)  # before any download or file read
        if weights is not None:
            path = _check_file(weights, key)
            try:
                self.model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
            except Exception as e:  # a wrong file comes as RuntimeError, KeyError, UnpicklingError, SafetensorError...
                raise BackboneWeightsError(
                    f"{key}.weights = {str(path)!r} does not fit timm model {name!r} with model_kwargs "
                    f"{model_kwargs or {}}: {first_line(e)}"
                ) from None
        elif pretrained:
            try:
                self.model = timm.create_model(name, pretrained=True, **kwargs)
            except Exception as e:
                if is_download_error(e):  # hub errors come in many types (OSError, HTTP, LocalEntryNotFound...)
                    raise _offline_help("timm model", name, key, first_line(e), hub=True) from None
                raise BackboneWeightsError(
                    f"the pretrained weights of timm model {name!r} do not fit the model built with "
                    f"{key}.model_kwargs = {model_kwargs or {}}: {first_line(e)}. Pretrained weights need the "
                    f"model's own architecture: remove the architecture keys from {key}.model_kwargs, or use "
                    f"{key}.pretrained=false (random weights) or {key}.weights=FILE of that architecture"
                ) from None
        else:
            _random_weights_warning(name, key)
            self.model = timm.create_model(name, pretrained=False, **kwargs)
        self.model.eval().requires_grad_(False)
        self.num_prefix_tokens = getattr(self.model, "num_prefix_tokens", 1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with forward_precision(x, self.precision):
            tokens = self.model.forward_features(x)
        tokens = tokens.float()
        return tokens[:, 0], tokens[:, self.num_prefix_tokens:]


def resnet_builder(name: str, key: str):
    """The torchvision builder of ResNet ``name``, checked on a weightless (meta) build: a ConfigError naming the key."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ConfigError(f"config key '{key}.backbone' = {name!r} is not a torchvision model; use a torchvision "
                          f"ResNet (e.g. wide_resnet50_2, resnet18)") from None
    with torch.device("meta"):  # the architecture alone, before any download or file read
        if not hasattr(builder(weights=None), "layer3"):
            raise ConfigError(f"config key '{key}.backbone' = {name!r} has no layer2/layer3; use a torchvision ResNet")
    return builder


def check_backbone(section, key: str) -> None:
    """Check a branch's backbone settings (name, model_kwargs, image size) without weights, downloads or data.

    ``section`` is the branch's config section, ``key`` its name (maclu, ma2patch or patchcore).
    """
    if key == "patchcore":
        resnet_builder(section.backbone, key)
        return
    check_vit(section.backbone, section.image_size, section.model_kwargs, key)


class ResNetFeatures(nn.Module):
    """torchvision ResNet truncated after layer3: returns the layer2[-1] and layer3[-1] maps.

    ``precision``: fp32 or bf16 (``forward_precision``), set from the config by pipeline.build_branch.
    """

    precision = "fp32"

    def __init__(self, name: str = "wide_resnet50_2", pretrained: bool = True, weights: str | None = None,
                 key: str = "patchcore"):
        super().__init__()
        import torchvision

        builder = resnet_builder(name, key)
        if weights is not None:
            path = _check_file(weights, key)
            model = builder(weights=None)
            try:
                state = load_state_file(path)
            except Exception as e:
                raise BackboneWeightsError(f"{key}.weights = {str(path)!r} is not a readable state dict "
                                           f"(.pth/.pt/.bin saved by torch.save, or .safetensors): {first_line(e)}") from None
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
                missing = [k for k in missing if not k.startswith(("layer4.", "fc."))]  # never run: may be left out
                if missing or unexpected:
                    raise RuntimeError(f"missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")
            except (RuntimeError, TypeError, AttributeError) as e:
                raise BackboneWeightsError(
                    f"{key}.weights = {str(path)!r} does not fit torchvision {name!r}: {str(e).splitlines()[0]}"
                ) from None
        elif pretrained:
            if "IMAGENET1K_V1" not in torchvision.models.get_model_weights(name).__members__:
                raise ConfigError(f"config key '{key}.backbone' = {name!r} has no IMAGENET1K_V1 weights in torchvision; "
                                  f"pass {key}.weights=FILE or use a ResNet such as wide_resnet50_2")
            try:
                model = builder(weights="IMAGENET1K_V1")
            except Exception as e:
                if is_download_error(e):
                    raise _offline_help("torchvision model", name, key, first_line(e)) from None
                raise BackboneWeightsError(
                    f"the pretrained weights of torchvision model {name!r} could not be loaded: {first_line(e)}. "
                    f"The file in the torch hub cache (~/.cache/torch/hub/checkpoints, or $TORCH_HOME/hub/checkpoints) "
                    f"is probably damaged: delete it and rerun, or pass --set {key}.weights=/path/to/file"
                ) from None
        else:
            _random_weights_warning(name, key)
            model = builder(weights=None)
        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
        self.layer2, self.layer3 = model.layer2, model.layer3
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with forward_precision(x, self.precision):
            f2 = self.layer2(self.stem(x))
            f3 = self.layer3(f2)
        return f2.float(), f3.float()


def load_state_file(path: Path):
    """A state dict from a local file, without executing code: safetensors, or torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device of config key ``device``: auto, cpu, cuda or cuda:N (a ConfigError naming the key otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"config key 'device' = {name!r} is not a device; use {DEVICE_CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"config key 'device' = {name!r} is not supported; use {DEVICE_CHOICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'device' = {name!r} but no CUDA GPU is available here; "
                              f"use --set device=cpu or device=auto (GPU when there is one)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"config key 'device' = {name!r} but this machine has {torch.cuda.device_count()} "
                              f"CUDA GPU(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of them or "
                              f"use device=auto")
    return device
