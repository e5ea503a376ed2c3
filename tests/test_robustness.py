"""Bad input gets a clear error naming the file, and nothing is lost (issue: robustness and safety)."""

import io
import logging
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from usad.core import metrics
from usad.core.artifacts import FORMAT, ArtifactError, atomic_write, load_artifact, save_artifact
from usad.core.config import ConfigError, load_config, with_overrides
from usad.core.data.checks import check_dataset
from usad.core.data import dataset as ds
from usad.core.data.dataset import DatasetError
from usad.core.data.synthetic import make_synthetic_coalad
from usad.core.errors import UsadError
from usad.core.mahalanobis import GaussianAccumulator, mahalanobis
from usad.core.ops import minmax_normalize
from usad.core.cli import run_cli
from usad.models.usad.branches import build_branch, load_branches, model_path, train_branch
from usad.models.usad.inference import NonFiniteError, evaluate
from usad.core.outputs import write_json

from conftest import REPO, TINY_VIT_B, sha, tiny_config, tree_hashes


@pytest.fixture
def coal(tmp_path):
    return make_synthetic_coalad(tmp_path / "data", n_train=4, n_test_good=2, n_test_anomalous=4, size=64, seed=5)


def anomalous(root):
    return sorted(p for p in (root / "test").glob("*/*.png") if p.parent.name != "good")


def mask_of(root, image):
    return root / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"


def problems_of(root, **kw) -> str:
    """The message of the one DatasetError check_dataset raises; the data must be unchanged by the check."""
    before = tree_hashes(root)
    with pytest.raises(DatasetError) as err:
        check_dataset(root, **kw)
    assert tree_hashes(root) == before  # checks never modify the data
    return str(err.value)


# ------------------------------------------------------------------------------------------- dataset
def test_clean_dataset_passes(coal):
    before = tree_hashes(coal)
    assert check_dataset(coal, eval_size=64) == []
    assert tree_hashes(coal) == before


def test_all_problems_reported_in_one_pass(coal):
    a, b, c, d = anomalous(coal)
    mask_of(coal, a).unlink()                                                         # missing mask
    Image.open(mask_of(coal, b)).resize((32, 32)).save(mask_of(coal, b))              # wrong-size mask
    mask_of(coal, c).write_bytes(mask_of(coal, c).read_bytes()[:100])                 # truncated mask
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mask_of(coal, d))              # empty mask
    truncated = coal / "train" / "good" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])                               # truncated image
    junk = coal / "test" / "good" / "000.png"
    junk.write_bytes(b"this is not a png")                                            # not an image
    msg = problems_of(coal)
    assert "6 problem(s)" in msg
    assert f"{a}: anomalous test image without its mask; expected {mask_of(coal, a)}" in msg
    assert f"{mask_of(coal, b)}: mask is 32x32 but its image {b.name} is 64x64" in msg
    assert f"{mask_of(coal, c)}: mask cannot be decoded" in msg
    assert f"{mask_of(coal, d)}: mask has no anomalous pixel (none >= 128 of 255)" in msg
    assert f"{truncated}: cannot be decoded" in msg and "replace or delete it" in msg
    assert f"{junk}: cannot be decoded" in msg


def test_each_split_alone(coal):
    truncated = coal / "train" / "good" / "001.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    assert check_dataset(coal, splits=("test",)) == []       # evaluation does not need the training images
    assert str(truncated) in problems_of(coal, splits=("train",))


def test_long_lists_are_capped(tmp_path):
    root = make_synthetic_coalad(tmp_path, n_train=25, n_test_good=1, n_test_anomalous=1, size=32, seed=1)
    for p in (root / "train" / "good").iterdir():
        p.write_bytes(b"")
    msg = problems_of(root)
    assert "25 problem(s)" in msg and "... and 5 more" in msg
    assert msg.count("cannot be decoded") == 20


