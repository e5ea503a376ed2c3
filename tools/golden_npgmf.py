"""Make NPGMF's part-by-part golden fixture by running the code it builds on: RD4AD and Uformer, unmodified.

    python tools/make_golden.py --method npgmf --rd4ad ../shared/authors/rd4ad \\
        --uformer ../shared/authors/uformer --out tests/models/npgmf/golden

NPGMF's own code could not be obtained, so its reused parts are checked against their sources.
Each source runs in its own subprocess that imports it from the clone given (nothing of theirs
is copied here; their evaluation-only imports are stubbed where a package is missing):

- RD4AD (``resnet.py``, ``de_resnet.py``, ``main.py``, ``test.py``): ``BN_layer`` (the one-class
  embedding) for Bottleneck and BasicBlock encoders, train and eval mode; the de-ResNet decoders
  ``de_resnet50`` and ``de_resnet18``; the training loss ``loss_fucntion``; the anomaly map
  ``cal_anomaly_map`` (sum mode). Also their ``resnet101()`` pair is run, to record that its
  BN_layer does not fit ResNet-101's channels (so NPGMF's ResNet-101 gets the Bottleneck OCE).
- Uformer (``model.py``): ``LeWinTransformerBlock`` (plain, shifted, with modulator, window
  clipped to a small map) and ``BasicUformerLayer`` (two blocks, the second shifted).

Weights and inputs are not stored: ``seeded_tensor`` makes each from (seed, the tensor's name in
*their* module), in float64; the test makes the same values for its modules through a name map
(tests/models/npgmf/test_npgmf_golden.py). The fixture holds their outputs (float32,
``golden.npz``) and ``manifest.json`` (commits, seed, versions, cases, a checksum of the seeded
values so that a change in torch's generator shows as such).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import types
import zlib
from pathlib import Path

import numpy as np
from authors_harness import authors_commit  # noqa: E402 (tools/: one way to record a clone's commit)

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
DEFAULT_OUT = REPO / "tests" / "models" / "npgmf" / "golden"
SEED = 0
EVAL_ONLY_MODULES = ("cv2", "matplotlib", "matplotlib.pyplot", "matplotlib.ticker", "skimage", "skimage.measure",
                     "pandas", "sklearn", "sklearn.metrics", "sklearn.manifold")

# Cases: name -> shapes of the inputs (batch first). Spatial sizes: a 64 x 64 image's encoder levels.
RD4AD_CASES = {
    "oce_bottleneck": [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4)],
    "oce_basic": [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4)],
    "decoder_bottleneck": [(1, 2048, 1, 1)],
    "decoder_basic": [(1, 512, 2, 2)],
    "loss": [(2, 8, 4, 4), (2, 16, 2, 2), (2, 32, 1, 1)] * 2,          # a (3 levels), then b
    "anomaly_map": [(1, 8, 8, 8), (1, 16, 4, 4), (1, 32, 2, 2)] * 2,   # fs, then ft
}
ANOMALY_MAP_SIZE = 32
# LeWin cases: (dim, resolution, heads, win_size, shift, modulator)
LEWIN_CASES = {
    "lewin_plain": (32, 16, 2, 8, 0, False),
    "lewin_shifted_modulator": (32, 16, 2, 8, 4, True),
    "lewin_window_is_map": (32, 8, 2, 8, 4, True),      # map = window: Uformer drops the shift
    "lewin_map_below_window": (32, 4, 2, 8, 0, False),  # window clipped to the 4 x 4 map
}
UFORMER_LAYER = (32, 16, 2, 8, 2, True)  # dim, resolution, heads, win, depth, modulator


# ---------------------------------------------------------------- seeded values (shared with the test)
def seeded_tensor(name: str, shape, seed: int = SEED):
    """float64 values for tensor ``name``: normal draws from a generator seeded by (seed, name), scaled by role."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    if name.endswith("running_var"):
        return 0.5 + x.abs()
    if name.endswith("running_mean") or name.endswith("bias"):
        return 0.1 * x
    if len(shape) == 1:  # norm weights
        return 1.0 + 0.1 * x
    fan_in = int(np.prod(shape[1:]))
    return x / np.sqrt(fan_in)


