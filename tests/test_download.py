"""CoalAD download/unpack/verify: a real (offline) ModelScope attempt and tars built from a synthetic set."""

import io
import json
import logging
import socket
import tarfile
import time
from pathlib import Path

import pytest

from usad.data.coalad import (EXPECTED_COUNTS, MARKER, DatasetUnavailableError, count_images, download_coalad,
                              is_complete)
from usad.data.dataset import DatasetError
from usad.data.synthetic import make_synthetic_coalad


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A small synthetic CoalAD-layout set: 4 train, 2 good and 5 anomalous test images."""
    return make_synthetic_coalad(tmp_path_factory.mktemp("src"), n_train=4, n_test_good=2, n_test_anomalous=5,
                                 size=48, seed=2)


SMALL = {"train/good": 4, "test/good": 2, "test_anomalous": 5}


def write_tars(source: Path, downloads: Path, top: str | None = "coal_ad") -> tuple[Path, Path]:
    """The two CoalAD tars: train/ in one, test/ and ground_truth/ in the other (under an optional top folder)."""
    downloads.mkdir(parents=True, exist_ok=True)
    prefix = f"{top}/" if top else ""
    paths = downloads / "coal_ad_train.tar", downloads / "coal_ad_test.tar"
    for path, parts in zip(paths, (["train"], ["test", "ground_truth"])):
        with tarfile.open(path, "w") as tar:
            for part in parts:
                tar.add(source / part, arcname=prefix + part)
    return paths


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != ".downloads")


def test_count_images_ignores_hidden_and_non_images(source, tmp_path):
    assert count_images(source) == {**SMALL, "masks": 5}
    copy = tmp_path / "coal_ad"
    for name, data in files(source).items():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(data)
    (copy / "train" / "good" / ".hidden.png").write_bytes(b"x")
    (copy / "train" / "good" / "notes.txt").write_text("x")
    (copy / "test" / ".cache").mkdir()
    (copy / "test" / ".cache" / "000.png").write_bytes(b"x")
    assert count_images(copy) == {**SMALL, "masks": 5}
    assert count_images(tmp_path / "missing") == {"train/good": 0, "test/good": 0, "test_anomalous": 0, "masks": 0}


def test_offline_download_fails_clearly(tmp_path, monkeypatch):
    try:
        socket.getaddrinfo("modelscope.cn", 443)
        pytest.skip("network available: this test would download the real CoalAD")
    except OSError:
        pass
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms_cache"))
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as info:
        download_coalad(tmp_path / "data")
    assert time.perf_counter() - start < 30
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    for part in ("could not download lyfjwp/CoalAD", "ModelScope", "Reason: ",
                 str(tmp_path / "data" / ".downloads"), "coal_ad_train.tar", "coal_ad_test.tar",
                 str(tmp_path / "data" / "coal_ad" / "train" / "good" / "*.png"),
                 "test/good/*.png", "test/<kind>/*.png", "ground_truth/<kind>/<name>_mask.png"):
        assert part in msg, part
    reason = msg.split("Reason: ", 1)[1].split("\n", 1)[0]
    assert reason.strip() and len(reason) <= 300
    assert not (tmp_path / "data" / "coal_ad").exists()
    assert not is_complete(tmp_path / "data" / "coal_ad")


@pytest.mark.parametrize("top", ["coal_ad", "CoalAD-v1", None])
def test_tars_in_downloads_unpack_to_a_complete_dataset(source, tmp_path, top):
    root = tmp_path / "data"
    write_tars(source, root / ".downloads", top)
    out = download_coalad(root, expected=SMALL)  # no network needed: the tars are there
    assert out == root / "coal_ad"
    assert files(out) == files(source)
    assert is_complete(out, SMALL) and not is_complete(out)  # not the real CoalAD counts
    marker = json.loads((out / MARKER).read_text())
    assert marker["counts"] == {**SMALL, "masks": 5}
    assert leftovers(root) == ["coal_ad"]
    stamp = (out / MARKER).stat().st_mtime_ns
    assert download_coalad(root, expected=SMALL) == out and (out / MARKER).stat().st_mtime_ns == stamp


def test_truncated_tar_is_a_clear_error_and_leaves_nothing(source, tmp_path):
    root = tmp_path / "data"
    _, test_tar = write_tars(source, root / ".downloads")
    data = test_tar.read_bytes()
    test_tar.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as info:
        download_coalad(root, expected=SMALL)
    msg = str(info.value)
    assert str(test_tar) in msg or "expected train/good=4" in msg
    assert not isinstance(info.value, DatasetUnavailableError)
    assert not (root / "coal_ad").exists()
    assert not is_complete(root / "coal_ad", SMALL)
    assert leftovers(root) == []


def test_wrong_counts_name_expected_and_found(source, tmp_path):
    root = tmp_path / "data"
    write_tars(source, root / ".downloads")
    with pytest.raises(DatasetError, match=r"expected train/good=5, test/good=2, test_anomalous=5; "
                                           r"found train/good=4, test/good=2, test_anomalous=5"):
        download_coalad(root, expected={**SMALL, "train/good": 5})
    assert leftovers(root) == []


def test_unsafe_tar_member_is_refused(source, tmp_path):
    root = tmp_path / "data"
    train_tar, _ = write_tars(source, root / ".downloads")
    with tarfile.open(train_tar, "a") as tar:
        info = tarfile.TarInfo("../escaped.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(DatasetError, match="cannot unpack"):
        download_coalad(root, expected=SMALL)
    assert not (root / "escaped.png").exists() and not (tmp_path / "escaped.png").exists()
    assert leftovers(root) == []


def test_existing_folder_without_marker_is_not_taken_for_complete(source, tmp_path):
    """No marker -> not complete; download_coalad never deletes it: wrong counts are an error, it stays untouched."""
    root = tmp_path / "data"
    stale = make_synthetic_coalad(root, n_train=3, n_test_good=2, n_test_anomalous=5, size=48, seed=99)
    before = files(stale)
    assert not is_complete(stale, SMALL)
    write_tars(source, root / ".downloads")
    with pytest.raises(DatasetError, match="left untouched") as info:
        download_coalad(root, expected=SMALL)
    assert "train/good=3" in str(info.value) and "train/good=4" in str(info.value)
    assert files(stale) == before and not (stale / MARKER).exists()
    assert not is_complete(stale, SMALL)
    assert leftovers(root) == ["coal_ad"]


def test_hand_made_folder_with_expected_counts_is_marked(tmp_path, caplog):
    root = tmp_path / "data"
    made = make_synthetic_coalad(root, n_train=4, n_test_good=2, n_test_anomalous=5, size=48, seed=99)
    before = files(made)
    assert not is_complete(made, SMALL)  # same counts, but no marker yet
    with caplog.at_level(logging.INFO, logger="usad.data.coalad"):
        assert download_coalad(root, expected=SMALL) == made  # no tars, no network needed
    assert "marking it complete" in caplog.text
    assert is_complete(made, SMALL) and files(made) == before


def test_marker_does_not_hide_later_changes(source, tmp_path):
    root = tmp_path / "data"
    write_tars(source, root / ".downloads")
    out = download_coalad(root, expected=SMALL)
    (out / "test" / "good" / "000.png").unlink()
    assert not is_complete(out, SMALL)
    (out / MARKER).write_text("{not json")
    assert not is_complete(out, SMALL)


def test_expected_counts_of_the_real_dataset():
    assert EXPECTED_COUNTS == {"train/good": 2490, "test/good": 811, "test_anomalous": 943}
