"""Backbones from the golden checkpoints, local files, random weights, and the offline error."""

import logging
import urllib.error

import pytest
import torch
import torchvision

from usad.core.backbones import BackboneWeightsError, ResNetFeatures, ViTFeatures, resolve_device
from usad.core.config import ConfigError
from usad.models.usad.patchcore import locally_aware_features

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

    def no_network(url, *args, **kwargs):  # the library's download call fails as it does offline, network or not
        raise urllib.error.URLError(f"[Errno -2] Name or service not known: {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(BackboneWeightsError) as err:
        ResNetFeatures("resnet18", pretrained=True)
    msg = str(err.value)
    assert msg.startswith("could not get the pretrained weights of torchvision model 'resnet18': URLError: ")
    assert "--set patchcore.weights=/path/to/file" in msg and "~/.cache/torch/hub/checkpoints" in msg
    assert not list(tmp_path.rglob("*.pth"))  # nothing half-downloaded left in the cache


def test_offline_vit_hint_names_hf_hub_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as hf  # the hub reads the variable at import: keep it offline for this test
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneWeightsError) as err:
        ViTFeatures("vit_small_patch14_dinov2.lvd142m", 70, pretrained=True, model_kwargs=TINY_VIT_S, key="maclu")
    assert "set HF_HUB_OFFLINE=1 so that this message comes at once" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match="HF_HUB_OFFLINE is set, so only the Hugging Face cache was looked at"):
        ViTFeatures("vit_small_patch14_dinov2.lvd142m", 70, pretrained=True, model_kwargs=TINY_VIT_S, key="maclu")


# ------------------------------------------------------------------ config problems, found before any download
@pytest.mark.parametrize("pretrained", [False, True])
def test_unknown_model_kwarg_names_the_key_and_the_kwarg(pretrained):
    with pytest.raises(ConfigError) as err:
        ViTFeatures("vit_small_patch14_dinov2.lvd142m", 350, pretrained=pretrained, model_kwargs={"depht": 2}, key="maclu")
    msg = str(err.value)
    assert msg.startswith("config key 'maclu.model_kwargs' = {'depht': 2}: timm model "
                          "'vit_small_patch14_dinov2.lvd142m' takes no argument 'depht'")
    assert "pretrained weights" not in msg and "offline" not in msg


def test_model_kwarg_of_the_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"^config key 'ma2patch\.model_kwargs' = \{'depth': 'two'\} cannot build timm "
                                          r"model 'vit_base_patch14_dinov2\.lvd142m': TypeError"):
        ViTFeatures("vit_base_patch14_dinov2.lvd142m", 406, pretrained=True, model_kwargs={"depth": "two"}, key="ma2patch")


@pytest.mark.parametrize("pretrained", [False, True])
def test_unknown_timm_model_names_the_key(pretrained):
    with pytest.raises(ConfigError) as err:
        ViTFeatures("no_such_model", 350, pretrained=pretrained, key="maclu")
    assert str(err.value).startswith("config key 'maclu.backbone' = 'no_such_model' is not a timm model")
    with pytest.raises(ConfigError, match=r"did you mean 'vit_small_patch14_dinov2'"):
        ViTFeatures("vit_small_patch14_dinov", 350, pretrained=pretrained, key="maclu")
    with pytest.raises(ConfigError, match=r"'maclu\.backbone' = 'vit_small_patch14_dinov2\.nosuchtag' .*Invalid pretrained tag"):
        ViTFeatures("vit_small_patch14_dinov2.nosuchtag", 350, pretrained=pretrained, key="maclu")
    with pytest.raises(ConfigError, match=r"'maclu\.backbone' = 'resnet18' is not a ViT"):
        ViTFeatures("resnet18", 350, pretrained=pretrained, key="maclu")


@pytest.mark.parametrize("pretrained", [False, True])
def test_unknown_or_unfit_torchvision_model_names_the_key(pretrained):
    with pytest.raises(ConfigError, match=r"^config key 'patchcore\.backbone' = 'no_such_net' is not a torchvision model"):
        ResNetFeatures("no_such_net", pretrained=pretrained)
    with pytest.raises(ConfigError, match=r"^config key 'patchcore\.backbone' = 'vit_b_16' has no layer2/layer3"):
        ResNetFeatures("vit_b_16", pretrained=pretrained)


