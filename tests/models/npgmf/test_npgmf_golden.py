"""NPGMF's reused parts against the code they come from (fixture: tools/golden_npgmf.py, run on RD4AD and Uformer).

The same seeded float64 weights (named after their modules' tensors, mapped to ours) and inputs go
through our modules; the outputs must equal theirs to 1e-5 (relative to the output's scale).
"""

import json
from pathlib import Path

import golden_npgmf as g
import numpy as np
import pytest
import torch

from usad.models.npgmf.decoder import decoding_stage
from usad.models.npgmf.lewin import LeWinBlock, LeWinStack
from usad.models.npgmf.losses import feature_loss, logical_map
from usad.models.npgmf.oce import OneClassEmbedding

FIXTURE = Path(__file__).resolve().parent / "golden"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ref() -> dict:
    with np.load(FIXTURE / "golden.npz") as z:
        return dict(z)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((FIXTURE / "manifest.json").read_text())


def seeded(module: torch.nn.Module, rename) -> torch.nn.Module:
    module.double()
    module.load_state_dict(g.seeded_state(module, g.SEED, rename))
    return module


def assert_same(ours: torch.Tensor, theirs: np.ndarray) -> None:
    theirs = torch.as_tensor(theirs, dtype=torch.float64)
    assert tuple(ours.shape) == tuple(theirs.shape)
    scale = max(1.0, float(theirs.abs().max()))
    err = float((ours.detach().double() - theirs).abs().max()) / scale
    assert err < TOLERANCE, f"max difference {err:.3g} (relative to {scale:.3g})"


def renamer(rules):
    """our name -> their name, by the first matching prefix rule."""
    def rename(name: str) -> str:
        for ours, theirs in rules:
            if name.startswith(ours):
                return theirs + name[len(ours):]
        return name
    return rename


def test_seeded_values_are_the_fixtures(manifest):
    """The generator still makes the values the fixture was made with (else: regenerate it)."""
    inputs = [t for case, shapes in g.RD4AD_CASES.items() for t in g.seeded_inputs(case, shapes, manifest["seed"])]
    assert g.checksum(inputs) == pytest.approx(manifest["input_checksum"], rel=1e-12)
    assert manifest["sources"]["rd4ad"]["commit"] == "6554076872c65f8784f6ece8cfb39ce77e1aee12"
    assert manifest["sources"]["uformer"]["commit"] == "65fc970a8ffc09605faca74ed016ee93c9ad8a36"


# ---------------------------------------------------------------- RD4AD
OCE_NAMES = renamer([("mff_level1.0.0.", "conv1."), ("mff_level1.0.1.", "bn1."), ("mff_level1.1.0.", "conv2."),
                     ("mff_level1.1.1.", "bn2."), ("mff_level2.0.", "conv3."), ("mff_level2.1.", "bn3."),
                     ("embed.", "bn_layer.")])


@pytest.mark.parametrize("block,n_blocks", [("bottleneck", 3), ("basic", 2)])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_one_class_embedding_is_rd4ads_bn_layer(ref, block, n_blocks, mode):
    oce = seeded(OneClassEmbedding(block, n_blocks), OCE_NAMES)
    oce.train(mode == "train")
    case = f"oce_{block}"
    with torch.no_grad():
        out = oce(g.seeded_inputs(case, g.RD4AD_CASES[case]))
    assert_same(out, ref[f"{case}_{mode}"])


def test_rd4ad_resnet101_pair_does_not_fit_so_resnet101_gets_the_bottleneck_oce(manifest):
    """Their resnet101() pairs ResNet-101 with a BasicBlock BN_layer that cannot take its channels."""
    assert manifest["notes"]["rd4ad"]["resnet101_pair"].startswith("fails")
    oce = OneClassEmbedding("bottleneck", 3)
    with torch.no_grad():
        z = oce.eval()([torch.zeros(1, 256, 16, 16), torch.zeros(1, 512, 8, 8), torch.zeros(1, 1024, 4, 4)])
    assert z.shape == (1, 2048, 2, 2)


DECODER_NAMES = renamer([("0.", "layer1."), ("1.", "layer2."), ("2.", "layer3.")])


@pytest.mark.parametrize("block,inplanes,layers", [("bottleneck", 2048, (3, 4, 6)), ("basic", 512, (2, 2, 2))])
def test_decoding_stages_are_rd4ads_de_resnet(ref, block, inplanes, layers):
    expansion = 4 if block == "bottleneck" else 1
    stages, width = [], inplanes
    for planes, n in zip((256, 128, 64), layers):
        stages.append(decoding_stage(block, width, planes, n))
        width = planes * expansion
    stages = torch.nn.ModuleList(stages)
    seeded(stages, lambda name: DECODER_NAMES(name).replace(".shortcut.", ".upsample.")).eval()
    case = f"decoder_{block}"
    (x,) = g.seeded_inputs(case, g.RD4AD_CASES[case])
    outs = []
    with torch.no_grad():
        for stage in stages:
            x = stage(x)
            outs.append(x)
    for level, out in enumerate(outs[::-1]):  # their level 0 is the largest map
        assert_same(out, ref[f"{case}_{level}"])


def test_feature_loss_is_rd4ads_loss(ref):
    ab = g.seeded_inputs("loss", g.RD4AD_CASES["loss"])
    assert_same(feature_loss(ab[:3], ab[3:]), ref["loss"])


def test_logical_map_is_rd4ads_sum_map(ref):
    st = g.seeded_inputs("anomaly_map", g.RD4AD_CASES["anomaly_map"])
    assert_same(logical_map(st[:3], st[3:], g.ANOMALY_MAP_SIZE)[0], ref["anomaly_map"])


# ---------------------------------------------------------------- Uformer
LEWIN_NAMES = [("norm_attn.", "norm1."), ("attention.query.", "attn.qkv.to_q."),
               ("attention.key_value.", "attn.qkv.to_kv."), ("attention.out.", "attn.proj."),
               ("attention.bias_table", "attn.relative_position_bias_table"), ("norm_ffn.", "norm2."),
               ("ffn.expand.", "mlp.linear1.0."), ("ffn.depthwise.", "mlp.dwconv.0."),
               ("ffn.reduce.", "mlp.linear2.0."), ("modulator", "modulator.weight")]


@pytest.mark.parametrize("case", sorted(g.LEWIN_CASES))
def test_lewin_block_is_uformers(ref, case):
    dim, res, heads, win, shift, modulator = g.LEWIN_CASES[case]
    block = seeded(LeWinBlock(dim, (res, res), heads, win, shift, modulator=modulator), renamer(LEWIN_NAMES)).eval()
    (x,) = g.seeded_inputs(case, [(1, res * res, dim)])
    with torch.no_grad():
        assert_same(block(x), ref[case])


def test_lewin_stack_is_uformers_basic_layer(ref):
    dim, res, heads, win, depth, modulator = g.UFORMER_LAYER
    stack = LeWinStack(dim, (res, res), depth, dim // heads, win, 4.0, modulator, [0.0] * depth)
    rules = [(f"blocks.{i}.{ours}", f"blocks.{i}.{theirs}") for i in range(depth) for ours, theirs in LEWIN_NAMES]
    seeded(stack, renamer(rules)).eval()
    assert [b.shift for b in stack.blocks] == [0, win // 2]
    (x,) = g.seeded_inputs("uformer_layer", [(1, res * res, dim)])
    with torch.no_grad():
        out = stack(x.transpose(1, 2).reshape(1, dim, res, res)).flatten(2).transpose(1, 2)
    assert_same(out, ref["uformer_layer"])
