"""Local weights and image folders of the anomalib baselines: checked before compute, never downloaded in a run.

Every file a baseline reads is named by a config key of its section:
- ``weights``: the backbone's state dict (PatchCore, RD4AD: torchvision Wide-ResNet-50-2
  ``IMAGENET1K_V1``, which is timm's ``wide_resnet50_2.tv_in1k``);
- ``teacher_weights``: EfficientAD's pretrained teacher (anomalib's ``pretrained_teacher_<size>.pth``);
- ``imagenet_dir``: EfficientAD's ImageNet-like penalty images (an ImageFolder: ``<dir>/<class>/*.jpg``);
- ``dtd_dir``: DRAEM's anomaly-source textures (DTD ``images/<class>/*.jpg``).

A missing file is one ``AnomalibWeightsError`` naming the key. ``pretrained: false`` (tests)
builds random weights with a loud warning: explicit, never a fallback. ``download: true`` fetches
what is missing into the configured paths before anything is built (with network only); anomalib's
own downloads are never reached, because the modules are built with ``pre_trained=False`` and
given existing folders.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from usad.core.artifacts import atomic_write
from usad.core.backbones import first_line, load_state_file
from usad.core.errors import UsadError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's ImageFolder
NEVER_RUN = ("layer4.", "fc.")   # a full ResNet checkpoint holds these; the taps stop at layer3


class AnomalibWeightsError(UsadError, RuntimeError):
    """A weights file or image folder of an anomalib baseline that is missing, empty or does not fit."""


def random_weights_warning(what: str, key: str) -> None:
    log.warning("!" * 78 + "\n!! %s uses RANDOM weights (%s = false): a smoke run, NOT the published method.\n"
                + "!" * 78, what, key)


def require_file(key: str, value: str | None, what: str, where: str) -> Path:
    """The file named by config key ``key``; one error naming the key when it is unset or missing."""
    if value is None:
        raise AnomalibWeightsError(f"{key} is not set: {what} is needed. {where} Then pass --set {key}=/path/to/file "
                                   f"(or --set {key.rsplit('.', 1)[0]}.download=true on a machine with network)")
    path = Path(value).expanduser()
    if not path.is_file():
        raise AnomalibWeightsError(f"{key} = {value!r} does not exist: {what} is needed there. {where}")
    return path


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def require_image_folder(key: str, value: str | None, what: str, where: str, class_folders: bool) -> Path:
    """The image folder named by ``key``: it must hold images (in class subfolders for an ImageFolder)."""
    if value is None:
        raise AnomalibWeightsError(f"{key} is not set: {what} is needed. {where} Then pass --set {key}=/path/to/folder "
                                   f"(or --set {key.rsplit('.', 1)[0]}.download=true on a machine with network)")
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise AnomalibWeightsError(f"{key} = {value!r} is not a folder: {what} is needed there. {where}")
    images = image_files(folder)
    if not images:
        raise AnomalibWeightsError(f"{key} = {value!r} holds no images ({', '.join(IMAGE_SUFFIXES)}): {what} is "
                                   f"needed there. {where}")
    if class_folders and all(p.parent == folder for p in images):
        raise AnomalibWeightsError(f"{key} = {value!r} has its images directly inside; it must be an ImageFolder "
                                   f"with one subfolder per class (<folder>/<class>/*.jpg)")
    return folder


def load_backbone(extractor: nn.Module, path: Path, key: str) -> None:
    """Load a ResNet state dict into a timm ``features_only`` extractor (same key names as torchvision's)."""
    try:
        state = load_state_file(path)
    except Exception as e:
        raise AnomalibWeightsError(f"{key} = {str(path)!r} is not a readable state dict (.pth/.pt saved by "
                                   f"torch.save, or .safetensors): {first_line(e)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        missing, unexpected = extractor.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise AnomalibWeightsError(f"{key} = {str(path)!r} does not fit the backbone: {str(e).splitlines()[0]}") from None
    unexpected = [k for k in unexpected if not k.startswith(NEVER_RUN)]
    if missing or unexpected:
        raise AnomalibWeightsError(f"{key} = {str(path)!r} does not fit the backbone: missing keys {missing[:4]}, "
                                   f"unexpected keys {unexpected[:4]}")


def load_teacher(teacher: nn.Module, path: Path, key: str) -> None:
    """EfficientAD's pretrained teacher (a state dict of the patch description network)."""
    try:
        teacher.load_state_dict(load_state_file(path))
    except Exception as e:
        raise AnomalibWeightsError(f"{key} = {str(path)!r} is not the pretrained teacher of this model size: "
                                   f"{first_line(e)}") from None


# ----------------------------------------------------------------------------- download (with network, beforehand)

def _download_failed(key: str, what: str, e: BaseException) -> AnomalibWeightsError:
    return AnomalibWeightsError(f"{key}: could not download {what} ({first_line(e)}); without network, copy the "
                                f"file from a machine that has it and pass its path")


def download_backbone(timm_name: str, path: Path, key: str) -> None:
    """timm ``<arch>.<tag>`` pretrained weights, saved as a state dict at ``path``."""
    import timm

    log.info("downloading %s weights to %s", timm_name, path)
    try:
        state = timm.create_model(timm_name, pretrained=True).state_dict()
    except Exception as e:
        raise _download_failed(key, f"the {timm_name} weights", e) from None
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def download_anomalib_archive(info, member: str | None, target: Path, key: str) -> None:
    """One of anomalib's archives (``DownloadInfo``): extracted into ``target``, or only file ``member`` to ``target``."""
    from anomalib.data.utils import download_and_extract

    log.info("downloading %s to %s", info.url, target)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent if target.parent.is_dir() else None))
    try:
        try:
            download_and_extract(staging, info)
        except Exception as e:
            raise _download_failed(key, info.url, e) from None
        if member is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(staging), str(target))
        else:
            found = sorted(staging.rglob(member))
            if not found:
                raise AnomalibWeightsError(f"{key}: {info.url} holds no {member}")
            atomic_write(target, lambda tmp: shutil.copyfile(found[0], tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