def seeded_state(module, seed: int = SEED, rename=None) -> dict:
    """A float64 state dict for ``module`` (its floating tensors; integer buffers are kept): each value from
    ``seeded_tensor(their_name)``, where ``rename(our_name)`` gives the name in their module (identity if None)."""
    state = {}
    for name, value in module.state_dict().items():
        if not value.is_floating_point():
            state[name] = value
            continue
        theirs = rename(name) if rename else name
        state[name] = seeded_tensor(theirs, value.shape, seed)
    return state


def seeded_inputs(case: str, shapes, seed: int = SEED) -> list:
    return [seeded_tensor(f"input:{case}:{i}", s, seed) for i, s in enumerate(shapes)]


def checksum(tensors) -> float:
    return float(sum(float(t.double().abs().sum()) for t in tensors))


# ---------------------------------------------------------------- their commit
# ---------------------------------------------------------------- the subprocesses (their code)
def stub_missing(names) -> list[str]:
    """Empty stand-ins for evaluation-only packages that cannot be imported here (never called by the cases)."""
    import importlib

    stubbed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__path__ = []

            def missing(attr, _name=name):
                if attr.startswith("__"):
                    raise AttributeError(attr)

                def unavailable(*args, **kwargs):
                    raise RuntimeError(f"{_name}.{attr} is stubbed (not installed)")
                return unavailable
            module.__getattr__ = missing
            sys.modules[name] = module
            if "." in name:
                parent, child = name.rsplit(".", 1)
                setattr(sys.modules[parent], child, module)
            stubbed.append(name)
    return stubbed


def load_seeded(module, seed: int):
    import torch

    module.double()
    with torch.no_grad():
        module.load_state_dict(seeded_state(module, seed))
    return module


def run_rd4ad(clone: Path, seed: int) -> tuple[dict, dict]:
    import torch

    stubbed = stub_missing(EVAL_ONLY_MODULES)
    sys.path.insert(0, str(clone))
    os.chdir(clone)
    import de_resnet
    import main as rd_main
    import resnet
    import test as rd_test

    out, notes = {}, {"stubbed": stubbed}
    with torch.no_grad():
        for case, block, n in (("oce_bottleneck", resnet.AttnBottleneck, 3), ("oce_basic", resnet.AttnBasicBlock, 2)):
            oce = load_seeded(resnet.BN_layer(block, n), seed)
            x = seeded_inputs(case, RD4AD_CASES[case], seed)
            out[f"{case}_eval"] = oce.eval()(x)
            out[f"{case}_train"] = oce.train()(x)  # batch statistics, as in training
        for case, build in (("decoder_bottleneck", de_resnet.de_resnet50), ("decoder_basic", de_resnet.de_resnet18)):
            decoder = load_seeded(build(pretrained=False), seed).eval()
            for level, y in enumerate(decoder(seeded_inputs(case, RD4AD_CASES[case], seed)[0])):
                out[f"{case}_{level}"] = y  # level 0 = the largest map (their feature_c)
        ab = seeded_inputs("loss", RD4AD_CASES["loss"], seed)
        out["loss"] = torch.as_tensor(rd_main.loss_fucntion(ab[:3], ab[3:]))
        st = seeded_inputs("anomaly_map", RD4AD_CASES["anomaly_map"], seed)
        amap, _ = rd_test.cal_anomaly_map(st[:3], st[3:], out_size=ANOMALY_MAP_SIZE, amap_mode="a")
        out["anomaly_map"] = torch.as_tensor(amap)
        try:  # their ResNet-101 pair: encoder with Bottleneck channels, BN_layer built for BasicBlock channels
            encoder, bn = resnet.resnet101(pretrained=False)
            bn(encoder(torch.zeros(1, 3, 64, 64)))
            notes["resnet101_pair"] = "runs"
        except RuntimeError as e:
            notes["resnet101_pair"] = f"fails: {str(e).splitlines()[0]}"
    return out, notes


