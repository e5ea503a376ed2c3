"""CSAD first half: bad input gives one clear error; the precomputed-mask path runs end to end; torchvision's
WideResNet (ours) computes what timm's (the official code's) does with the same weights."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))

import golden_csad_seg as tool

from usad.core.backbones import BackboneWeightsError
from usad.core.config import load_config
from usad.core.errors import UsadError
from usad.models.csad import pseudo_labels as pl
from usad.models.csad.segmentor import Segmentor, WideResNetEncoder, normalize

N_TRAIN = 20


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from usad.core.data.loco_synthetic import make_synthetic_loco

    root = tmp_path_factory.mktemp("loco")
    folder = make_synthetic_loco(root, n_train=N_TRAIN, n_validation=0, n_test_good=0, n_logical=0, n_structural=0,
                                 size=64, seed=3)
    files = sorted((folder / "train" / "good").glob("*.png"))
    masks = root / "masks"
    for f in files:
        (masks / f.stem).mkdir(parents=True)
        rgb = np.asarray(Image.open(f).convert("RGB"))
        Image.fromarray(tool.scene_masks(rgb)).save(masks / f.stem / "refined_masks.png")
    weights = root / "stand_in.pth"
    torch.save(tool.stand_in_state(0), weights)
    return {"files": files, "masks": masks, "weights": weights, "root": root}


def section(scenes, *extra):
    cfg = load_config(None, [f"csad.backbone_weights={scenes['weights']}", f"csad.component_weights={scenes['weights']}",
                             f"csad.backbone_kwargs={json.dumps(tool.STAND_IN)}", "csad.image_size=64", *extra])
    return cfg.csad


def test_mask_folder_not_matching_images(scenes, tmp_path):
    (tmp_path / "000").mkdir()
    s = section(scenes, f"csad.pseudo_labels={tmp_path}")
    with pytest.raises(pl.PseudoLabelError, match=r"csad.pseudo_labels .* does not match the training images"):
        pl.check_pseudo_labels(s, scenes["files"], "pushpins")


def test_mask_of_wrong_size(scenes, tmp_path):
    for f in scenes["files"]:
        (tmp_path / f.stem).mkdir()
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / f.stem / "refined_masks.png")
    s = section(scenes, f"csad.pseudo_labels={tmp_path}")
    with pytest.raises(pl.PseudoLabelError, match="must have the image's size"):
        pl.read_mask_folder(tmp_path, scenes["files"], True)
    with pytest.raises(pl.PseudoLabelError):
        pl.make_pseudo_labels(s, scenes["files"], "pushpins", "cpu")


def test_category_without_prompts(scenes):
    with pytest.raises(pl.MissingPromptError, match=r"category 'coal_ad' has no GroundingDINO prompts.*pseudo_labels"):
        pl.check_pseudo_labels(section(scenes), scenes["files"], "coal_ad")


def test_too_few_images_for_hdbscan(scenes):
    s = section(scenes, f"csad.pseudo_labels={scenes['masks']}")
    with pytest.raises(pl.PseudoLabelError, match="too few normal images for HDBSCAN: 19 .* at least 20"):
        pl.check_pseudo_labels(s, scenes["files"][:19], "pushpins")


def test_missing_foundation_checkpoint_names_the_key(scenes):
    with pytest.raises(BackboneWeightsError, match=r"csad.sam_weights = None.*--set csad.pseudo_labels=DIR"):
        pl.check_pseudo_labels(section(scenes), scenes["files"], "pushpins")


def test_missing_backbone_file_names_the_key(scenes, tmp_path):
    s = section(scenes, f"csad.backbone_weights={tmp_path / 'nope.pth'}")
    with pytest.raises(BackboneWeightsError, match=r"csad.backbone_weights = .*nope.pth. does not exist"):
        Segmentor(s, "cpu")


def test_precomputed_masks_to_trained_segmentor(scenes):
    s = section(scenes, f"csad.pseudo_labels={scenes['masks']}", "csad.segmentor.epochs=2",
                "csad.segmentor.sup_only_epochs=1", "csad.segmentor.batch_size=2",
                "csad.pseudo.rotations=4")
    labels = pl.make_pseudo_labels(s, scenes["files"], "pushpins", "cpu")
    n = len(scenes["files"])
    assert labels.images.shape == (n, 64, 64, 3) and labels.label_maps.shape == (n, 64, 64)
    assert len(labels.labelled) >= 2 and len(labels.labelled) + len(labels.unlabelled) == n
    assert labels.num_classes == labels.histograms.shape[1] + 1 == int(labels.label_maps.max()) + 1
    torch.manual_seed(0)
    seg = Segmentor(s, "cpu").fit_pseudo(labels)
    assert len(seg.history) == 2 and set(seg.history[1]) >= {"ce", "focal", "dice", "hist", "entropy_sup", "total"}
    x = normalize(labels.images[:3], "cpu")
    logits = seg.segment(x)
    assert logits.shape == (3, labels.num_classes, 64, 64) and torch.isfinite(logits).all()
    again = Segmentor(s, "cpu")
    again.load_state_dict(seg.state_dict())
    assert torch.equal(again.segment(x), logits)


def test_torchvision_encoder_equals_timm_resnet():
    """Our encoder (torchvision ResNet) and the code's (timm ResNet, features_only) on the same weights."""
    from timm.models.resnet import Bottleneck, ResNet

    state = tool.stand_in_state(5)
    timm_net = ResNet(block=Bottleneck, layers=tool.STAND_IN["layers"], base_width=tool.STAND_IN["width_per_group"])
    timm_net.load_state_dict(state)
    timm_net.eval()
    ours = WideResNetEncoder(tool.stand_in_resnet(5), (1, 2, 3, 4))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = timm_net.maxpool(timm_net.act1(timm_net.bn1(timm_net.conv1(x))))
        ref = []
        for layer in (timm_net.layer1, timm_net.layer2, timm_net.layer3, timm_net.layer4):
            h = layer(h)
            ref.append(h)
    for a, b in zip(ours(x), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_missing_component_weights_names_the_key(scenes):
    s = section(scenes, f"csad.pseudo_labels={scenes['masks']}", "csad.component_weights=null")
    with pytest.raises(BackboneWeightsError, match=r"csad.component_weights is not set.*racm_in1k"):
        pl.check_pseudo_labels(s, scenes["files"], "pushpins")
    assert isinstance(BackboneWeightsError("x"), UsadError)  # one message, exit status 2 through run_cli


def test_groundingdino_input_size_matches_official():
    """GroundingDINO's resize (shorter side 800, longer <= 1333) against the code's own transform."""
    authors = REPO.parent / "shared" / "authors" / "csad"
    if not (authors / "groundingdino" / "datasets" / "transforms.py").is_file():
        pytest.skip(f"official code not at {authors}")
    from usad.models.csad.grounding import caption_of, dino_size

    sys.path.insert(0, str(authors))
    try:
        import groundingdino.datasets.transforms as T
    finally:
        sys.path.remove(str(authors))
    for w, h in [(1600, 1280), (1600, 800), (1700, 1000), (800, 1600), (850, 1700), (96, 96), (1333, 800), (640, 480)]:
        out, _ = T.resize(Image.new("RGB", (w, h)), None, 800, max_size=1333)
        assert dino_size(w, h) == (out.size[1], out.size[0]), (w, h)
    assert caption_of(" Pin . Pushpin ") == "pin . pushpin."