@pytest.mark.parametrize("size, valid", [(304, "294 or 308"), (350, None), (20, "14 or 28")])
def test_vit_image_size_must_be_a_multiple_of_the_patch_size(size, valid):
    if valid is None:
        vit = ViTFeatures("vit_base_patch14_dinov2.lvd142m", size, pretrained=False, model_kwargs=TINY_VIT_B, key="ma2patch")
        assert vit.patch_size == 14 and vit(torch.randn(1, 3, size, size))[1].shape[1] == (size // 14) ** 2
        return
    for pretrained in (False, True):  # checked before any download
        with pytest.raises(ConfigError) as err:
            ViTFeatures("vit_base_patch14_dinov2.lvd142m", size, pretrained=pretrained, model_kwargs=TINY_VIT_B,
                        key="ma2patch")
        assert str(err.value) == (f"config key 'ma2patch.image_size' = {size} is not a multiple of the patch size 14 "
                                  f"of 'vit_base_patch14_dinov2.lvd142m'; use {valid} (nearest multiples of 14)")


@pytest.mark.parametrize("name, shown", [
    ("banana", "'banana' is not a device"), ("mps", "'mps' is not supported"), ("cuda:x", "'cuda:x' is not a device"),
])
def test_bad_device_names_the_key(name, shown):
    with pytest.raises(ConfigError) as err:
        resolve_device(name)
    assert str(err.value) == f"config key 'device' = {shown}; use auto | cpu | cuda | cuda:N (N = GPU index, e.g. cuda:0)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_a_gpu_names_the_key():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=rf"^config key 'device' = '{name}' but no CUDA GPU is available here; "
                                              r"use --set device=cpu or device=auto"):
            resolve_device(name)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_gpus_names_the_key():
    n = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=rf"^config key 'device' = 'cuda:{n}' but this machine has {n} CUDA GPU"):
        resolve_device(f"cuda:{n}")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


# ------------------------------------------------------------------ local weight files
def test_resnet_weights_from_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    net = ResNetFeatures("resnet18", weights=str(path))
    assert torch.equal(net.stem[0].weight, state["conv1.weight"]) and torch.equal(net.layer3[0].conv1.weight,
                                                                                  state["layer3.0.conv1.weight"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_unreadable_weight_files_are_named(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BackboneWeightsError, match=f"patchcore.weights = '{path}' is not a readable state dict"):
        ResNetFeatures("resnet18", weights=str(path))
    with pytest.raises(BackboneWeightsError, match=f"maclu.weights = '{path}' does not fit timm model"):
        ViTFeatures("vit_small_patch14_dinov2.lvd142m", 70, weights=str(path), model_kwargs=TINY_VIT_S, key="maclu")
    assert path.read_bytes() == b"not a checkpoint at all"


def test_missing_or_mismatched_weight_files(tmp_path):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        ResNetFeatures("resnet18", weights=str(tmp_path / "nope.pth"))
    path = require_golden() / "weights" / "patchcore_resnet18.pth"
    with pytest.raises(BackboneWeightsError, match="does not fit"):
        ResNetFeatures("resnet34", weights=str(path))
    vit_path = require_golden() / "weights" / "maclu_vit_tiny.pth"
    with pytest.raises(BackboneWeightsError, match="does not fit"):
        ViTFeatures("vit_small_patch14_dinov2.lvd142m", 350, weights=str(vit_path), model_kwargs=TINY_VIT_B)


def test_resnet_checkpoint_may_leave_out_only_the_unused_layers(tmp_path):
    """layer4 and fc never run (PatchCore taps layer2/layer3): a checkpoint without them loads; any other gap is refused."""
    full = torchvision.models.resnet18(weights=None).state_dict()
    used = {k: v for k, v in full.items() if not k.startswith(("layer4.", "fc."))}
    torch.save(used, tmp_path / "used.pth")
    net = ResNetFeatures("resnet18", weights=str(tmp_path / "used.pth"))
    assert torch.equal(net.layer3[1].conv2.weight, used["layer3.1.conv2.weight"])
    for drop in ("layer3.1.conv2.weight", "bn1.running_var"):
        torch.save({k: v for k, v in used.items() if k != drop}, tmp_path / "gap.pth")
        with pytest.raises(BackboneWeightsError, match=f"does not fit torchvision 'resnet18'.*{drop}"):
            ResNetFeatures("resnet18", weights=str(tmp_path / "gap.pth"))
    torch.save({**full, "layer5.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(BackboneWeightsError, match="unexpected keys.*layer5.weight"):
        ResNetFeatures("resnet18", weights=str(tmp_path / "extra.pth"))
