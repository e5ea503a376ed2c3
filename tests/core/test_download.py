"""CoalAD download/unpack/verify: a real (offline) ModelScope attempt and tars built from a synthetic set."""

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from usad.core.data.coalad import (EXPECTED_COUNTS, MARKER, DatasetUnavailableError, count_images, download_coalad,
                              is_complete)
from usad.core.data.dataset import DatasetError
from usad.core.data.synthetic import make_synthetic_coalad

from conftest import REPO, tree_hashes


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


def test_offline_download_fails_clearly(tmp_path):
    """A real ModelScope attempt against an endpoint that refuses connections (the same offline or not), in the real
    script: one message with both manual ways out, exit status 2, and no folder left behind for the failed download."""
    root = tmp_path / "new" / "data"  # does not exist yet
    env = {**os.environ, "MODELSCOPE_ENDPOINT": "http://127.0.0.1:9", "MODELSCOPE_DOMAIN": "127.0.0.1:9",
           "MODELSCOPE_CACHE": str(tmp_path / "ms_cache")}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "train_ma_clu.py"), "--set", f"data.root={root}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert time.perf_counter() - start < 60
    msg = proc.stderr
    assert proc.returncode == 2 and "Traceback" not in msg, msg
    for part in ("could not download lyfjwp/CoalAD (coal_ad_train.tar) from ModelScope.\nReason: ",
                 f"put coal_ad_train.tar and coal_ad_test.tar (from https://modelscope.cn/datasets/lyfjwp/CoalAD) "
                 f"into {root / '.downloads'}/ and run the same command again",
                 f"{root / 'coal_ad' / 'train' / 'good' / '*.png'}", "test/good/*.png", "test/<kind>/*.png",
                 "ground_truth/<kind>/<name>_mask.png", "--set data.download=false"):
        assert part in msg, part
    reason = msg.split("Reason: ", 1)[1].split("\n", 1)[0]
    assert reason.strip() and len(reason) <= 300
    assert not (tmp_path / "new").exists()  # neither <root>/.downloads nor <root> (nor its missing parent) stay


def test_failed_download_keeps_folders_that_existed(tmp_path):
    from usad.core.data.coalad import missing_folders, remove_if_empty

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.txt").write_text("keep")
    created = missing_folders(tmp_path / "data" / "x" / ".downloads")
    assert created == [tmp_path / "data" / "x" / ".downloads", tmp_path / "data" / "x"]
    (tmp_path / "data" / "x" / ".downloads").mkdir(parents=True)
    remove_if_empty(created)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mine.txt"]
    (tmp_path / "data" / "x" / ".downloads").mkdir(parents=True)
    (tmp_path / "data" / "x" / ".downloads" / "coal_ad_train.tar").write_bytes(b"part")  # something was written
    remove_if_empty(created)
    assert (tmp_path / "data" / "x" / ".downloads" / "coal_ad_train.tar").read_bytes() == b"part"


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
    tars = tree_hashes(root / ".downloads")
    with pytest.raises(DatasetError) as info:
        download_coalad(root, expected=SMALL)
    msg = str(info.value)
    assert msg == (f"cannot unpack {test_tar}: ReadError: unexpected end of data. The file is damaged or incomplete: "
                   f"delete it and run again to download it again, or replace it with a complete copy.")
    assert not isinstance(info.value, DatasetUnavailableError)
    assert tree_hashes(root / ".downloads") == tars  # the tars are kept as they were: the message tells what to do
    assert not (root / "coal_ad").exists()
    assert not is_complete(root / "coal_ad", SMALL)
    assert leftovers(root) == []


