"""Trimmed z-score fusion (CSAD Sec. 3.5) against a hand computation."""

import numpy as np
import pytest

from usad.models.csad import fusion as fz


def test_trimmed_stats_by_hand():
    val = np.array([10.0, 1.0, 2.0, 3.0, 4.0, -7.0])
    # numpy linear quantiles: 20% -> 1.0, 80% -> 4.0; strictly inside: 2, 3
    assert fz.trimmed_stats(val, 0.2, 0.8) == pytest.approx((2.5, 0.5))
    assert fz.zscore(np.array([3.5]), (2.5, 0.5))[0] == pytest.approx(2.0)


def test_zero_std_leaves_scores_unscaled():
    assert fz.zscore(np.array([5.0]), (2.0, 0.0))[0] == 3.0


def test_fuse_sums_columns():
    cols = np.array([[1.0, 10.0], [3.0, 30.0]])
    stats = np.array([[1.0, 2.0], [10.0, 10.0]])
    np.testing.assert_allclose(fz.fuse(cols, stats), [0.0, 1.0 + 2.0])


def test_too_few_scores_fall_back_to_all(caplog):
    assert fz.trimmed_stats(np.array([1.0, 3.0]), 0.2, 0.8) == pytest.approx((2.0, 1.0))
    assert "strictly inside" in caplog.text


@pytest.mark.parametrize("bad", [np.array([]), np.array([1.0, np.nan])])
def test_bad_validation_scores(bad):
    with pytest.raises(fz.FusionError, match="validation"):
        fz.trimmed_stats(bad, 0.2, 0.8)
