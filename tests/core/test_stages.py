"""usad.core.stages: a finished stage with unchanged inputs and outputs is not rerun; anything else reruns it."""

import json
import logging
import os

import pytest

from usad.core.stages import Stages, changes, digest, files_fingerprint, read_json


class Counter:
    """A stage body that writes one file and counts its calls."""

    def __init__(self, path):
        self.path, self.calls, self.olds = path, 0, []

    def __call__(self, old):
        self.calls += 1
        self.olds.append(old)
        self.path.write_text(f"run {self.calls}")
        return [self.path], {"extra": self.calls}


@pytest.fixture
def setup(tmp_path):
    return Stages(tmp_path / "stages", base=tmp_path), Counter(tmp_path / "out.txt"), tmp_path


def test_second_run_with_same_deps_is_skipped(setup):
    stages, body, _ = setup
    first = stages.run("a", {"config": {"x": 1}}, body)
    second = Stages(stages.folder).run("a", {"config": {"x": 1}}, body)
    assert body.calls == 1
    assert second == first and first["extra"] == 1 and first["key"] == digest({"config": {"x": 1}})
    assert json.loads(stages.stamp_path("a").read_text()) == first


def test_changed_dependency_reruns_and_names_the_value(setup, caplog):
    stages, body, _ = setup
    stages.run("a", {"config": {"x": 1, "y": {"z": 2}}, "images": "h1"}, body)
    with caplog.at_level(logging.INFO, logger="usad"):
        stamp = stages.run("a", {"config": {"x": 1, "y": {"z": 3}}, "images": "h1"}, body)
        stages.run("a", {"config": {"x": 1, "y": {"z": 3}}, "images": "h2"}, body)
    assert stamp["extra"] == 2 and body.calls == 3
    assert body.olds[1]["deps"]["config"]["y"]["z"] == 2  # the body sees the old stamp
    assert "running (y.z: 2 -> 3)" in caplog.text and "running (images changed)" in caplog.text


def test_changed_or_missing_output_reruns(setup):
    stages, body, tmp = setup
    stages.run("a", {}, body)
    (tmp / "out.txt").write_text("edited by hand, another size")
    stages.run("a", {}, body)
    assert body.calls == 2
    (tmp / "out.txt").unlink()
    stages.run("a", {}, body)
    assert body.calls == 3


@pytest.mark.parametrize("damage", ["not json {", "[1, 2]", "drop seconds", "seconds as text"])
def test_damaged_stamp_counts_as_none(setup, damage):
    stages, body, _ = setup
    stages.run("a", {}, body)
    path = stages.stamp_path("a")
    stamp = json.loads(path.read_text())
    if damage == "drop seconds":
        del stamp["seconds"]
        path.write_text(json.dumps(stamp))
    elif damage == "seconds as text":
        stamp["seconds"] = "1.0"
        path.write_text(json.dumps(stamp))
    else:
        path.write_text(damage)
    stages.run("a", {}, body)
    assert body.calls == 2
    assert read_json(path)["seconds"] >= 0


def test_skip_force_and_the_check_before_the_first_run(setup):
    stages, body, tmp = setup
    checks = []
    stages.before_first_run = lambda: checks.append(1)
    assert stages.run("a", {}, body)["extra"] == 1
    stages.run("b", {}, Counter(tmp / "b.txt"))
    assert checks == [1]  # once, before the first stage that computes
    fresh = Stages(stages.folder, before_first_run=lambda: checks.append(2), skip={"a"})
    assert fresh.run("a", {}, body)["extra"] == 1 and body.calls == 1  # skipped but finished: its stamp
    assert fresh.records["a"]["status"] == "up to date"
    assert fresh.run("a", {"config": {"new": 1}}, body) is None
    assert fresh.records["a"]["status"] == "skipped (--skip)" and body.calls == 1
    assert fresh.run("b", {}, Counter(tmp / "b.txt"), force=True, why_forced="--retrain")["stage"] == "b"
    assert checks == [1, 2] and fresh.records["b"]["status"] == "ran (--retrain)"


def test_a_failing_stage_leaves_its_old_stamp_and_reruns(setup):
    stages, body, _ = setup
    stages.run("a", {"v": 1}, body)

    def fail(old):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        stages.run("a", {"v": 2}, fail)
    assert read_json(stages.stamp_path("a"))["deps"] == {"v": 1}
    assert not [p for p in stages.folder.iterdir() if p.name.startswith(".")]  # no half-written stamp
    stages.run("a", {"v": 2}, body)
    assert body.calls == 2


def test_fingerprint_follows_size_mtime_and_name(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"12")
    b.write_bytes(b"34")
    first = files_fingerprint(tmp_path, [a, b])
    assert files_fingerprint(tmp_path, [b, a, a]) == first  # order and repeats do not matter
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert files_fingerprint(tmp_path, [a, b]) != first
    assert files_fingerprint(tmp_path, [a]) != files_fingerprint(tmp_path, [b])


def test_changes_lists_values_then_counts_the_rest():
    old = {"config": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, "models": "x"}
    new = {"config": {"a": 9, "b": 9, "c": 9, "d": 9, "e": 9}, "models": "y"}
    assert changes(old, new) == "models changed; a: 1 -> 9; b: 2 -> 9; c: 3 -> 9; +2 more"
    assert changes({"fit": {"k": "long" * 10}}, {"fit": {}}) == "k: 'longlonglon...onglong' -> '<none>'"
