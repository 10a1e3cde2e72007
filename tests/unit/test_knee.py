"""tune's knee, on synthetic figures: the smallest worker count that no larger count beats by KNEE_GAIN."""

from __future__ import annotations

import pytest

from fastpass.bench import tune


@pytest.mark.parametrize(
    ("counts", "values", "expected"),
    [
        pytest.param([1, 2, 3, 4], [100, 190, 200, 205], 2, id="levels-off"),
        pytest.param([1, 2, 3, 4], [100, 190, 150, 180], 2, id="falls-after"),
        pytest.param([1, 2, 3, 4, 5], [100, 180, 150, 250, 260], 4, id="a-dip-is-not-the-knee"),
        pytest.param([1, 2, 3], [100, 105, 150], None, id="still-growing-at-the-last"),
        pytest.param([1, 2, 3], [100, 100, 100], 1, id="flat"),
        pytest.param([1, 2, 3], [100, 80, 60], 1, id="only-falls"),
        pytest.param([1, 2], [100, 109.9], 1, id="just-under-the-gain"),
        pytest.param([1, 2], [100, 110.1], None, id="just-over-the-gain"),
        pytest.param([1, 2, 4, 8, 16], [10, 20, 40, 42, 41], 4, id="counts-not-indices"),
        pytest.param([3], [100], None, id="one-count"),
    ],
)
def test_knee(counts: list[int], values: list[float], expected: int | None) -> None:
    assert tune.KNEE_GAIN == 0.10  # the figures above are chosen around it
    assert tune.knee(counts, values) == expected


def test_knees_per_path() -> None:
    """Values in (path, count) order: each path's counts on their own."""
    values = [100, 200, 210, 100, 150, 200]  # path A: 1, 2, 3 workers; then path B
    assert tune.knees([1, 2, 3], values, 2) == [2, None]
    assert tune.per_path(values, 2) == [[100, 200, 210], [100, 150, 200]]


def test_knee_text() -> None:
    assert tune.knee_text(4, [1, 2, 4, 8]) == "4"
    assert tune.knee_text(None, [1, 2, 4, 8]) == ">8"