@pytest.mark.parametrize("damage, expected", [
    (lambda r: shutil.rmtree(r / "train"), "{r}/train/good: missing"),
    (lambda r: [p.unlink() for p in (r / "train" / "good").iterdir()], "{r}/train/good: no images"),
    (lambda r: [p.rename(p.with_suffix(".txt")) for p in (r / "train" / "good").iterdir()], "{r}/train/good: no images"),
    (lambda r: [p.unlink() for p in sorted((r / "train" / "good").iterdir())[1:]], "{r}/train/good: only 1 training image"),
    (lambda r: shutil.rmtree(r / "test"), "{r}/test: missing"),
    (lambda r: [shutil.rmtree(d) for d in (r / "test").iterdir()], "{r}/test: no images"),
    (lambda r: shutil.rmtree(r / "ground_truth"), "{r}/ground_truth: missing; the 4 anomalous test images need masks"),
])
def test_missing_and_empty_folders(coal, damage, expected):
    damage(coal)
    msg = problems_of(coal)
    assert expected.format(r=coal) in msg
    assert msg.startswith("1 problem(s)")


def test_missing_category_folder(tmp_path):
    with pytest.raises(DatasetError, match=f"dataset folder {tmp_path / 'nowhere'} does not exist.*MVTec-AD layout"):
        check_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize("remove, expected", [
    ("anomalous", "{r}/test: only normal test images (2 in {r}/test/good); the metrics (AUROC, PRO) need anomalous "
                  "ones too: add test/<kind>/*.png with masks at ground_truth/<kind>/<name>_mask.png"),
    ("normal", "{r}/test/good: no normal test images (all 4 are anomalous); the metrics (AUROC, PRO) need normal "
               "ones too: add normal test images there"),
])
def test_one_class_test_split_is_a_problem_before_any_compute(coal, remove, expected):
    for d in (coal / "test").iterdir():
        if (d.name == "good") == (remove == "normal"):
            shutil.rmtree(d)
    msg = problems_of(coal, splits=("test",))
    assert msg.startswith("1 problem(s)") and expected.format(r=coal) in msg
    assert check_dataset(coal, splits=("train",)) == []  # training does not need the test split


def test_evaluation_stops_on_a_one_class_test_set_before_loading_models(tmp_path, coal):
    cfg = tiny_config(tmp_path, coal.parent, "coal_ad")  # no model trained: the dataset check must come first
    shutil.rmtree(coal / "test" / "good")
    with pytest.raises(DatasetError, match=r"test/good: no normal test images"):
        evaluate(cfg)
    assert not (tmp_path / "results").exists()


def test_notes_for_accepted_inputs(coal, caplog):
    good = coal / "train" / "good"
    Image.open(good / "000.png").convert("L").save(good / "000.png")                  # grayscale
    Image.open(good / "001.png").convert("RGBA").save(good / "001.png")               # RGBA
    Image.open(good / "002.png").convert("P").save(good / "002.png")                  # palette
    wide = coal / "test" / "good" / "001.png"
    Image.fromarray((np.asarray(Image.open(wide).convert("L")).astype(np.uint16) * 257)).save(wide)  # 16-bit
    ma = mask_of(coal, anomalous(coal)[0])
    m = np.asarray(Image.open(ma)).copy()
    m[m == 255] = 200
    m[:2, :2] = 90
    Image.fromarray(m).save(ma)                                                       # soft mask
    Image.open(good / "003.png").resize((64, 48)).save(good / "003.png")              # not square
    (good / ".DS_Store").write_bytes(b"x")                                            # hidden file
    (coal / "test" / "good" / "readme.txt").write_text("x")                           # not an image
    (coal / "test" / ".cache").mkdir()
    (coal / "test" / ".cache" / "broken.png").write_bytes(b"broken")                  # hidden folder
    (coal / "ground_truth" / "wood" / "999_mask.png").write_bytes(b"orphan")          # mask without image
    before = tree_hashes(coal)
    with caplog.at_level(logging.WARNING):
        notes = check_dataset(coal, eval_size=96)
    assert tree_hashes(coal) == before  # accepted as they are: nothing converted or deleted on disk
    assert {".DS_Store", "readme.txt", "broken.png", "999_mask.png"} <= {p.rsplit("/", 1)[-1] for p in before}
    text = "\n".join(notes)
    assert "3 image(s) not RGB (grayscale/RGBA/palette/CMYK), converted to RGB" in text
    assert "1 image(s) with 16-bit or float pixels, converted to 8-bit RGB by clipping at 255" in text and str(wide) in text
    assert f"1 mask(s) not strictly 0/255, binarised at >= 128 of 255 (pixels >= 128 are anomalous), e.g. {ma}" in text
    assert f"1 image(s) not square, stretched to a square when resized, e.g. {good / '003.png'}" in text
    assert "6 test image(s) smaller than the evaluation size 96, upsampled" in text
    assert f"1 hidden or non-image file(s) under {coal / 'train'} ignored" in text
    assert f"2 hidden or non-image file(s) under {coal / 'test'} ignored" in text
    assert f"1 mask(s) under {coal / 'ground_truth'} without a test image, ignored" in text
    assert all(n in caplog.text for n in notes)  # also logged as warnings


