"""Per-image inference time of NPGMF beside this project's PatchCore, on one machine (standalone script).

    python benchmarks/bench_npgmf.py [--scale full|tiny] [--images 3] [--device cpu|cuda] [--out FILE.json]

``full``: the paper's architectures at their sizes (ResNet-101 logical module at 256 px with
ResNeXt-101 PatchCore at 224 px; USAD's PatchCore: Wide-ResNet50-2 at 238 px), with RANDOM weights
(the compute does not depend on them; nothing is downloaded). ``tiny``: the test stand-ins of
tests/golden.yaml. Banks come from 2 random images (a bank's size changes only the search).
Each model predicts one image at a time; after one warm-up the median over ``--images`` runs is
reported, and the ratios to PatchCore. The paper reports 21 ms an image on an RTX 3090 (Table VII),
for the logical module alone (its structural scores "can be precomputed"); both are shown here.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from usad.core.config import load_config  # noqa: E402
from usad.models.npgmf.logical import LogicalModule  # noqa: E402
from usad.models.npgmf.structural import StructuralModule  # noqa: E402
from usad.models.usad.patchcore import PatchCore  # noqa: E402

TEXT_DIM = 512  # CLIP ViT-B/32's text embedding
BANK_IMAGES = 2


def configs(scale: str):
    random_weights = ["npgmf.logical.pretrained=false", "npgmf.structural.pretrained=false",
                      "patchcore.pretrained=false"]
    if scale == "full":
        return load_config(None, random_weights)
    tiny = REPO / "tests" / "golden" / "weights" / "patchcore_resnet18.pth"
    return load_config(REPO / "tests" / "golden.yaml", [f"npgmf.logical.weights={tiny}",
                                                       f"npgmf.structural.weights={tiny}"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, images: list[torch.Tensor], device: torch.device) -> float:
    fn(images[0])  # warm-up
    times = []
    for x in images:
        sync(device)
        t0 = time.perf_counter()
        fn(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=["full", "tiny"], default="full")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = configs(args.scale)
    lc, sc, pc = cfg.npgmf.logical, cfg.npgmf.structural, cfg.patchcore
    g = torch.Generator().manual_seed(0)

    def images(size: int, n: int) -> list[torch.Tensor]:
        return [torch.randn(1, 3, size, size, generator=g).to(device) for _ in range(n)]

    logical = LogicalModule(lc, device, torch.randn(TEXT_DIM, generator=g))
    logical.model.eval()
    structural = StructuralModule(sc, device, cfg.seed)
    structural.fit(images(sc.image_size, BANK_IMAGES), BANK_IMAGES)
    patchcore = PatchCore(pc, device, cfg.seed)
    patchcore.fit(images(pc.image_size, BANK_IMAGES), BANK_IMAGES)

    n = args.images
    with torch.no_grad():
        t_logical = median_time(logical.maps, images(lc.image_size, n), device)
        t_structural = median_time(lambda x: structural.maps(x, lc.image_size), images(sc.image_size, n), device)
        t_patchcore = median_time(patchcore.predict, images(pc.image_size, n), device)
    t_npgmf = t_logical + t_structural
    result = {
        "scale": args.scale, "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(), "images": n, "torch": torch.__version__,
        "python": platform.python_version(),
        "ms_per_image": {"npgmf_logical": 1e3 * t_logical, "npgmf_structural": 1e3 * t_structural,
                         "npgmf_both": 1e3 * t_npgmf, "patchcore_usad": 1e3 * t_patchcore},
        "ratio_to_patchcore": {"npgmf_logical": t_logical / t_patchcore, "npgmf_structural": t_structural / t_patchcore,
                               "npgmf_both": t_npgmf / t_patchcore},
        "paper_ms_per_image": 21.0,
        "settings": {"logical": f"{lc.backbone} at {lc.image_size}", "structural": f"{sc.backbone} at {sc.image_size}",
                     "patchcore": f"{pc.backbone} at {pc.image_size}"},
    }
    for name, ms in result["ms_per_image"].items():
        ratio = result["ratio_to_patchcore"].get(name)
        print(f"{name:18s} {ms:10.1f} ms/image" + (f"   x{ratio:.2f} PatchCore" if ratio is not None else ""))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
