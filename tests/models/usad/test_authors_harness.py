"""tools/authors_harness.py runs the authors' code offline (needs their clone: ../shared/usad-authors or
$USAD_AUTHORS; skipped without it, since their code is never part of this repository)."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import authors_harness as harness
from usad.core.data.synthetic import make_synthetic_coalad

from conftest import REPO

AUTHORS = Path(os.environ.get("USAD_AUTHORS", REPO.parent / "shared" / "usad-authors"))
N_TRAIN, N_GOOD, N_BAD = 8, 2, 2


@pytest.fixture(scope="module")
def authors():
    if not (AUTHORS / "test_fusion.py").is_file():
        pytest.skip(f"the authors' code is not at {AUTHORS} (set USAD_AUTHORS to a clone of xjpp2016/USAD)")
    return AUTHORS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_coalad(tmp_path_factory.mktemp("harness_data"), "scenes", N_TRAIN, N_GOOD, N_BAD, 64,
                                 kinds=("wood", "bag"), seed=3)


@pytest.fixture(scope="module")
def extracted(authors, data, tmp_path_factory):
    work = tmp_path_factory.mktemp("harness_work")
    out = work / "ref" / "reference.npz"
    assert harness.main(["extract", "--authors", str(authors), "--data", str(data), "--work", str(work / "w"),
                         "--backbones", "tiny", "--vit-train-size", "branch", "--one-process", "--out", str(out)]) == 0
    return np.load(out), json.loads(out.with_suffix(".json").read_text())


def test_extract_writes_every_reference_key(extracted, data):
    ref, meta = extracted
    assert set(ref.files) == set(harness.REFERENCE_KEYS)
    files = sorted(p.relative_to(data).as_posix() for p in (data / "test").rglob("*.png"))
    assert list(ref["files"]) == files  # ImageFolder order: kinds alphabetically, then files
    assert list(ref["label"]) == [int("/good/" not in f) for f in files]
    n = len(files)
    shapes = {"m_obj": (n, 350, 350), "m_attr": (n, 406, 406), "m_pc": (n, 238, 238), "m_fused": (n, 406, 406),
              "mask": (n, 406, 406), "kmeans_centers": (2, 16), "pc_memory_bank": (int(0.01 * (N_TRAIN // 2) * 900), 384)}
    assert {k: ref[k].shape for k in shapes} == shapes
    assert len(ref["pc_train_files"]) == N_TRAIN // 2 and len(set(ref["pc_train_files"])) == N_TRAIN // 2
    assert all(np.isfinite(ref[k]).all() for k in ("s_obj", "s_attr", "s_pc", "s_fused", "m_fused"))
    assert ref["mask"][ref["label"] == 0].max() == 0 and ref["mask"][ref["label"] == 1].max() == 1
    assert 0 <= float(ref["metric_pixel_auroc_fused"]) <= 1
    assert meta["backbones"] == "tiny" and meta["vit_train_size"] == "branch" and meta["device"] == "cpu"
    assert meta["authors_commit"] == harness.authors_commit(AUTHORS)


def test_authors_commit_from_git_then_about_then_unknown(tmp_path):
    clone = tmp_path / "USAD"
    clone.mkdir()
    assert harness.authors_commit(clone) == "unknown"
    (clone / "ABOUT.md").write_text("Snapshot of github.com/xjpp2016/USAD at commit " + "ab" * 20 + " (2026-02-10)\n")
    assert harness.authors_commit(clone) == "ab" * 20
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "ABOUT.md"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert harness.authors_commit(clone) == head != "ab" * 20


def test_time_writes_one_wall_time_per_script(authors, data, tmp_path):
    out = tmp_path / "times.json"
    assert harness.main(["time", "--authors", str(authors), "--data", str(data), "--work", str(tmp_path / "w"),
                         "--backbones", "tiny", "--device", "cpu", "--inprocess", "--out", str(out)]) == 0
    times = json.loads(out.read_text())
    assert list(times["scripts"]) == list(harness.SCRIPTS) and all(t > 0 for t in times["scripts"].values())
    assert times["train_s"] == pytest.approx(sum(times["scripts"][s] for s in harness.TRAIN_SCRIPTS))
    assert times["eval_s"] == times["scripts"]["test_fusion.py"] and times["device"] == "cpu"
    assert (tmp_path / "w" / "saved_models" / "coal_ad" / "pc_memory_bank.pth").is_file()  # copied for test_fusion
    inner = times["inprocess"]  # the four scripts in one process
    assert list(inner["scripts"]) == list(harness.SCRIPTS) and inner["eval_s"] == inner["scripts"]["test_fusion.py"]
    assert len(list((tmp_path / "w" / "_harness").glob("*.log"))) == 4  # the per-process logs are kept


def test_bad_arguments_are_one_clear_error(tmp_path, capsys):
    data = make_synthetic_coalad(tmp_path, "scenes", 1, 1, 0, 32)
    assert harness.main(["extract", "--authors", str(tmp_path), "--data", str(data), "--work", str(tmp_path / "w"),
                         "--out", str(tmp_path / "r.npz")]) == 2
    assert "is not a clone of the authors' USAD code" in capsys.readouterr().err
    authors = tmp_path / "USAD"  # the files a clone has (nothing here runs: the work folder is refused first)
    for name in (*harness.SCRIPTS, "src/data.py", "src/fusion.py"):
        (authors / name).parent.mkdir(parents=True, exist_ok=True)
        (authors / name).touch()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("a user's file")
    assert harness.main(["time", "--authors", str(authors), "--data", str(data), "--work", str(tmp_path / "busy"),
                         "--device", "cpu", "--out", str(tmp_path / "t.json")]) == 2
    assert "not empty and was not made by this tool" in capsys.readouterr().err
    assert (tmp_path / "busy" / "mine.txt").read_text() == "a user's file"
    assert harness.main(["extract", "--authors", str(authors), "--data", str(tmp_path), "--work", str(tmp_path / "w"),
                         "--out", str(tmp_path / "r.npz")]) == 2
    assert "is not a CoalAD-layout category folder" in capsys.readouterr().err