def test_checks_agree_with_the_loaders(coal):
    """What check_dataset rejects is exactly what the training / test datasets fail to load, and nothing else."""
    good = coal / "train" / "good"
    (good / "007.PNG").write_bytes(b"upper-case suffix: used, and broken")
    (good / ".hidden.png").write_bytes(b"hidden: ignored")
    (good / "notes.png.txt").write_bytes(b"not an image suffix: ignored")
    nested = coal / "test" / "good" / "sub"
    nested.mkdir()
    shutil.copy(coal / "test" / "good" / "000.png", nested / "000.png")              # normal: needs no mask
    (coal / "test" / "loose.png").write_bytes(b"outside a class folder: ignored")
    (coal / "test" / ".trash").mkdir()
    (coal / "test" / ".trash" / "000.png").write_bytes(b"in a hidden folder: ignored")
    a = anomalous(coal)[1]
    mask_of(coal, a).unlink()
    msg = problems_of(coal)

    failing = []
    for dataset in (ds.TrainDataset(coal, 32), ds.TestDataset(coal, 32)):
        for i, s in enumerate(dataset.samples):
            try:
                dataset[i]
            except DatasetError:
                failing.append(s.path)
    assert sorted(failing) == sorted([good / "007.PNG", a])
    assert msg.startswith("2 problem(s)") and all(str(p) in msg for p in failing)
    assert {s.path for s in ds.test_samples(coal)} >= {nested / "000.png"}
    assert len(ds.train_samples(coal)) == 5


def test_training_script_stops_on_a_broken_dataset_before_any_compute(tmp_path, coal, caplog):
    import train_pc

    truncated = coal / "train" / "good" / "002.png"
    truncated.write_bytes(truncated.read_bytes()[:300])
    argv = ["--set", f"data.root={coal.parent}", "--set", "data.download=false",
            "--set", f"paths.models={tmp_path / 'models'}", "--set", "patchcore.pretrained=true"]
    with caplog.at_level(logging.INFO):
        assert run_cli(train_pc.main, argv) == 2
    assert f"{truncated}: cannot be decoded" in caplog.text
    assert "fitting on" not in caplog.text and not (tmp_path / "models").exists()


