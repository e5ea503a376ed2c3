"""Bad input gets a clear error naming the file, and nothing is lost (issue: robustness and safety)."""

import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from usad import metrics
from usad.artifacts import ArtifactError, load_artifact
from usad.config import ConfigError, load_config, with_overrides
from usad.data.checks import check_dataset
from usad.data.dataset import DatasetError
from usad.data.synthetic import make_synthetic_coalad
from usad.pipeline import NonFiniteError, build_branch, evaluate, load_branches, model_path, train_branch

from conftest import REPO, TINY_VIT_B, tiny_config


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_hashes(folder):
    return {p.relative_to(folder).as_posix(): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def coal(tmp_path):
    return make_synthetic_coalad(tmp_path / "data", n_train=4, n_test_good=2, n_test_anomalous=4, size=64, seed=5)


def anomalous(root):
    return sorted(p for p in (root / "test").glob("*/*.png") if p.parent.name != "good")


# ------------------------------------------------------------------------------------------- dataset
def test_clean_dataset_passes(coal):
    assert check_dataset(coal) == []


def test_all_problems_reported_in_one_pass(coal):
    a, b, c, d = anomalous(coal)
    (coal / "ground_truth" / a.parent.name / f"{a.stem}_mask.png").unlink()                 # missing mask
    mb = coal / "ground_truth" / b.parent.name / f"{b.stem}_mask.png"
    Image.open(mb).resize((32, 32)).save(mb)                                                 # wrong size
    truncated = coal / "train" / "good" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])                                      # truncated image
    (coal / "test" / "good" / "000.png").write_bytes(b"this is not a png")                   # not an image
    md = coal / "ground_truth" / d.parent.name / f"{d.stem}_mask.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(md)                                   # empty mask
    before = tree_hashes(coal)
    with pytest.raises(DatasetError) as err:
        check_dataset(coal)
    msg = str(err.value)
    assert "5 problem(s)" in msg
    assert f"{a}: anomalous test image without its mask" in msg
    assert f"{mb}: mask is 32x32 but its image {b.name} is 64x64" in msg
    assert f"{truncated}: cannot be decoded" in msg
    assert str(coal / "test" / "good" / "000.png") in msg
    assert f"{md}: mask has no anomalous pixel" in msg
    assert tree_hashes(coal) == before  # checks never modify the data


def test_missing_and_empty_folders(tmp_path, coal):
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(tmp_path / "nowhere")
    for p in (coal / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=r"train/good: no images"):
        check_dataset(coal)
    import shutil
    shutil.rmtree(coal / "test")
    with pytest.raises(DatasetError, match=r"test: missing"):
        check_dataset(coal, splits=("test",))


def test_notes_for_converted_images_nonbinary_masks_and_ignored_files(coal):
    Image.open(coal / "train" / "good" / "000.png").convert("L").save(coal / "train" / "good" / "000.png")
    Image.open(coal / "train" / "good" / "002.png").convert("RGBA").save(coal / "train" / "good" / "002.png")
    a = anomalous(coal)[0]
    ma = coal / "ground_truth" / a.parent.name / f"{a.stem}_mask.png"
    m = np.asarray(Image.open(ma)).copy()
    m[m == 255] = 200
    m[:2, :2] = 90
    Image.fromarray(m).save(ma)
    (coal / "train" / "good" / ".DS_Store").write_bytes(b"x")
    (coal / "test" / "good" / "readme.txt").write_text("x")
    notes = check_dataset(coal)
    text = "\n".join(notes)
    assert "2 image(s) not RGB" in text and "converted to RGB" in text
    assert "binarised at >= 128" in text and str(ma) in text
    assert "hidden or non-image" in text


def test_scripts_print_a_clean_message_for_a_missing_dataset(tmp_path):
    cmd = [sys.executable, str(REPO / "train_ma_clu.py"), "--set", f"data.root={tmp_path}", "--set", "data.download=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ model files
@pytest.fixture
def trained(tmp_path, coal):
    cfg = tiny_config(tmp_path, coal.parent, "coal_ad", "maclu.image_size=70", "ma2patch.image_size=84",
                      "patchcore.image_size=64", "data.eval_size=84", "patchcore.coreset_ratio=0.1")
    for b in ("maclu", "ma2patch", "patchcore"):
        train_branch(b, cfg)
    return cfg


class Payload:
    def __reduce__(self):
        return (open, (os.environ["USAD_MARKER"], "w"))


def test_malicious_pickle_is_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    monkeypatch.setenv("USAD_MARKER", str(marker))
    evil = tmp_path / "maclu.pt"
    torch.save({"format": "usad-branch/1", "tensors": {}, "x": Payload()}, evil)
    with pytest.raises(ArtifactError, match="not a readable usad model file"):
        load_artifact(evil, "maclu", {}, "python train_ma_clu.py")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "plain.pkl", "maclu", {}, "python train_ma_clu.py")
    assert not marker.exists()


