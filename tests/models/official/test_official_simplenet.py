"""SimpleNet from its official code through tools/official_harness.py: their run.sh pipeline on a tiny ResNet-18 (tests/golden weights), 1 meta epoch.

Fit on the generated training scenes, predict exactly our test files: finite scores and maps of the right
shapes, our image AUROC on them equal to the one their own code computed on the same run, and the same values
for the same files when they come in another order.
"""

from official_fixtures import coal_data, official  # noqa: F401 (pytest fixtures)


def test_official_simplenet_scores_exactly_our_files(official, tmp_path):
    method = official.fitted("simplenet", tmp_path)
    files = official.files()
    scores, maps = method.predict(files)
    official.check_outputs(method, files, scores, maps)
    official.check_order(method, files, scores, maps)


def test_official_simplenet_is_deterministic(official, tmp_path):
    """Two fits with the same seed: the same checkpoint bytes and the same predictions (CPU)."""
    import numpy as np

    files = official.files()[:2]
    runs = []
    for i in range(2):
        method = official.fitted("simplenet", tmp_path / str(i))
        runs.append((method.fit_record["checkpoint_sha256"], *method.predict(files)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