def test_scripts_print_a_clean_message_for_a_missing_dataset(tmp_path, caplog):
    import train_ma2patch
    import train_ma_clu
    import train_pc

    args = ["--set", f"data.root={tmp_path}", "--set", "data.download=false"]
    message = f"dataset folder {tmp_path / 'coal_ad'} does not exist"
    proc = subprocess.run([sys.executable, str(REPO / "test_fusion.py"), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    for script in (train_ma_clu, train_ma2patch, train_pc):  # the same run_cli, in this process (no import cost)
        caplog.clear()
        assert run_cli(script.main, args) == 2
        assert message in caplog.text


# ------------------------------------------------------------------------------------ model files
TRAINED = ("maclu.image_size=70", "ma2patch.image_size=84", "patchcore.image_size=64", "data.eval_size=84",
           "patchcore.coreset_ratio=0.1")


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """Data and the three tiny trained branches, made once for this module."""
    tmp = tmp_path_factory.mktemp("trained")
    coal = make_synthetic_coalad(tmp / "data", n_train=4, n_test_good=2, n_test_anomalous=4, size=64, seed=5)
    cfg = tiny_config(tmp, coal.parent, "coal_ad", *TRAINED)
    for b in ("maclu", "ma2patch", "patchcore"):
        train_branch(b, cfg)
    return tmp


@pytest.fixture
def trained(tmp_path, trained_once):
    """A private copy of ``trained_once`` (tests damage its files) and its config."""
    for name in ("data", "models"):
        shutil.copytree(trained_once / name, tmp_path / name)
    return tiny_config(tmp_path, tmp_path / "data", "coal_ad", *TRAINED)


class Payload:
    """Unpickling this object would create the marker file."""

    def __reduce__(self):
        return (open, (os.environ["USAD_MARKER"], "w"))


def test_malicious_pickle_is_never_executed(tmp_path, monkeypatch, coal):
    marker = tmp_path / "executed"
    monkeypatch.setenv("USAD_MARKER", str(marker))
    evil = tmp_path / "maclu.pt"
    torch.save({"format": FORMAT, "tensors": {}, "x": Payload()}, evil)
    with pytest.raises(ArtifactError, match=f"{evil} is not a readable usad model file"):
        load_artifact(evil, "maclu", {}, "python train_ma_clu.py")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(ArtifactError, match="plain.pkl is not a readable usad model file"):
        load_artifact(tmp_path / "plain.pkl", "maclu", {}, "python train_ma_clu.py")
    # the same file where the pipeline looks for a trained model
    cfg = tiny_config(tmp_path, coal.parent, "coal_ad")
    model_path(cfg, "maclu").parent.mkdir(parents=True)
    shutil.copy(evil, model_path(cfg, "maclu"))
    with pytest.raises(ArtifactError, match="maclu.pt is not a readable usad model file"):
        load_branches(cfg, torch.device("cpu"))
    assert not marker.exists()


def test_truncated_or_tampered_model_file(trained):
    models = model_path(trained, "ma2patch").parent
    path = model_path(trained, "ma2patch")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=str(path).replace(".", r"\.") + ".*not a readable.*train_ma2patch.py"):
        build_branch("ma2patch", trained, torch.device("cpu")).load(path)
    with pytest.raises(ArtifactError, match="ma2patch.pt is not a readable"):
        load_branches(trained, torch.device("cpu"))
    shutil.copy(model_path(trained, "maclu"), path)                     # another branch's file
    with pytest.raises(ArtifactError, match=f"{path} holds a 'maclu' model, expected 'ma2patch'"):
        load_branches(trained, torch.device("cpu"))
    torch.save({"format": "something-else", "tensors": {}}, path)      # not our format
    with pytest.raises(ArtifactError, match=f"is not a usad model file of format {FORMAT}"):
        load_branches(trained, torch.device("cpu"))
    before = tree_hashes(models)
    with pytest.raises(ArtifactError):
        load_branches(trained, torch.device("cpu"))
    assert tree_hashes(models) == before  # a failed load never touches the files


def test_a_changed_byte_in_a_model_tensor_is_refused(trained):
    """A file that still unpickles but whose tensor bytes changed after saving (bit rot, hand edits) is refused."""
    path = model_path(trained, "ma2patch")
    payload = torch.load(path, weights_only=True)
    mu = payload["tensors"]["mu"].numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = bytes(data).find(mu)  # torch.save stores tensor bytes verbatim
    assert at > 0 and bytes(data).find(mu, at + 1) == -1
    data[at + 5] ^= 0x01  # one bit of one float of mu
    path.write_bytes(bytes(data))
    changed = torch.load(path, weights_only=True)  # still a well-formed file: only the checksum can tell
    assert not torch.equal(changed["tensors"]["mu"], payload["tensors"]["mu"])
    with pytest.raises(ArtifactError, match=f"{path}: its content does not match the checksum .*train_ma2patch.py"):
        load_branches(trained, torch.device("cpu"))
    changed["info"]["edited"] = True  # a value changed and re-saved with torch.save: same verdict
    changed["tensors"]["mu"] = payload["tensors"]["mu"]
    torch.save(changed, path)
    with pytest.raises(ArtifactError, match="does not match the checksum"):
        load_branches(trained, torch.device("cpu"))
    del changed["info"]["edited"]
    torch.save(changed, path)  # the original content again: loads
    load_branches(trained, torch.device("cpu"))


def test_model_from_another_config_refuses_to_load_naming_values(trained):
    other = with_overrides(trained, "maclu.image_size=98", "maclu.kmeans_seed=1")
    with pytest.raises(ArtifactError) as err:
        build_branch("maclu", other, torch.device("cpu")).load(model_path(trained, "maclu"))
    assert "image_size: file has 70, config has 98" in str(err.value)
    assert "kmeans_seed: file has 42, config has 1" in str(err.value)
    other = with_overrides(trained, "patchcore.backbone=resnet34")
    with pytest.raises(ArtifactError, match="backbone: file has 'resnet18', config has 'resnet34'"):
        build_branch("patchcore", other, torch.device("cpu")).load(model_path(trained, "patchcore"))
    other = with_overrides(trained, "ma2patch.image_size=98")
    with pytest.raises(ArtifactError, match=r"ma2patch\.pt was trained with another config \(image_size: file has 84, config has 98\)"):
        load_branches(other, torch.device("cpu"))
    # inference-only values may change freely
    ok = with_overrides(trained, "maclu.tau=1.2", "maclu.sigma=2", "patchcore.k_nearest=5", "fusion.lambda_obj=0.1")
    assert set(load_branches(ok, torch.device("cpu"))) == {"maclu", "ma2patch", "patchcore"}


def test_nan_in_a_model_is_reported_with_the_image(trained):
    path = model_path(trained, "ma2patch")
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["mu"][0] = float("nan")  # as if trained from broken weights: a valid file holding a NaN
    save_artifact(path, "ma2patch", payload["fit_config"], payload["tensors"], payload["info"])
    with pytest.raises(NonFiniteError, match=r"s_attr is NaN or infinite for test image test/\w+/\d+\.png"):
        evaluate(trained)


def test_interrupted_training_keeps_the_previous_model(tmp_path, caplog):
    import train_ma2patch

    data = make_synthetic_coalad(tmp_path / "data", n_train=40, n_test_good=1, n_test_anomalous=1, size=64)
    models = tmp_path / "models" / "coal_ad"
    sets = [f"data.root={data.parent}", "data.download=false", "data.num_workers=0", "data.batch_size=1",
            "device=cpu", "ma2patch.pretrained=false", f"paths.models={models.parent}"]
    argv = [a for s in sets for a in ("--set", s)]
    # a first, complete training (tiny ViT, small images)
    assert run_cli(train_ma2patch.main, argv + ["--set", f"ma2patch.model_kwargs={TINY_VIT_B}",
                                                "--set", "ma2patch.image_size=56"]) == 0
    good = sha(models / "ma2patch.pt")
    # a second run with a full-size random ViT-B at 406 px (seconds per image on a CPU), Ctrl-C while it computes
    # SIGINT back to its default in the child: a test runner started in the background (``cmd &``) passes SIGINT
    # on as ignored, and Python then never turns Ctrl-C into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, str(REPO / "train_ma2patch.py"), *argv, "--set", "ma2patch.model_kwargs={}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = b""
    while b"fitting on" not in seen and proc.poll() is None:
        seen += proc.stderr.read1(4096)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = (seen + rest).decode()
    assert proc.returncode != 0 and "interrupted" in err and "Traceback" not in err, err
    assert sha(models / "ma2patch.pt") == good
    assert sorted(p.name for p in models.iterdir()) == ["ma2patch.pt"]  # no temporary or partial file
    load_artifact(models / "ma2patch.pt", "ma2patch", {}, "")            # and it is still a complete model file


def test_results_are_written_atomically(tmp_path):
    out = tmp_path / "results" / "metrics.json"
    write_json(out, {"image_auroc": 0.9})
    before = sha(out)

    def interrupted_write(tmp):
        tmp.write_text('{"image_auroc": 0.')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(out, interrupted_write)
    with pytest.raises(TypeError):
        write_json(out, {"not json": object()})
    assert sha(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]


def write_half_then_interrupt(seen: list):
    """Fault injection: wrap a library writer so that it writes half of its bytes to the target, then Ctrl-C."""
    def cut(target, data: bytes) -> None:
        half = data[: len(data) // 2]
        if hasattr(target, "write"):
            target.write(half)
            target.flush()
            name = Path(target.name)
        else:
            name = Path(target)
            with open(name, "wb") as out:
                out.write(half)
        seen.append((name, len(half), name.stat().st_size))
        raise KeyboardInterrupt

    return cut


@pytest.mark.parametrize("what", ["model", "predictions", "png"])
def test_ctrl_c_in_the_middle_of_a_write_keeps_the_previous_file(tmp_path, trained, monkeypatch, caplog, what):
    """Ctrl-C while the library call is half-way through writing: the old file stays, byte for byte, no temp file."""
    import train_ma2patch
    from usad.models.usad.inference import Predictions
    from usad.core.outputs import write_png
    from usad.experiments.report import save_predictions

    seen = []
    cut = write_half_then_interrupt(seen)
    if what == "model":
        target = model_path(trained, "ma2patch")
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            cut(f, buf.getvalue())

        monkeypatch.setattr(torch, "save", save)
        sets = [f"data.root={tmp_path / 'data'}", "data.download=false", "data.num_workers=0", "device=cpu",
                "ma2patch.pretrained=false", f"ma2patch.model_kwargs={TINY_VIT_B}", "ma2patch.image_size=84",
                "ma2patch.cov_eps=1.0e-6", f"paths.models={tmp_path / 'models'}"]
        write = lambda: run_cli(train_ma2patch.main, [a for x in sets for a in ("--set", x)])  # noqa: E731
    elif what == "predictions":
        target = tmp_path / "results" / "predictions.npz"

        def preds(value):
            n, size = 3, 8
            return Predictions(files=[f"test/good/{i:03d}.png" for i in range(n)], label=np.array([0, 1, 1]),
                               scores={k: np.full(n, value, np.float32) for k in ("s_obj", "s_attr", "s_pc", "s_fused", "s_M")},
                               maps={k: np.full((n, size, size), value, np.float32) for k in ("m_obj", "m_attr", "m_pc", "m_fused")},
                               mask=np.zeros((n, size, size), np.uint8))

        save_predictions(target, preds(1.0))
        real_savez = np.savez

        def savez(file, *args, **kwargs):
            buf = io.BytesIO()
            real_savez(buf, *args, **kwargs)
            cut(file, buf.getvalue())

        monkeypatch.setattr(np, "savez", savez)
        write = lambda: save_predictions(target, preds(2.0))  # noqa: E731
    else:
        import pathlib
        target = tmp_path / "results" / "heatmaps" / "wood_000.png"
        write_png(target, np.zeros((32, 32, 3), np.uint8))
        monkeypatch.setattr(pathlib.Path, "write_bytes", lambda self, data: cut(self, bytes(data)))
        write = lambda: write_png(target, np.full((32, 32, 3), 200, np.uint8))  # noqa: E731
    before = sha(target)
    others = sorted(p.name for p in target.parent.iterdir())
    with caplog.at_level(logging.ERROR):
        if what == "model":
            assert write() == 130  # the script's exit status for Ctrl-C
            assert "interrupted: nothing half-written was kept" in caplog.text
        else:
            with pytest.raises(KeyboardInterrupt):
                write()
    (tmp, written, size), = seen
    assert written > 0 and size == written   # the interruption really came in the middle of the file
    assert tmp.parent == target.parent and tmp != target and not tmp.exists()
    assert sha(target) == before              # the previous file, byte for byte
    assert sorted(p.name for p in target.parent.iterdir()) == others  # no temporary file left
    monkeypatch.undo()
    if what == "model":
        load_artifact(target, "ma2patch", {}, "")
    elif what == "predictions":
        assert float(np.load(target)["s_obj"][0]) == 1.0


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def test_written_files_get_the_usual_permissions(tmp_path, umask):
    """Not mkstemp's 0600: models and results stay readable to the group on a shared cluster (as the umask says)."""
    from usad.core.outputs import write_png

    old = os.umask(umask)
    try:
        save_artifact(tmp_path / "models" / "maclu.pt", "maclu", {}, {"mu": torch.zeros(3)})
        write_json(tmp_path / "results" / "metrics.json", {"image_auroc": 0.9})
        write_png(tmp_path / "results" / "heatmap.png", np.zeros((4, 4, 3), np.uint8))
        write_json(tmp_path / "results" / "metrics.json", {"image_auroc": 0.8})  # replacing a file: same mode
        (tmp_path / "plain.txt").write_text("made by open()")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    for path in ("models/maclu.pt", "results/metrics.json", "results/heatmap.png"):
        assert oct(stat.S_IMODE((tmp_path / path).stat().st_mode)) == oct(expected), path


# --------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, key", [
    ("maclu.tau=high", "'maclu.tau' must be of type float"),
    ("maclu.tua=1", "unknown config key 'maclu.tua'"),
    ("data.batch_size=2.5", "'data.batch_size' must be of type int"),
    ("fusion=3", "'fusion' is a section"),
    ("data.download=yes please", "'data.download' must be of type bool"),
])
def test_bad_config_values_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_config_file_named(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("maclu:\n  tau: high\n")
    with pytest.raises(ConfigError, match=r"'maclu\.tau' must be of type float .*got str 'high'"):
        load_config(f)
    f.write_text("patchcore:\n  corset_ratio: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'patchcore\.corset_ratio'.*coreset_ratio"):
        load_config(f)
    f.write_text("maclu: [tau\n")
    with pytest.raises(ConfigError, match=f"config file {f} is not valid YAML"):
        load_config(f)


def no_gpu(case):
    return pytest.param(*case, marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU"),
                        id=f"{case[0]}-{case[1][0]}")


BAD_SETTINGS = [  # (script, --set values, the message's start): each found before any weights or compute
    ("train_ma_clu", ["maclu.model_kwargs={depht: 2}"],
     "config key 'maclu.model_kwargs' = {'depht': 2}: timm model 'vit_small_patch14_dinov2.lvd142m' takes no argument 'depht'"),
    ("train_ma_clu", ["maclu.model_kwargs={depth:2}"],
     "config key 'maclu.model_kwargs': 'depth:2' is not a keyword argument name. YAML needs a space after each colon"),
    ("train_ma_clu", ["maclu.backbone=no_such_model", "maclu.pretrained=false"],
     "config key 'maclu.backbone' = 'no_such_model' is not a timm model"),
    ("train_ma2patch", ["ma2patch.backbone=no_such_model"], "config key 'ma2patch.backbone' = 'no_such_model' is not a timm model"),
    ("train_pc", ["patchcore.backbone=no_such_net"], "config key 'patchcore.backbone' = 'no_such_net' is not a torchvision model"),
    ("train_pc", ["device=banana"], "config key 'device' must be one of auto | cpu | cuda | cuda:N"),
    no_gpu(("train_ma2patch", ["device=cuda"], "config key 'device' = 'cuda' but no CUDA GPU is available here")),
    ("train_ma_clu", ["maclu.cov_eps=0"], "config key 'maclu.cov_eps' must be in (0.0, inf), got 0.0"),
    ("train_pc", ["paths.models=/dev/null/models"],
     "paths.models = '/dev/null/models' cannot be created: /dev/null is a file, not a folder; choose another paths.models"),
    ("train_ma2patch", ["ma2patch.image_size=304"],
     "config key 'ma2patch.image_size' = 304 is not a multiple of the patch size 14 of 'vit_base_patch14_dinov2.lvd142m'; "
     "use 294 or 308"),
]


@pytest.mark.parametrize("script, sets, message", BAD_SETTINGS,
                         ids=lambda v: v if isinstance(v, str) and v.startswith("train") else v[0] if isinstance(v, list) else "")
def test_bad_settings_stop_the_script_with_one_message(tmp_path, coal, caplog, script, sets, message):
    main = __import__(script).main
    args = [f"data.root={coal.parent}", "data.download=false", f"paths.models={tmp_path / 'models'}", *sets]
    with caplog.at_level(logging.INFO):
        assert run_cli(main, [a for x in args for a in ("--set", x)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert "could not get the pretrained weights" not in caplog.text and "fitting on" not in caplog.text
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("script, bad", [("train_ma_clu", "maclu.model_kwargs={depht: 2}"),
                                         ("train_ma2patch", "ma2patch.image_size=304"),
                                         ("train_pc", "patchcore.backbone=no_such_net")])
def test_backbone_settings_are_checked_before_the_dataset_download(tmp_path, caplog, script, bad):
    root = tmp_path / "nowhere"  # no CoalAD there: a run that got that far would try to download it
    argv = ["--set", f"data.root={root}", "--set", "data.download=true", "--set", bad]
    with caplog.at_level(logging.INFO):
        assert run_cli(__import__(script).main, argv) == 2
    assert f"config key '{bad.split('=')[0]}" in caplog.text and "downloading" not in caplog.text
    assert not root.exists()


def test_output_that_cannot_be_written_is_a_clean_error(tmp_path):
    from usad.core.artifacts import WriteError, save_artifact

    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(WriteError, match=f"^cannot write {blocker / 'coal_ad' / 'metrics.json'}: "):
        write_json(blocker / "coal_ad" / "metrics.json", {"image_auroc": 0.9})
    with pytest.raises(WriteError, match=f"^cannot write {blocker / 'maclu.pt'}: "):
        save_artifact(blocker / "maclu.pt", "maclu", {}, {"mu": torch.zeros(2)})
    assert blocker.read_text() == "a file where a folder should be" and sorted(tmp_path.iterdir()) == [blocker]


@pytest.mark.parametrize("script, sets, message", [BAD_SETTINGS[0], BAD_SETTINGS[-1]], ids=["model_kwargs", "image_size"])
def test_bad_settings_in_a_real_script_run_exit_2_without_traceback(tmp_path, coal, script, sets, message):
    args = [f"data.root={coal.parent}", "data.download=false", f"paths.models={tmp_path / 'models'}", *sets]
    proc = subprocess.run([sys.executable, str(REPO / f"{script}.py"), *[a for x in args for a in ("--set", x)]],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "models").exists()


# ------------------------------------------------------------------------------------ numerics
def test_covariance_that_eps_cannot_lift_names_the_key(caplog):
    acc = GaussianAccumulator(8)
    acc.update(torch.ones(5, 8, dtype=torch.float64))  # identical features: Sigma = 0 exactly
    with pytest.raises(UsadError) as err:
        acc.finalize(1e-300, "MACLU CLS tokens", "maclu.cov_eps")  # > 0, but 0 in float32
    assert str(err.value).startswith("MACLU CLS tokens: the covariance plus maclu.cov_eps=1e-300 is not invertible")
    assert "set a larger maclu.cov_eps" in str(err.value)
    mu, cov, inv = acc.finalize(1e-6, "MACLU CLS tokens", "maclu.cov_eps")  # the paper's eps lifts it
    assert torch.isfinite(inv).all() and torch.allclose(inv, torch.eye(8) * 1e6)

def test_singular_covariance_gives_finite_scores_and_a_warning(caplog):
    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.normal(size=(5, 32)))           # 5 images, 32 dimensions: rank <= 4
    acc = GaussianAccumulator(32)
    acc.update(train[:2])
    acc.update(train[2:])
    with caplog.at_level(logging.WARNING):
        mu, cov, inv = acc.finalize(1e-6, "toy features")
    assert "toy features: 5 training images for 32 feature dimensions: the covariance is singular" in caplog.text
    singular_values = np.linalg.svd(cov.double().numpy(), compute_uv=False)
    assert singular_values[4:].max() < 1e-5 * singular_values[0]   # rank 4: singular
    np.testing.assert_allclose(mu.numpy(), train.numpy().mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cov.numpy(), np.cov(train.numpy(), rowvar=False), rtol=1e-5, atol=1e-6)
    d = mahalanobis(torch.from_numpy(rng.normal(size=(7, 32))).float(), mu, inv)
    assert torch.isfinite(d).all() and (d > 0).all()
    assert torch.isfinite(mahalanobis(train.float(), mu, inv)).all()


def test_constant_map_normalises_to_zeros():
    maps = torch.stack([torch.full((8, 8), 3.5), torch.arange(64.0).reshape(8, 8), torch.zeros(8, 8)])
    out = minmax_normalize(maps)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[2] == 0).all()
    np.testing.assert_allclose(out[1].numpy(), np.arange(64.0).reshape(8, 8) / 63, rtol=1e-6)


def test_one_class_test_set_is_a_clear_metric_error():
    with pytest.raises(metrics.MetricError, match=r"image_auroc needs both normal and anomalous images; got only normal"):
        metrics.image_auroc(np.zeros(5), np.arange(5.0))
    masks = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(metrics.MetricError, match="needs both normal and anomalous pixels"):
        metrics.pixel_auroc(masks, np.random.rand(2, 4, 4))
    with pytest.raises(metrics.MetricError, match="needs both"):
        metrics.compute_all(np.ones(2), np.arange(2.0), np.ones((2, 4, 4), np.uint8), np.random.rand(2, 4, 4))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_scores_and_maps_name_the_image(bad):
    labels = np.array([0, 1, 0, 1, 0, 1])
    scores = np.arange(6.0)
    scores[4] = bad
    with pytest.raises(metrics.MetricError, match=r"scores\[4\] is NaN or inf; fix the score of image 4"):
        metrics.image_auroc(labels, scores)
    masks = np.zeros((6, 8, 8), np.uint8)
    masks[1::2, 2:5, 2:5] = 1
    maps = np.random.default_rng(0).random((6, 8, 8))
    maps[3, 7, 1] = bad
    with pytest.raises(metrics.MetricError, match=r"maps\[3\] contains NaN or inf; fix the anomaly map of image 3"):
        metrics.pixel_auroc(masks, maps)
    with pytest.raises(metrics.MetricError, match=r"maps\[3\]"):
        metrics.compute_all(labels, np.arange(6.0), masks, maps)
