"""CSAD's first half against the official code (golden fixture from tools/golden_csad_seg.py).

The fixture holds the official code's outputs on generated scenes with tiny seeded WideResNet stand-ins;
the weights (stand-in, decoder start, projection) are redrawn here from the same seeds. Fixture:
$USAD_CSAD_GOLDEN when set, else tests/models/csad/golden (committed).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tools"))

import golden_csad_seg as tool

from usad.core.config import load_config
from usad.models.csad import lsa
from usad.models.csad import pseudo_labels as pl
from usad.models.csad.seg_losses import segmentation_losses
from usad.models.csad.segmentor import Segmentor, WideResNetEncoder, normalize

GRAD_RTOL = 1e-3   # gradient norms (float32 reductions in another order)
FLOOR_FACTOR = 3   # gradients: within 3 x the float32 rounding of the step (measured on ours vs float64)
GOLDEN = Path(os.environ.get("USAD_CSAD_GOLDEN", REPO / "tests" / "models" / "csad" / "golden"))


def pearson(a, b) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


@pytest.fixture(scope="module")
def manifest():
    path = GOLDEN / "seg_manifest.json"
    if not path.is_file():
        pytest.fail(f"CSAD golden fixture missing at {GOLDEN}: restore tests/models/csad/golden from git "
                    f"or remake it with tools/golden_csad_seg.py")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def ref_seg(manifest):
    return dict(np.load(GOLDEN / "seg_segmentor.npz"))


@pytest.fixture(scope="module")
def ref_pseudo(manifest):
    return dict(np.load(GOLDEN / "seg_pseudo.npz"))


@pytest.fixture(scope="module")
def section(manifest, tmp_path_factory):
    """cfg.csad with the stand-in encoder, loaded from a file through the real loading path."""
    weights = tmp_path_factory.mktemp("csad_seg") / "stand_in.pth"
    torch.save(tool.stand_in_state(manifest["seed"]), weights)
    cfg = load_config(None, [f"csad.backbone_weights={weights}",
                             f"csad.backbone_kwargs={json.dumps(manifest['stand_in'])}",
                             f"csad.image_size={manifest['size']}"])
    return cfg.csad


@pytest.fixture(scope="module")
def inputs(manifest, ref_pseudo):
    return tool.segmentor_inputs(ref_pseudo["scenes"], manifest["seed"])


@pytest.fixture(scope="module")
def seg(section, manifest):
    s = Segmentor(section, "cpu")
    s.build_decoder(manifest["num_classes"])
    s.decoder.load_state_dict(tool.draw_state(s.decoder.state_dict(), manifest["seed"] + 1))
    return s


def test_segmentor_logits_match_official(seg, inputs, ref_seg, manifest):
    b, step = manifest["batch"], manifest["logit_step"]
    logits = seg.segment(normalize(inputs["images"][:b], "cpu")).numpy()[:, :, ::step, ::step]
    ref = ref_seg["logits"]
    assert logits.shape == ref.shape
    assert pearson(logits, ref) >= 0.9999
    assert np.abs(logits - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())


def float64_gradients(section, inputs, manifest) -> dict:
    """Our gradients of the same step in float64: the reference for float32 rounding (the noise floor)."""
    s = Segmentor(section, "cpu")
    s.build_decoder(manifest["num_classes"])
    s.decoder.load_state_dict(tool.draw_state(s.decoder.state_dict(), manifest["seed"] + 1))
    s.decoder.double().train()
    b, c = manifest["batch"], section.segmentor
    f = [t.double() for t in s.encode(normalize(inputs["images"], "cpu"))]
    y = torch.from_numpy(inputs["label_maps"][:b].astype(np.int64))
    y_hist = torch.from_numpy(inputs["label_maps"][inputs["rand_index"]].astype(np.int64))
    sup = s.decoder(f[0][:b], f[2][:b])
    unsup = s.decoder(f[0][b:2 * b], f[2][b:2 * b])
    losses = segmentation_losses(sup, y, unsup, y_hist, c.loss_weights, c.focal_gamma, c.focal_smooth, False)
    losses["total"].backward()
    return {k: p.grad.numpy().ravel() for k, p in s.decoder.named_parameters()}


def test_one_training_step_matches_official(section, inputs, ref_seg, manifest):
    s = Segmentor(section, "cpu")
    s.build_decoder(manifest["num_classes"])
    s.decoder.load_state_dict(tool.draw_state(s.decoder.state_dict(), manifest["seed"] + 1))
    before = {k: v.clone() for k, v in s.decoder.state_dict().items()}
    c = section.segmentor
    opt = torch.optim.Adam(s.decoder.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    b = manifest["batch"]
    x = normalize(inputs["images"], "cpu")
    y = torch.from_numpy(inputs["label_maps"][:b].astype(np.int64))
    y_hist = torch.from_numpy(inputs["label_maps"][inputs["rand_index"]].astype(np.int64))
    losses = s.train_step(opt, x[:b], y, x[b:2 * b], y_hist, sup_only=False)
    names = [str(n) for n in ref_seg["loss_names"]]
    ours = np.array([losses[n] for n in names])
    np.testing.assert_allclose(ours, ref_seg["losses"], rtol=1e-5, atol=1e-6)
    assert abs(losses["total"] - float(ref_seg["loss_total"])) <= 1e-5 * max(1.0, abs(float(ref_seg["loss_total"])))
    after = s.decoder.state_dict()
    params = dict(s.decoder.named_parameters())
    exact = float64_gradients(section, inputs, manifest)
    their_names = [k[len("grad/"):] for k in ref_seg if k.startswith("grad/")]
    assert len(their_names) == len(params)
    seed = manifest["seed"]
    rows = []
    for i, ((ours_name, p), theirs) in enumerate(zip(params.items(), their_names)):
        got = {"exact": exact[ours_name]}
        for kind, value in (("grad", p.grad), ("update", after[ours_name] - before[ours_name])):
            a = value.detach().double().numpy().ravel()
            if a.size > tool.SMALL:
                np.testing.assert_allclose(np.linalg.norm(a), ref_seg[f"{kind}_norm/{theirs}"], rtol=GRAD_RTOL)
                a = a[tool.sample_positions(a.size, seed + i)]
            got[kind] = a
        if got["exact"].size > tool.SMALL:
            got["exact"] = got["exact"][tool.sample_positions(got["exact"].size, seed + i)]
        rows.append((ours_name, theirs, got, ref_seg[f"grad/{theirs}"].astype(np.float64),
                     ref_seg[f"update/{theirs}"].astype(np.float64)))
    # float32 rounding of this step, measured on our code against its float64 twin (BatchNorm's backward cancels
    # terms: ~1e-3 of a tensor's largest entry in the deep layers); the official float32 gradients must lie as
    # close to the float64 ones, and to ours, as FLOOR_FACTOR times that
    floor = max(np.abs(g["grad"] - g["exact"]).max() / np.abs(g["exact"]).max() for _, _, g, _, _ in rows)
    for ours_name, theirs, got, g_ref, u_ref in rows:
        scale = np.abs(got["exact"]).max()
        for what, a in (("official vs float64", g_ref - got["exact"]), ("ours vs official", got["grad"] - g_ref)):
            rel = np.abs(a).max() / scale
            assert rel <= FLOOR_FACTOR * floor, \
                f"grad of {ours_name} ({theirs}), {what}: {rel:.3g} of its largest entry; float32 rounding {floor:.3g}"
        if got["grad"].size > 2:
            assert pearson(got["grad"], g_ref) >= 0.99999, f"grad of {ours_name} ({theirs}) differs"
        # Adam's first step is -lr g / (|g| + eps) (+ weight decay): +-lr to 1e-4 of lr wherever the gradient is
        # clearly above the rounding (a gradient near 0 may flip its sign: float noise, not a difference)
        clear = np.abs(g_ref) > 2 * FLOOR_FACTOR * floor * scale
        np.testing.assert_allclose(got["update"][clear], u_ref[clear], rtol=0, atol=1e-4 * c.lr,
                                   err_msg=f"update of {ours_name} ({theirs})")
        assert np.mean(np.isclose(got["update"], u_ref, rtol=0, atol=1e-4 * c.lr)) >= 0.9
    ours_buffers = [k for k in after if "running" in k]
    their_buffers = [k[len("buffer/"):] for k in ref_seg if k.startswith("buffer/")]
    for j, (o, t) in enumerate(zip(ours_buffers, their_buffers)):
        a = after[o].double().numpy().ravel()
        if a.size > tool.SMALL:
            a = a[tool.sample_positions(a.size, seed + j)]
        ref = ref_seg[f"buffer/{t}"]  # BatchNorm statistics of the step's batches: forward values, float32
        assert np.abs(a - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-6, f"BatchNorm buffer {o} ({t}) differs"


def test_losses_sup_only_leave_out_unlabelled_terms():
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    w = {"ce": 0.5, "focal": 10.0, "dice": 1.0, "hist": 10.0, "entropy": 1.0}
    out = segmentation_losses(logits, labels, logits, labels, w, 2.0, 1e-5, sup_only=True)
    assert set(out) == {"ce", "focal", "dice", "total"}
    assert torch.isclose(out["total"], out["ce"] + out["focal"] + out["dice"])


def test_fill_holes_matches_official(ref_seg):
    keys = sorted(k for k in ref_seg if k.startswith("fill_in/"))
    assert keys, "the fixture lacks the fill-holes cases: remake it with tools/golden_csad_seg.py"
    for k in keys:
        np.testing.assert_array_equal(pl.fill_class_holes(ref_seg[k]), ref_seg[k.replace("fill_in", "fill_out")])


@pytest.mark.parametrize("index", [0, 1, 2])
def test_lsa_matches_official(inputs, ref_seg, manifest, section, index):
    seeds = manifest["lsa_seeds"]
    s = seeds[index]
    i = s % manifest["batch"]
    cfg = dict(section.lsa)
    img, lab = lsa.augment(inputs["images"][i], inputs["segments"][i], inputs["label_maps"][i],
                           inputs["backgrounds"][i], cfg, np.random.RandomState(s))
    np.testing.assert_array_equal(np.bitwise_xor(img, inputs["images"][i]), ref_seg[f"lsa_image_xor/{s}"])
    np.testing.assert_array_equal(lab, ref_seg[f"lsa_labels/{s}"])


# --------------------------------------------------------------------------- pseudo-labels


FEATURE_IMAGES = 3   # component features recomputed for the first scenes (each component is independent; ~10 s)


@pytest.fixture(scope="module")
def pseudo_inputs(section, manifest, ref_pseudo):
    settings = pl.category_settings(section, "golden")
    settings.update({"bandwidth": manifest["pseudo"]["bandwidth"], "filter_hist": manifest["pseudo"]["filter_hist"]})
    masks = [lsa.instance_masks(tool.scene_masks(s), settings["mask_min_area"]) for s in ref_pseudo["scenes"]]
    return settings, masks


def test_component_features_match_official(pseudo_inputs, manifest, ref_pseudo):
    settings, masks = pseudo_inputs
    encoder = WideResNetEncoder(tool.stand_in_resnet(manifest["seed"]), (4,))
    scenes = list(ref_pseudo["scenes"][:FEATURE_IMAGES])
    f = pl.component_features(encoder, scenes, masks[:FEATURE_IMAGES], settings, "cpu").astype(np.float64)
    n = len(f)
    assert n == sum(len(m) for m in masks[:FEATURE_IMAGES])
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), ref_pseudo["feature_norms"][:n], rtol=1e-4)
    ours, ref = f[:, ref_pseudo["feature_columns"]], ref_pseudo["features"][:n]
    assert pearson(ours, ref) >= 0.9999
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * np.abs(ours).max())
    # the random projection (Linear, N(0, 0.01) weights, zero bias) of what the code clustered
    proj = tool.projection_matrix(manifest["seed"] + 2, settings["proj_dim"], f.shape[1], settings["proj_std"])
    projected = f.astype(np.float32) @ proj.T
    assert pearson(projected, ref_pseudo["projected"][:n]) >= 0.9999
    np.testing.assert_allclose(projected, ref_pseudo["projected"][:n], rtol=1e-3, atol=1e-4 * np.abs(projected).max())


@pytest.fixture(scope="module")
def our_pseudo(pseudo_inputs, ref_pseudo):
    """Clusters and the histogram split, from the projected features the official code clustered."""
    settings, masks = pseudo_inputs
    scenes = ref_pseudo["scenes"]
    labels = pl.cluster_components(ref_pseudo["projected"], len(scenes), settings)
    bounds = np.cumsum([0] + [len(m) for m in masks])
    assert bounds[-1] == len(ref_pseudo["projected"])
    per_image = [labels[bounds[k]:bounds[k + 1]] for k in range(len(scenes))]
    raw = pl.area_histograms(masks, per_image, labels.max() + 1)
    split = pl.histogram_split(raw, settings)
    keep = {int(k): j for j, k in enumerate(split["keep"])}
    maps = np.stack([pl.label_map(m, l, keep, s.shape[:2]) for m, l, s in zip(masks, per_image, scenes)])
    return {"labels": labels, "raw": raw, "split": split, "maps": maps,
            "hists": pl.area_histograms(masks, per_image, len(keep), keep)}


def test_clusters_match_official(our_pseudo, ref_pseudo):
    np.testing.assert_array_equal(our_pseudo["labels"], ref_pseudo["component_labels"])
    np.testing.assert_allclose(our_pseudo["raw"], ref_pseudo["raw_histograms"], rtol=1e-12, atol=1e-12)


def test_histogram_split_matches_official(our_pseudo, ref_pseudo):
    split = our_pseudo["split"]
    np.testing.assert_array_equal(split["good"], np.sort(ref_pseudo["good"]))
    np.testing.assert_array_equal(split["keep"], ref_pseudo["kept_classes"])
    np.testing.assert_array_equal(our_pseudo["maps"], ref_pseudo["label_maps"])
    np.testing.assert_allclose(our_pseudo["hists"], ref_pseudo["histograms"], rtol=1e-12, atol=1e-12)
