"""Schedule: which optimisation steps get a snapshot."""

from __future__ import annotations

import numpy as np
import pytest

from freqlens.recording import Schedule

STEP_CASES = [
    # (schedule, total_steps, expected steps)
    (Schedule.every(4), 12, [0, 4, 8, 12]),
    (Schedule.every(4), 10, [0, 4, 8, 10]),  # the last step is always recorded
    (Schedule.every(1), 3, [0, 1, 2, 3]),
    (Schedule.every(25), 100, [0, 25, 50, 75, 100]),
    (Schedule.every(50), 7, [0, 7]),
    (Schedule.log(8), 100, [0, 1, 2, 4, 7, 14, 27, 52, 100]),
    (Schedule.log(5), 3, [0, 1, 2, 3]),  # more snapshots than steps: every step
    (Schedule.log(60), 60, list(range(61))),
    (Schedule.at([5, 0, 5, 200]), 100, [0, 5]),  # sorted, unique, capped at the run
    (Schedule.at([10, 3]), None, [0, 3, 10]),  # step 0 added
    (Schedule.at([0]), 5, [0]),
    (Schedule.parse("every:5"), 20, [0, 5, 10, 15, 20]),
    (Schedule.parse("log:8"), 100, [0, 1, 2, 4, 7, 14, 27, 52, 100]),
    (Schedule.parse("steps:0,10"), None, [0, 10]),
    (Schedule.parse("steps:7"), 100, [0, 7]),
]


@pytest.mark.parametrize("schedule, total, expected", STEP_CASES, ids=lambda c: str(c))
def test_steps(schedule, total, expected):
    assert schedule.steps(total) == expected


@pytest.mark.parametrize(
    "text, built",
    [
        ("every:5", Schedule.every(5)),
        ("log:60", Schedule.log(60)),
        ("steps:0,10,100", Schedule.at([0, 10, 100])),
        ("steps:100,10", Schedule.at([10, 100])),
    ],
)
def test_parse_matches_builders(text, built):
    assert Schedule.parse(text) == built
    assert Schedule.parse(str(built)) == built


def test_default_log_schedule_has_60_snapshots():
    assert Schedule.log() == Schedule.log(50)
    assert len(Schedule.log().steps(10_000)) == 51


DUE_CASES = [
    # (schedule, step, total_steps, due)
    (Schedule.every(5), 0, None, True),
    (Schedule.every(5), 10, None, True),
    (Schedule.every(5), 11, None, False),
    (Schedule.every(4), 10, 10, True),  # the run's last step
    (Schedule.every(4), 10, None, False),  # open-ended: no last step known
    (Schedule.log(8), 52, 100, True),
    (Schedule.log(8), 50, 100, False),
    (Schedule.at([3, 9]), 0, None, True),
    (Schedule.at([3, 9]), 9, None, True),
    (Schedule.at([3, 9]), 9, 5, False),  # beyond the run
    (Schedule.at([3, 9]), 4, None, False),
]


@pytest.mark.parametrize("schedule, step, total, due", DUE_CASES, ids=lambda c: str(c))
def test_due(schedule, step, total, due):
    assert schedule.due(step, total_steps=total) is due


@pytest.mark.parametrize("total", [10, 100, 375, 1000, 12_345, 100_000])
@pytest.mark.parametrize("num", [2, 3, 8, 20, 60])
def test_log_steps_are_log_spaced(total, num):
    steps = Schedule.log(num).steps(total)
    gaps = np.diff(steps)
    assert steps[0] == 0 and steps[-1] == total
    assert len(set(steps)) == len(steps) and steps == sorted(steps)
    assert len(steps) >= min(num, total) + 1
    if total >= 10 * num:
        assert len(steps) == num + 1
    # dense early, sparse late: a gap never falls below an earlier one by more
    # than the rounding to whole steps, and the late gaps are wider on average
    assert np.all(gaps >= 1)
    assert np.all(gaps >= np.maximum.accumulate(gaps) - 1)
    half = len(gaps) // 2
    if half:
        assert gaps[:half].mean() <= gaps[half:].mean()


def test_log_of_one_snapshot_still_ends_at_total():
    # _log_steps: np.geomspace(1, total, 1) == [1], so log:1 gives [0, 1].
    assert Schedule.log(1).steps(100)[-1] == 100


ERROR_CASES = [
    # (callable, exception message pattern)
    (lambda: Schedule("weekly", 3), r"`kind`.*'weekly'"),
    (lambda: Schedule.every(0), r"`every`.*>= 1.*got 0"),
    (lambda: Schedule.every(-2), r"`every`.*got -2"),
    (lambda: Schedule.every(2.5), r"`every`.*got 2\.5"),
    (lambda: Schedule.every(True), r"`every`"),
    (lambda: Schedule.log(0), r"`num`.*got 0"),
    (lambda: Schedule.at([3, -1]), r"`steps`.*>= 0"),
    (lambda: Schedule.at([]), r"`steps`.*non-empty"),
    (lambda: Schedule.parse("every"), r"`schedule`.*'every'"),
    (lambda: Schedule.parse("weekly:3"), r"`schedule`.*'weekly:3'.*`kind`"),
    (lambda: Schedule.parse("log:x"), r"`schedule`.*'log:x'"),
    (lambda: Schedule.parse("log:0"), r"`schedule`.*`num`"),
    (lambda: Schedule.parse("steps:1,a"), r"`schedule`.*'steps:1,a'"),
    (lambda: Schedule.parse("steps:-5"), r"`schedule`.*`steps`"),
    (lambda: Schedule.parse(""), r"`schedule`"),
    (lambda: Schedule.log(10).steps(), r"`total_steps`.*'log'"),
    (lambda: Schedule.log(10).due(3), r"`total_steps`"),
    (lambda: Schedule.every(3).steps(0), r"`total_steps`.*>= 1"),
    (lambda: Schedule.log(3).steps(-4), r"`total_steps`"),
]


@pytest.mark.parametrize("call, match", ERROR_CASES, ids=[m for _, m in ERROR_CASES])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("total", [10, 126, 5000])
@pytest.mark.parametrize("snapshots", [3, 20, 33])
def test_log_fitting_is_the_densest_log_schedule_within_the_count(total, snapshots):
    schedule = Schedule.log_fitting(total, snapshots)
    assert schedule.kind == "log"
    assert len(schedule.steps(total)) <= snapshots
    denser = Schedule.log(schedule.value + 1)
    assert schedule.value >= total or len(denser.steps(total)) > snapshots
