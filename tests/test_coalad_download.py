"""CoalAD download path: genuinely offline here, tars placed by hand, truncated tars, foreign folders."""

import io
import tarfile
import time

import pytest

from usad.data.coalad import (DOWNLOADS, MARKER, TEST_TAR, TRAIN_TAR, DatasetUnavailableError, count_images,
                              download_coalad, is_complete)
from usad.data.dataset import DatasetError
from usad.data.synthetic import make_synthetic_coalad

SMALL = {"train/good": 4, "test/good": 2, "test_anomalous": 3}


def make_tars(tmp_path, top="coal_ad"):
    """The two CoalAD tars, built from a small synthetic set (train in one, test + ground_truth in the other)."""
    src = make_synthetic_coalad(tmp_path / "src", n_train=4, n_test_good=2, n_test_anomalous=3, size=32)
    downloads = tmp_path / "root" / DOWNLOADS
    downloads.mkdir(parents=True)
    with tarfile.open(downloads / TRAIN_TAR, "w") as t:
        t.add(src / "train", arcname=f"{top}/train")
    with tarfile.open(downloads / TEST_TAR, "w") as t:
        t.add(src / "test", arcname=f"{top}/test")
        t.add(src / "ground_truth", arcname=f"{top}/ground_truth")
    return tmp_path / "root"


def test_offline_download_fails_fast_with_manual_layout(tmp_path):
    t0 = time.time()
    with pytest.raises(DatasetUnavailableError) as err:
        download_coalad(tmp_path)
    msg = str(err.value)
    assert "lyfjwp/CoalAD" in msg and "ModelScope" in msg
    assert "train/good" in msg and "ground_truth/<kind>/<name>_mask.png" in msg and DOWNLOADS in msg
    assert time.time() - t0 < 60
    assert not (tmp_path / "coal_ad").exists()


def test_tars_placed_by_hand_unpack_to_a_complete_dataset(tmp_path):
    root = make_tars(tmp_path)
    target = download_coalad(root, expected=SMALL)
    assert target == root / "coal_ad" and (target / MARKER).is_file()
    assert is_complete(target, SMALL)
    assert count_images(target)["masks"] == 3
    assert not list(root.glob(".coal_ad.partial*"))
    assert download_coalad(root, expected=SMALL) == target  # second call: already complete


def test_truncated_tar_is_an_error_and_leaves_nothing_complete(tmp_path):
    root = make_tars(tmp_path)
    tar = root / DOWNLOADS / TEST_TAR
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="damaged or incomplete|wrong number"):
        download_coalad(root, expected=SMALL)
    assert not (root / "coal_ad").exists()
    assert not is_complete(root / "coal_ad", SMALL)
    assert not list(root.glob(".coal_ad.partial*"))


def test_wrong_counts_are_named(tmp_path):
    root = make_tars(tmp_path)
    with pytest.raises(DatasetError, match="expected train/good=5"):
        download_coalad(root, expected={**SMALL, "train/good": 5})
    assert not (root / "coal_ad").exists()


def test_existing_folder_without_marker_is_never_deleted(tmp_path):
    root = tmp_path / "root"
    partial = make_synthetic_coalad(root, n_train=3, n_test_good=2, n_test_anomalous=3, size=32)
    before = sorted(p.relative_to(partial) for p in partial.rglob("*"))
    assert not is_complete(partial, SMALL)  # no marker: not taken for complete
    with pytest.raises(DatasetError, match="left untouched"):
        download_coalad(root, expected=SMALL)
    assert sorted(p.relative_to(partial) for p in partial.rglob("*")) == before


def test_hand_made_complete_folder_is_marked_complete(tmp_path):
    root = tmp_path / "root"
    made = make_synthetic_coalad(root, n_train=4, n_test_good=2, n_test_anomalous=3, size=32)
    assert download_coalad(root, expected=SMALL) == made
    assert is_complete(made, SMALL)
