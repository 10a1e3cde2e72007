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


def _workload(rounds: list[list[float]]) -> tune.TuneWorkload:
    medians = [sorted(r)[len(r) // 2] for r in rounds]
    return tune.TuneWorkload("w", "", "ops/s", 1, medians, rounds, 1.0, True, [None])


@pytest.mark.parametrize(
    ("rounds", "verdicts", "recommended"),
    [
        # 1 worker clearly slower (its best round under 2's worst): 2 is the fewest not worse
        pytest.param([[50, 52, 51], [100, 98, 102], [101, 99, 100]], ["worse", "good", "good"], 2, id="decided"),
        # 1 worker 20% slower in the median but its rounds overlap 2's: undecided, so still a candidate
        pytest.param([[80, 60, 105], [100, 90, 110], [95, 100, 97]], ["undecided", "good", "good"], 1, id="overlap"),
        # one round each: the old rule, within TOLERANCE or worse
        pytest.param([[96], [100], [90]], ["good", "good", "worse"], 1, id="one-round"),
    ],
)
def test_verdicts_and_recommendation(rounds: list[list[float]], verdicts: list[str], recommended: int) -> None:
    assert tune.TOLERANCE == 0.05  # the figures above are chosen around it
    w = _workload(rounds)
    per_config, per_round = tune.scores([w]), tune.round_scores([w])
    assert tune.verdicts(per_config, per_round) == verdicts
    configs = [("", n) for n in (1, 2, 3)]
    assert tune.recommend(configs, per_config, verdicts) == ("", recommended)


def test_round_scores_and_spread() -> None:
    """Each round's value over the workload's best median, geometric over workloads; the spread is
    the median over counts of (highest - lowest round score) / score."""
    a = _workload([[50, 60, 55], [100, 110, 90]])  # best median 100
    b = _workload([[10, 10, 10], [20, 20, 20]])  # best median 20
    per_round = tune.round_scores([a, b])
    assert per_round[1] == pytest.approx([1.0, (1.1 * 1.0) ** 0.5, (0.9 * 1.0) ** 0.5])
    assert per_round[0] == pytest.approx([(0.5 * 0.5) ** 0.5, (0.6 * 0.5) ** 0.5, (0.55 * 0.5) ** 0.5])
    per_config = tune.scores([a, b])
    spreads = [(max(r) - min(r)) / s for s, r in zip(per_config, per_round)]
    assert tune.spread(per_config, per_round) == pytest.approx(sum(spreads) / 2)
