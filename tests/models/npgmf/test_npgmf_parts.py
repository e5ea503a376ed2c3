"""NPGMF's parts against independent computations: the CLIP prior (open_clip itself), Eq. 11 (NumPy / SciPy),
the structural map (brute-force nearest neighbours, OpenCV resize), and the geometry checks."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from usad.core.backbones import BackboneWeightsError
from usad.core.config import ConfigError, load_config
from usad.models.npgmf.fusion import PixelStats, fuse, smooth_and_score
from usad.models.npgmf.lewin import LeWinBlock, window_geometry
from usad.models.npgmf.logical import check_image_size
from usad.models.npgmf.prior import (GlobalPrior, PriorError, category_text, clip_text_embeddings, main as prior_main,
                                     read_embedding_file)
from usad.models.npgmf.structural import StructuralModule
from usad.models.usad.patchcore import PatchCore

REPO = Path(__file__).resolve().parents[3]
TINY_RESNET = REPO / "tests" / "golden" / "weights" / "patchcore_resnet18.pth"
CLIP_MODEL = "ViT-B-32-quickgelu"
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


# ---------------------------------------------------------------- the CLIP prior
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(CLIP_MODEL, pretrained=None, **TINY_CLIP)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_category_text():
    assert category_text("breakfast_box") == "breakfast box"
    assert category_text("splicing_connectors", "a photo of a {}") == "a photo of a splicing connectors"


def test_clip_embedding_is_open_clips_text_feature(tiny_clip):
    import open_clip
    from safetensors.torch import load_file

    ours = clip_text_embeddings(["breakfast box", "juice bottle"], CLIP_MODEL, tiny_clip, TINY_CLIP)
    model = open_clip.create_model(CLIP_MODEL, pretrained=None, **TINY_CLIP)
    model.load_state_dict(load_file(str(tiny_clip)))
    model.eval()
    with torch.no_grad():
        raw = model.encode_text(open_clip.get_tokenizer(CLIP_MODEL)(["breakfast box", "juice bottle"]))
    torch.testing.assert_close(ours, raw / raw.norm(dim=1, keepdim=True))
    assert not torch.allclose(ours[0], ours[1])


def test_method_computes_the_category_names_embedding_at_fit_time(tiny_clip):
    from usad.models.npgmf.method import NPGMF

    cfg = load_config(None, ["data.category=breakfast_box", f"npgmf.clip.weights={tiny_clip}",
                             f"npgmf.clip.model_kwargs={TINY_CLIP}"])
    method = NPGMF(cfg, torch.device("cpu"))
    method.check_text_source()
    expect = clip_text_embeddings(["breakfast box"], CLIP_MODEL, tiny_clip, TINY_CLIP)[0]
    torch.testing.assert_close(method.text_embedding("breakfast_box"), expect)


def test_embedding_command_needs_a_checkpoint(tmp_path):
    with pytest.raises(PriorError, match="--clip-weights"):
        prior_main(["--clip-weights", str(tmp_path / "none.bin"), "--categories", "pushpins", "--out",
                    str(tmp_path / "text.safetensors")])


def test_clip_checkpoint_errors(tmp_path):
    with pytest.raises(PriorError, match="npgmf.clip.weights is not set"):
        clip_text_embeddings(["x"], CLIP_MODEL, None)
    with pytest.raises(PriorError, match="does not exist"):
        clip_text_embeddings(["x"], CLIP_MODEL, tmp_path / "none.safetensors")
    pytest.importorskip("open_clip")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PriorError, match="is not an open_clip state dict"):
        clip_text_embeddings(["x"], CLIP_MODEL, bad)


def test_embedding_file_errors(tmp_path):
    from usad.models.npgmf.prior import write_embedding_file

    path = tmp_path / "text.safetensors"
    write_embedding_file(path, {"pushpins": torch.ones(4)}, {"clip_model": "test"})
    assert torch.equal(read_embedding_file(path, "pushpins"), torch.ones(4))
    with pytest.raises(PriorError, match="no embedding for category 'screw_bag' .*pushpins"):
        read_embedding_file(path, "screw_bag")
    with pytest.raises(PriorError, match="does not exist"):
        read_embedding_file(tmp_path / "missing.safetensors", "pushpins")


def test_global_prior_is_one_vector_broadcast_to_every_level():
    prior = GlobalPrior(4, 3)
    maps = prior(torch.randn(4), 2, [(1, 1), (4, 4), (8, 8)])
    assert [tuple(m.shape) for m in maps] == [(2, 3, 1, 1), (2, 3, 4, 4), (2, 3, 8, 8)]
    for m in maps:
        assert torch.equal(m, maps[0][:1, :, :1, :1].expand_as(m))


# ---------------------------------------------------------------- Eq. 11
def test_pixel_stats_are_numpys_mean_and_std():
    g = np.random.default_rng(0)
    batches = [g.normal(3.0, 2.0, size=(n, 5, 5)) for n in (2, 3)]
    stats = PixelStats()
    for b in batches:
        stats.add(torch.from_numpy(b))
    mean, std = stats.mean_std()
    every = np.concatenate([b.ravel() for b in batches])
    assert mean == pytest.approx(every.mean(), rel=1e-12) and std == pytest.approx(every.std(), rel=1e-9)


def test_fusion_smoothing_and_score_by_hand():
    g = np.random.default_rng(1)
    s, lo = g.random((2, 16, 16)), g.random((2, 16, 16))
    fused = fuse({"structural": torch.from_numpy(s), "logical": torch.from_numpy(lo)},
                 {"structural": 3.0, "logical": 1.0})
    np.testing.assert_allclose(fused.numpy(), 3 * s + lo)
    score, smooth = smooth_and_score(fused, 4.0)
    expect = np.stack([gaussian_filter(m, sigma=4.0) for m in 3 * s + lo])
    np.testing.assert_allclose(smooth.numpy(), expect, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(score.numpy(), expect.reshape(2, -1).max(1))


# ---------------------------------------------------------------- the structural module
def structural_cfg(*overrides):
    return load_config(None, ["npgmf.structural.backbone=resnet18", "npgmf.structural.pretrained=false",
                              f"npgmf.structural.weights={TINY_RESNET}", "npgmf.structural.image_size=64",
                              *overrides]).npgmf.structural


def test_structural_map_is_the_nearest_bank_distance():
    module = StructuralModule(structural_cfg(), torch.device("cpu"), seed=0)
    assert isinstance(module.patchcore, PatchCore)  # the project's PatchCore, another backbone
    g = torch.Generator().manual_seed(0)
    train = [torch.randn(1, 3, 64, 64, generator=g) for _ in range(2)]
    module.fit(train, 2)
    images = torch.randn(2, 3, 64, 64, generator=g)
    maps = module.maps(images, 40)
    patches = module.patchcore.features(images).double()  # (B, P, D): layer2 + layer3, locally aware
    bank = module.bank.double()
    d = (patches[:, :, None, :] - bank[None, None]).norm(dim=-1).min(dim=-1).values  # brute force
    side = int(d.shape[1] ** 0.5)
    for b in range(2):
        grid = d[b].view(side, side).float().numpy()
        np.testing.assert_allclose(maps[b].numpy(), cv2.resize(grid, (40, 40), interpolation=cv2.INTER_LINEAR),
                                   rtol=1e-4, atol=1e-4)


def test_structural_weights_errors_name_npgmfs_key(tmp_path):
    with pytest.raises(BackboneWeightsError, match="npgmf.structural.weights"):
        StructuralModule(structural_cfg(f"npgmf.structural.weights={tmp_path / 'none.pth'}"), torch.device("cpu"), 0)


# ---------------------------------------------------------------- geometry
def test_window_geometry_follows_uformer():
    assert window_geometry(16, 16, 8, 4) == (8, 4)
    assert window_geometry(8, 8, 8, 4) == (8, 0)   # the map is one window: no shift
    assert window_geometry(4, 4, 8, 0) == (4, 0)   # window clipped to the map
    with pytest.raises(ValueError, match="windows"):
        LeWinBlock(32, (12, 12), 2, win_size=8)


def test_image_size_checks():
    check_image_size(256, 8, "npgmf.logical")
    with pytest.raises(ConfigError, match="multiple of 32"):
        check_image_size(80, 8, "npgmf.logical")
    with pytest.raises(ConfigError, match="LeWin windows"):
        check_image_size(96, 8, "npgmf.logical")