def test_truncated_model_file(trained):
    path = model_path(trained, "ma2patch")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=str(path).replace(".", r"\.") + ".*not a readable"):
        build_branch("ma2patch", trained, torch.device("cpu")).load(path)


def test_model_from_another_config_refuses_to_load_naming_values(trained):
    other = with_overrides(trained, "maclu.image_size=98", "maclu.kmeans_seed=1")
    with pytest.raises(ArtifactError) as err:
        build_branch("maclu", other, torch.device("cpu")).load(model_path(trained, "maclu"))
    assert "image_size: file has 70, config has 98" in str(err.value)
    assert "kmeans_seed: file has 42, config has 1" in str(err.value)
    other = with_overrides(trained, "patchcore.backbone=resnet34")
    with pytest.raises(ArtifactError, match="backbone: file has 'resnet18', config has 'resnet34'"):
        build_branch("patchcore", other, torch.device("cpu")).load(model_path(trained, "patchcore"))
    # inference-only values may change freely
    ok = with_overrides(trained, "maclu.tau=1.2", "maclu.sigma=2", "patchcore.k_nearest=5", "fusion.lambda_obj=0.1")
    build_branch("maclu", ok, torch.device("cpu")).load(model_path(trained, "maclu"))


def test_nan_in_a_model_is_reported_with_the_image(trained):
    path = model_path(trained, "ma2patch")
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["mu"][0] = float("nan")
    torch.save(payload, path)
    with pytest.raises(NonFiniteError, match=r"s_attr is NaN or infinite for test image test/\w+/\d+\.png"):
        evaluate(trained)


def test_interrupted_training_keeps_the_previous_model(tmp_path):
    data = make_synthetic_coalad(tmp_path / "data", n_train=60, n_test_good=1, n_test_anomalous=1, size=64)
    sets = [f"data.root={data.parent}", "data.download=false", "data.num_workers=0", "data.batch_size=1",
            "ma2patch.pretrained=false", f"ma2patch.model_kwargs={TINY_VIT_B}", f"paths.models={tmp_path / 'models'}"]
    argv = [sys.executable, str(REPO / "train_ma2patch.py")] + [a for s in sets for a in ("--set", s)]
    assert subprocess.run(argv, capture_output=True, cwd=tmp_path, timeout=300).returncode == 0
    models = tmp_path / "models" / "coal_ad"
    good = sha(models / "ma2patch.pt")
    # a second run with a full-size random ViT-B (tens of seconds on a CPU), interrupted while it computes
    slow = argv + ["--set", "ma2patch.model_kwargs={}"]
    proc = subprocess.Popen(slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    seen = b""
    while b"fitting on" not in seen and proc.poll() is None:
        seen += proc.stderr.read1(4096)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = seen + rest
    assert proc.returncode != 0 and b"interrupted" in err
    assert sha(models / "ma2patch.pt") == good
    assert sorted(p.name for p in models.iterdir()) == ["ma2patch.pt"]  # no temporary or partial file


# --------------------------------------------------------------------------- config and numerics
@pytest.mark.parametrize("override, key", [("maclu.tau=high", "maclu.tau"), ("maclu.tua=1", "maclu.tua")])
def test_bad_config_values_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_one_class_test_set_is_a_clear_metric_error():
    with pytest.raises(metrics.MetricError, match="both"):
        metrics.image_auroc(np.zeros(5), np.arange(5.0))
    with pytest.raises(metrics.MetricError):
        metrics.pixel_auroc(np.zeros((2, 4, 4)), np.random.rand(2, 4, 4))


def test_nan_scores_name_the_image():
    scores = np.arange(6.0)
    scores[4] = np.nan
    with pytest.raises(metrics.MetricError, match="4"):
        metrics.image_auroc(np.array([0, 1, 0, 1, 0, 1]), scores)


def test_missing_model_is_reported_before_any_backbone_is_built(tmp_path, coal):
    # with pretrained weights (offline here) a backbone build would fail first; the model file check comes before it
    cfg = tiny_config(tmp_path, coal.parent, "coal_ad", "maclu.pretrained=true")
    with pytest.raises(ArtifactError, match=r"no trained maclu model at .*: run `python train_ma_clu.py` first"):
        load_branches(cfg, torch.device("cpu"))
