"""NPGMF's row of ``python -m usad.compare`` on generated MVTec LOCO scenes: it runs through the same harness as
every method, is scored with sPRO and the LOCO image AUROCs, and shows NPGMF's own paper numbers beside it."""

from pathlib import Path

import pytest
import torch

from usad.core.data.loco_synthetic import make_synthetic_loco
from usad.experiments import compare
from usad.models.npgmf.paper import PAPER
from usad.models.npgmf.prior import write_embedding_file

from conftest import REPO

CATEGORY = "pushpins"   # a LOCO category of NPGMF's Table I
TINY_RESNET = REPO / "tests" / "golden" / "weights" / "patchcore_resnet18.pth"


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare_npgmf")
    make_synthetic_loco(tmp / "data", CATEGORY, n_train=3, n_validation=2, n_test_good=2, n_logical=2,
                        n_structural=2, size=64, seed=1)
    embedding = tmp / "text.safetensors"
    write_embedding_file(embedding, {CATEGORY: torch.randn(16, generator=torch.Generator().manual_seed(0))},
                         {"clip_model": "seeded random (test)"})
    sets = [f"data.root={tmp / 'data'}", f"data.category={CATEGORY}", "data.download=false", "device=cpu",
            f"paths.models={tmp / 'models'}", f"paths.results={tmp / 'results'}", "compare.figure_images=1",
            f"npgmf.text_embedding={embedding}", f"npgmf.logical.weights={TINY_RESNET}",
            f"npgmf.structural.weights={TINY_RESNET}"]
    argv = ["--config", str(REPO / "tests" / "golden.yaml"), *(a for s in sets for a in ("--set", s)), "--methods", "npgmf"]
    return compare.main(argv)[CATEGORY], tmp


def test_npgmf_row_runs_and_is_scored_like_every_method(compared):
    table, tmp = compared
    row = table["methods"]["npgmf"]
    assert row["status"] == "ran", row["status"]
    for key in ("image_auroc_logical", "image_auroc_structural", "image_auroc_mean", "spro_auc_0.05"):
        assert 0.0 <= row[key] <= 1.0, (key, row[key])
    assert (tmp / "results" / CATEGORY / "compare" / "npgmf" / "predictions.npz").is_file()


def test_npgmf_paper_numbers_beside_the_run(compared):
    table, tmp = compared
    assert table["methods"]["npgmf"]["paper"] == {"spro_auc_0.05": pytest.approx(100 * PAPER["table1_loco_spro"][CATEGORY])}
    md = (tmp / "results" / CATEGORY / "compare" / "table1.md").read_text()
    assert f"(paper {100 * PAPER['table1_loco_spro'][CATEGORY]:.1f})" in md


def test_npgmf_paper_numbers_per_layout_and_ablation_row():
    from usad.core.config import load_config
    from usad.models.npgmf.method import NPGMF

    both, logical = load_config(), load_config(None, ["npgmf.branches=logical"])
    image, pixel = PAPER["table2_mvtec_ad"]["screw"]
    assert NPGMF.paper_numbers(both, "screw", "mvtec") == pytest.approx({"image_auroc": 100 * image, "pixel_auroc": 100 * pixel})
    row = PAPER["table5_ablation"]["logical"]
    assert NPGMF.paper_numbers(logical, "screw", "mvtec") == pytest.approx(
        {"image_auroc": 100 * row["mvtec_ad_image_auroc"], "pixel_auroc": 100 * row["mvtec_ad_pixel_auroc"]})
    assert NPGMF.paper_numbers(logical, CATEGORY, "loco") == pytest.approx({"spro_auc_0.05": 100 * row["loco_spro"]})
    assert NPGMF.paper_numbers(both, "coal_belt", "mvtec") is None