def test_stale_partial_unpack_is_never_used_and_restarts_cleanly(source, tmp_path):
    """A killed run leaves <root>/.coal_ad.partial, even with a marker and read-only folders: it is wiped and redone."""
    root = tmp_path / "data"
    write_tars(source, root / ".downloads")
    stale = root / ".coal_ad.partial"
    fake = make_synthetic_coalad(stale, n_train=4, n_test_good=2, n_test_anomalous=5, size=48, seed=7)  # other images
    (fake / MARKER).write_text(json.dumps({"counts": count_images(fake)}))  # looks complete
    (stale / "unpacked" / "coal_ad" / "train" / "good").mkdir(parents=True)
    (stale / "unpacked" / "coal_ad" / "train" / "good" / "000.png").write_bytes(b"half an image")
    locked = stale / "unpacked" / "coal_ad"
    locked.chmod(0o555)  # as a tar may leave it: its contents cannot be deleted without a chmod
    try:
        out = download_coalad(root, expected=SMALL)
    finally:
        if locked.exists():
            locked.chmod(0o755)
    assert out == root / "coal_ad" and files(out) == files(source)  # the tars' images, not the stale ones
    assert is_complete(out, SMALL) and leftovers(root) == ["coal_ad"]


def test_stale_partial_is_never_taken_for_the_dataset_when_unpacking_fails(source, tmp_path):
    root = tmp_path / "data"
    _, test_tar = write_tars(source, root / ".downloads")
    test_tar.write_bytes(test_tar.read_bytes()[:5000])  # damaged: this run cannot finish
    stale = root / ".coal_ad.partial"
    fake = make_synthetic_coalad(stale, n_train=4, n_test_good=2, n_test_anomalous=5, size=48)
    (fake / MARKER).write_text(json.dumps({"counts": count_images(fake)}))  # a complete-looking stale copy
    with pytest.raises(DatasetError, match=f"cannot unpack {test_tar}"):
        download_coalad(root, expected=SMALL)
    assert not (root / "coal_ad").exists() and not is_complete(root / "coal_ad", SMALL)
    assert leftovers(root) == []  # the stale copy is gone too, never renamed into place


@pytest.mark.parametrize("member", ["../escaped.png", "/abs/escaped.png", "link-out", "device"])
def test_manual_member_checks_refuse_what_the_data_filter_refuses(source, tmp_path, member):
    """The fallback for Pythons without tarfile's filter="data" refuses the same unsafe members."""
    from usad.core.data.coalad import UnsafeMember, checked_members

    tar_path, _ = write_tars(source, tmp_path / "tars")
    with tarfile.open(tar_path) as tar:
        dest = tmp_path / "out"
        dest.mkdir()
        ok = checked_members(tar, dest)
        assert len(ok) == len(tar.getmembers()) and all(m.mode & 0o022 == 0 for m in ok)
    with tarfile.open(tar_path, "a") as tar:
        info = tarfile.TarInfo(member if member.endswith(".png") else f"coal_ad/{member}")
        if member == "link-out":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        elif member == "device":
            info.type = tarfile.CHRTYPE
        tar.addfile(info, io.BytesIO(b""))
    with tarfile.open(tar_path) as tar, pytest.raises(UnsafeMember):
        checked_members(tar, dest)
    assert not list(dest.iterdir())


def add_escaping_member(tar_path):
    """Append a member whose path leads out of the destination (``../escaped.png``)."""
    with tarfile.open(tar_path, "a") as tar:
        info = tarfile.TarInfo("../escaped.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))


def test_python_without_extraction_filters_unpacks_the_same_and_refuses_the_same(source, tmp_path, monkeypatch):
    """3.10 before 3.10.12 and 3.11 before 3.11.4 have no filter="data": the manual checks take over."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    root = tmp_path / "data"
    train_tar, _ = write_tars(source, root / ".downloads")
    out = download_coalad(root, expected=SMALL)
    assert files(out) == files(source) and is_complete(out, SMALL)
    other = tmp_path / "other"
    train_tar, _ = write_tars(source, other / ".downloads")
    add_escaping_member(train_tar)
    with pytest.raises(DatasetError, match=f"cannot unpack {train_tar}: UnsafeMember: member '../escaped.png' would be "
                                           f"written outside the destination"):
        download_coalad(other, expected=SMALL)
    assert not (other / "escaped.png").exists() and not (tmp_path / "escaped.png").exists()
    assert leftovers(other) == []


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
    add_escaping_member(train_tar)
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
    with caplog.at_level(logging.INFO, logger="usad.core.data.coalad"):
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
