"""CoalAD: download from ModelScope, unpack safely, verify, mark complete.

The dataset (reference Sec. 1) is the ModelScope dataset ``lyfjwp/CoalAD``,
two tar files that unpack to the MVTec-AD layout

    <root>/coal_ad/train/good/*.png
    <root>/coal_ad/test/{good,<kind>}/*.png
    <root>/coal_ad/ground_truth/<kind>/<name>_mask.png

The tars are kept in ``<root>/.downloads/`` (put them there by hand to skip the
download), unpacked into ``<root>/.coal_ad.partial``, counted, and only then
given a completion marker and renamed to ``<root>/coal_ad``. So a folder that is
half-unpacked, or was left by an interrupted run, is never taken for complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tarfile
import zlib
from pathlib import Path
from typing import Mapping

from usad.core.data.dataset import NORMAL_KIND, DatasetError, list_images

log = logging.getLogger(__name__)

MODELSCOPE_DATASET = "lyfjwp/CoalAD"
TRAIN_TAR = "coal_ad_train.tar"
TEST_TAR = "coal_ad_test.tar"
TAR_FILES = (TRAIN_TAR, TEST_TAR)
EXPECTED_COUNTS = {"train/good": 2490, "test/good": 811, "test_anomalous": 943}
MARKER = ".usad_complete"
DOWNLOADS = ".downloads"
PARTS = ("train", "test", "ground_truth")

# Retry knobs of recent modelscope releases (read from the environment by its
# ``modelscope_hub`` package when first imported; e.g. modelscope 1.40). Their
# defaults (5 API retries, 5 download retries with growing back-off) take about
# a minute to give up offline; these give up in seconds and still retry a
# transient error. Older modelscope releases ignore these variables and use
# their own built-in retries. Set the variables yourself to override.
MODELSCOPE_RETRY_ENV = {"MODELSCOPE_API_MAX_RETRIES": "2", "MODELSCOPE_DOWNLOAD_MAX_RETRIES": "3"}


class DatasetUnavailableError(DatasetError):
    """CoalAD could not be downloaded; the message says how to provide it by hand."""


# --------------------------------------------------------------------------- counting


def count_images(category_dir) -> dict:
    """Image counts of an MVTec-AD folder: train/good, test/good, test_anomalous (all other test kinds), masks.

    Hidden files/folders and non-image files are ignored; missing folders count 0.
    """
    category_dir = Path(category_dir)

    def n(folder: Path) -> int:
        return len(list_images(folder)) if folder.is_dir() else 0

    test = category_dir / "test"
    kinds = [d for d in test.iterdir() if d.is_dir() and not d.name.startswith(".")] if test.is_dir() else []
    return {
        "train/good": n(category_dir / "train" / NORMAL_KIND),
        "test/good": n(test / NORMAL_KIND),
        "test_anomalous": sum(n(d) for d in kinds if d.name != NORMAL_KIND),
        "masks": n(category_dir / "ground_truth"),
    }


def counts_match(counts: Mapping, expected: Mapping) -> bool:
    return all(counts.get(key) == value for key, value in expected.items())


def describe_counts(counts: Mapping) -> str:
    return ", ".join(f"{key}={value}" for key, value in counts.items())


def is_complete(category_dir, expected: Mapping = EXPECTED_COUNTS) -> bool:
    """True only if the completion marker exists and both it and the files on disk show the expected counts."""
    category_dir = Path(category_dir)
    try:
        recorded = json.loads((category_dir / MARKER).read_text())["counts"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    counts = count_images(category_dir)
    return recorded == counts and counts_match(counts, expected)


def write_marker(category_dir: Path, counts: Mapping) -> None:
    """The completion marker, written last and atomically (temp file + rename)."""
    tmp = category_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"dataset": MODELSCOPE_DATASET, "counts": dict(counts)}, indent=2))
    os.replace(tmp, category_dir / MARKER)


# --------------------------------------------------------------------------- download


def _fetch_from_modelscope(filename: str, dest_dir) -> Path:
    """Download one file of ``lyfjwp/CoalAD`` into ``dest_dir`` with modelscope (the only network access here)."""
    for name, value in MODELSCOPE_RETRY_ENV.items():
        os.environ.setdefault(name, value)
    from modelscope.hub.file_download import dataset_file_download

    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dataset_file_download(MODELSCOPE_DATASET, filename, local_dir=str(dest_dir))
    path = dest_dir / filename
    if not path.is_file():
        raise FileNotFoundError(f"modelscope finished but {path} does not exist")
    return path


def manual_instructions(root: Path, category: str) -> str:
    c = root / category
    return (
        f"To go on without the download, either\n"
        f"  - put {TRAIN_TAR} and {TEST_TAR} (from https://modelscope.cn/datasets/{MODELSCOPE_DATASET}) into "
        f"{root / DOWNLOADS}/ and run the same command again, or\n"
        f"  - create the dataset yourself in the MVTec-AD layout: {c}/train/good/*.png, {c}/test/good/*.png, "
        f"{c}/test/<kind>/*.png, {c}/ground_truth/<kind>/<name>_mask.png, and run with --set data.download=false."
    )


def one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or "no details"
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    folder = Path(os.path.abspath(folder))
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the given folders (deepest first) where they are empty: undo the mkdir of a failed download."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (something was written), already gone, or not ours to remove
            pass


def ensure_tars(root: Path, category: str) -> list[Path]:
    """The two tar files in ``<root>/.downloads/``, downloading those that are missing.

    A failed download leaves no folder behind that it created (``<root>/.downloads``, ``<root>``
    itself when it did not exist) unless something was written into it.
    """
    downloads = root / DOWNLOADS
    created = missing_folders(downloads)
    paths = []
    for filename in TAR_FILES:
        path = downloads / filename
        if path.is_file():
            log.info("CoalAD: using %s", path)
        else:
            log.info("CoalAD: downloading %s from ModelScope %s into %s", filename, MODELSCOPE_DATASET, downloads)
            try:
                path = _fetch_from_modelscope(filename, downloads)
            except Exception as e:  # offline, hub error, missing package, unwritable root: one clear message
                remove_if_empty(created)
                raise DatasetUnavailableError(
                    f"could not download {MODELSCOPE_DATASET} ({filename}) from ModelScope.\n"
                    f"Reason: {one_line(e)}\n{manual_instructions(root, category)}"
                ) from e
            except BaseException:  # Ctrl-C during the download
                remove_if_empty(created)
                raise
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- unpacking


class UnsafeMember(tarfile.TarError):
    """A tar member that would land outside the destination, or is not a plain file / folder / inner link."""


def checked_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    """What ``filter="data"`` refuses, for Pythons without extraction filters (3.10 before 3.10.12, 3.11 before 3.11.4).

    Every member must stay inside ``dest`` after joining (no absolute path, no ``..``), be a
    regular file, folder or a link whose target also stays inside; anything else (device,
    FIFO, link out) is refused. Permissions are reduced as ``filter="data"`` does.
    """
    dest = Path(os.path.realpath(dest))

    def inside(name: str) -> bool:
        target = Path(os.path.realpath(dest / name))
        return target == dest or dest in target.parents

    members = []
    for m in tar.getmembers():
        if os.path.isabs(m.name) or not inside(m.name):
            raise UnsafeMember(f"member {m.name!r} would be written outside the destination")
        if m.issym() or m.islnk():
            link = os.path.join(os.path.dirname(m.name), m.linkname) if m.issym() else m.linkname
            if os.path.isabs(m.linkname) or not inside(link):
                raise UnsafeMember(f"link {m.name!r} -> {m.linkname!r} points outside the destination")
        elif not (m.isfile() or m.isdir()):
            raise UnsafeMember(f"member {m.name!r} is a device or FIFO, not a file or folder")
        m.mode = (m.mode | 0o600 if m.isfile() else m.mode | 0o700) & 0o755
        m.uid = m.gid = 0
        m.uname = m.gname = ""
        members.append(m)
    return members


def unpack(tar_path: Path, dest: Path) -> None:
    """Safe extraction (``filter="data"``: no absolute paths, links out of ``dest`` or device files)."""
    try:
        with tarfile.open(tar_path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # a Python without extraction filters: the same checks by hand
                tar.extractall(dest, members=checked_members(tar, dest))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(
            f"cannot unpack {tar_path}: {one_line(e)}. The file is damaged or incomplete: delete it and run "
            f"again to download it again, or replace it with a complete copy."
        ) from None


def locate_part(unpacked: Path, name: str, tar_names: str) -> Path:
    """The shallowest folder called ``name`` (train/test need a ``good`` subfolder); tars may add a top folder."""
    def usable(p: Path) -> bool:
        rel = p.relative_to(unpacked).parts
        hidden = any(part.startswith(".") or part == "__MACOSX" for part in rel)
        return p.is_dir() and not hidden and (name == "ground_truth" or (p / NORMAL_KIND).is_dir())

    found = sorted((p for p in unpacked.rglob(name) if usable(p)), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise DatasetError(f"no '{name}' folder found in {tar_names}: they are not the CoalAD tar files "
                           f"(expected {'/'.join(PARTS)} folders inside); replace them and run again")
    if len(found) > 1 and len(found[1].parts) == len(found[0].parts):
        raise DatasetError(f"several '{name}' folders in {tar_names} ({found[0]}, {found[1]}): cannot tell which "
                           f"is CoalAD; unpack them by hand into the MVTec-AD layout")
    return found[0]


def assemble(tars: list[Path], partial: Path, category: str, expected: Mapping) -> Path:
    """Unpack into ``partial``, gather train/test/ground_truth into ``partial/<category>``, check counts, mark."""
    unpacked, staged = partial / "unpacked", partial / category
    unpacked.mkdir(parents=True)
    staged.mkdir()
    for tar in tars:
        log.info("CoalAD: unpacking %s", tar)
        unpack(tar, unpacked)
    make_dirs_writable(unpacked)  # the parts are moved out of their folders below
    tar_names = " and ".join(str(t) for t in tars)
    for name in PARTS:
        os.replace(locate_part(unpacked, name, tar_names), staged / name)
    counts = count_images(staged)
    if not counts_match(counts, expected):
        raise DatasetError(
            f"{tar_names} unpacked to the wrong number of images: expected {describe_counts(expected)}; "
            f"found {describe_counts(counts)}. The tar files are incomplete or not CoalAD: delete them and run "
            f"again to download them again."
        )
    write_marker(staged, counts)
    return staged


def make_dirs_writable(folder: Path) -> None:
    """Give the owner rwx on ``folder`` and every folder below it (a tar may carry read-only folder modes)."""
    stack = [str(folder)]
    while stack:
        path = stack.pop()
        try:
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
            stack += [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
        except OSError:
            pass


def remove_tree(folder: Path, strict: bool = True) -> None:
    """Delete ``folder`` and everything in it, read-only subfolders too.

    With ``strict``, a folder that cannot be removed is a DatasetError naming it.
    """
    if folder.is_symlink() or folder.is_file():
        folder.unlink(missing_ok=True)
    elif folder.is_dir():
        make_dirs_writable(folder)
        shutil.rmtree(folder, ignore_errors=True)
    if strict and os.path.lexists(folder):
        raise DatasetError(f"cannot remove {folder} (left by an interrupted unpacking): delete it by hand and run again")


def download_coalad(root, category: str = "coal_ad", expected: Mapping = EXPECTED_COUNTS) -> Path:
    """``<root>/<category>``, downloaded, unpacked and verified unless already complete.

    An existing folder is never deleted or overwritten: one that already holds the
    expected counts (e.g. laid out by hand) is marked complete; any other is an
    error that says what to do. Raises DatasetUnavailableError (no download
    possible: the message explains the manual alternatives) or DatasetError
    (damaged tar, wrong counts, a foreign folder in the way).
    """
    root = Path(root)
    target = root / category
    if is_complete(target, expected):
        return target
    if target.exists():
        counts = count_images(target)
        if counts_match(counts, expected):
            log.info("CoalAD: %s holds the expected images (%s): marking it complete", target, describe_counts(counts))
            write_marker(target, counts)
            return target
        raise DatasetError(
            f"{target} exists but is not a complete CoalAD ({describe_counts(counts)}; expected "
            f"{describe_counts(expected)}). It is left untouched: to use it as it is, run with "
            f"--set data.download=false; to download CoalAD, move it away and run again."
        )
    tars = ensure_tars(root, category)
    partial = root / f".{category}.partial"
    remove_tree(partial)  # left by an interrupted run: never used, always unpacked again
    try:
        staged = assemble(tars, partial, category, expected)
        os.replace(staged, target)  # atomic: the folder appears complete, with its marker, or not at all
    finally:
        remove_tree(partial, strict=False)
    log.info("CoalAD: ready at %s (%s)", target, describe_counts(count_images(target)))
    return target
