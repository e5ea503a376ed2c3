"""Backbones from the golden checkpoints, local files, random weights, and the offline error."""

import logging

import pytest
import torch

from usad.backbones import BackboneWeightsError, ResNetFeatures, ViTFeatures
from usad.patchcore import locally_aware_features

from conftest import TINY_VIT_B, TINY_VIT_S, require_golden


@pytest.mark.parametrize("fname, name, kwargs, size, grid", [
    ("maclu_vit_tiny.pth", "vit_small_patch14_dinov2.lvd142m", TINY_VIT_S, 350, 25),
    ("ma2patch_vit_tiny.pth", "vit_base_patch14_dinov2.lvd142m", TINY_VIT_B, 406, 29),
])
def test_golden_vits_resample_position_embedding(fname, name, kwargs, size, grid):
    path = require_golden() / "weights" / fname
    vit = ViTFeatures(name, size, weights=str(path), model_kwargs=kwargs)
    cls, patches = vit(torch.randn(2, 3, size, size))
    assert cls.shape == (2, kwargs["embed_dim"])
    assert patches.shape == (2, grid * grid, kwargs["embed_dim"])
    # the 37x37 checkpoint grid was resampled to the branch grid, and the weights really loaded
    assert vit.model.pos_embed.shape[1] == grid * grid + 1
    state = torch.load(path, weights_only=True)
    assert torch.equal(vit.model.patch_embed.proj.weight, state["patch_embed.proj.weight"].float())


def test_golden_resnet18_layer_shapes():
    path = require_golden() / "weights" / "patchcore_resnet18.pth"
    net = ResNetFeatures("resnet18", weights=str(path))
    f2, f3 = net(torch.randn(2, 3, 238, 238))
    assert f2.shape == (2, 128, 30, 30) and f3.shape == (2, 256, 15, 15)
    assert locally_aware_features(f2, f3).shape == (2, 900, 384)
    state = torch.load(path, weights_only=True)
    assert torch.equal(net.stem[0].weight, state["conv1.weight"].float())


def test_random_weights_warn_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        ViTFeatures("vit_small_patch14_dinov2.lvd142m", 70, pretrained=False, model_kwargs=TINY_VIT_S, key="maclu")
    assert "RANDOM weights" in caplog.text and "maclu.pretrained" in caplog.text


def test_offline_pretrained_vit_says_where_to_put_weights():
    # genuinely offline here (HF_HUB_OFFLINE=1 is set by conftest so the hub fails at once)
    with pytest.raises(BackboneWeightsError, match=r"--set maclu\.weights="):
        ViTFeatures("vit_small_patch14_dinov2.lvd142m", 350, pretrained=True, model_kwargs=TINY_VIT_S, key="maclu")


def test_offline_torchvision_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: torchvision must try to download
    with pytest.raises(BackboneWeightsError, match=r"--set patchcore\.weights="):
        ResNetFeatures("resnet18", pretrained=True)


def test_missing_or_mismatched_weight_files(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        ResNetFeatures("resnet18", weights=str(tmp_path / "nope.pth"))
    path = require_golden() / "weights" / "patchcore_resnet18.pth"
    with pytest.raises(BackboneWeightsError, match="does not fit"):
        ResNetFeatures("resnet34", weights=str(path))
    vit_path = require_golden() / "weights" / "maclu_vit_tiny.pth"
    with pytest.raises(BackboneWeightsError, match="does not fit"):
        ViTFeatures("vit_small_patch14_dinov2.lvd142m", 350, weights=str(vit_path), model_kwargs=TINY_VIT_B)