def run_uformer(clone: Path, seed: int) -> tuple[dict, dict]:
    import warnings

    import torch

    warnings.simplefilter("ignore")
    sys.path.insert(0, str(clone))
    os.chdir(clone)
    import model as uformer

    out = {}
    with torch.no_grad():
        for case, (dim, res, heads, win, shift, modulator) in LEWIN_CASES.items():
            block = uformer.LeWinTransformerBlock(dim, (res, res), heads, win_size=win, shift_size=shift,
                                                  token_mlp="leff", modulator=modulator)
            block = load_seeded(block, seed).eval()
            (x,) = seeded_inputs(case, [(1, res * res, dim)], seed)
            out[case] = block(x)
        dim, res, heads, win, depth, modulator = UFORMER_LAYER
        layer = uformer.BasicUformerLayer(dim, dim, (res, res), depth, heads, win, token_mlp="leff", shift_flag=True,
                                          modulator=modulator)
        layer = load_seeded(layer, seed).eval()
        (x,) = seeded_inputs("uformer_layer", [(1, res * res, dim)], seed)
        out["uformer_layer"] = layer(x)
    return out, {}


def child(argv) -> int:
    """``golden_npgmf.py child rd4ad|uformer CLONE SEED OUT.npz``: their outputs on the seeded cases."""
    which, clone, seed, dest = argv[0], Path(argv[1]).resolve(), int(argv[2]), Path(argv[3]).resolve()
    outputs, notes = (run_rd4ad if which == "rd4ad" else run_uformer)(clone, seed)
    np.savez(dest, **{k: v.detach().double().numpy().astype(np.float32) for k, v in outputs.items()})
    dest.with_suffix(".json").write_text(json.dumps(notes))
    return 0


def run_child(which: str, clone: Path, seed: int, work: Path) -> tuple[dict, dict]:
    dest = work / f"{which}.npz"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "child", which, str(clone), str(seed),
                           str(dest)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"their {which} code failed:\n{proc.stderr[-4000:]}")
    with np.load(dest) as z:
        return dict(z), json.loads(dest.with_suffix(".json").read_text())


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="npgmf", choices=["npgmf"])
    parser.add_argument("--rd4ad", default=str(REPO.parent / "shared" / "authors" / "rd4ad"), help="RD4AD clone")
    parser.add_argument("--uformer", default=str(REPO.parent / "shared" / "authors" / "uformer"), help="Uformer clone")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    import torch

    clones = {"rd4ad": Path(args.rd4ad).resolve(), "uformer": Path(args.uformer).resolve()}
    for name, clone in clones.items():
        expected = {"rd4ad": ("resnet.py", "de_resnet.py", "main.py", "test.py"), "uformer": ("model.py",)}[name]
        if not all((clone / f).is_file() for f in expected):
            raise SystemExit(f"--{name} {clone} is not a clone of its repository (needs {', '.join(expected)})")
    outputs, notes = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for name, clone in clones.items():
            out, note = run_child(name, clone, args.seed, Path(work))
            outputs.update(out)
            notes[name] = note
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "golden.npz", **outputs)
    inputs = [t for case, shapes in RD4AD_CASES.items() for t in seeded_inputs(case, shapes, args.seed)]
    manifest = {
        "what": "RD4AD's and Uformer's outputs on seeded weights and inputs (tools/golden_npgmf.py)",
        "sources": {name: {"repository": repo, "commit": authors_commit(clones[name]), "path": getattr(args, name)}
                    for name, repo in (("rd4ad", "github.com/hq-deng/RD4AD"),
                                       ("uformer", "github.com/ZhendongWang6/Uformer"))},
        "seed": args.seed, "rd4ad_cases": {k: ["x".join(map(str, s)) for s in v] for k, v in RD4AD_CASES.items()},
        "anomaly_map_size": ANOMALY_MAP_SIZE, "lewin_cases": LEWIN_CASES, "uformer_layer": UFORMER_LAYER,
        "input_checksum": checksum(inputs), "notes": notes,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "keys": sorted(outputs),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"wrote {out_dir} ({len(outputs)} outputs, {size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
