"""CKAAD from its official code through tools/official_harness.py: their main.py on a tiny ResNet-18 (tests/golden weights), 1 epoch, then their evaluation().

Fit on the generated training scenes, predict exactly our test files: finite scores and maps of the right
shapes, our image AUROC on them equal to the one their own code computed on the same run, and the same values
for the same files when they come in another order.
"""

from official_fixtures import coal_data, official  # noqa: F401 (pytest fixtures)


def test_official_ckaad_scores_exactly_our_files(official, tmp_path):
    method = official.fitted("ckaad", tmp_path)
    files = official.files()
    scores, maps = method.predict(files)
    official.check_outputs(method, files, scores, maps)
    official.check_order(method, files, scores, maps)
