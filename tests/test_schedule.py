import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infoplane.errors import ConfigError
from infoplane.train.schedule import capture_steps, epochs_of, iterations_per_epoch


def test_epoch_schedule_is_step_zero_and_every_epoch_end():
    steps = capture_steps({"kind": "epoch"}, iterations_per_epoch=600, epochs=10)
    np.testing.assert_array_equal(steps, np.arange(11) * 600)
    assert steps.dtype == np.int64


def test_default_kind_is_epoch():
    np.testing.assert_array_equal(capture_steps({}, iterations_per_epoch=3, epochs=2), [0, 3, 6])


def test_every_includes_last_step_when_not_a_multiple():
    steps = capture_steps({"kind": "every", "every": 4}, iterations_per_epoch=5, epochs=2)
    np.testing.assert_array_equal(steps, [0, 4, 8, 10])


def test_log_spacing_is_unique_sorted_and_spans_training():
    steps = capture_steps({"kind": "log", "points": 20}, iterations_per_epoch=600, epochs=10)
    assert steps[0] == 0 and steps[1] == 1 and steps[-1] == 6000
    ratios = steps[2:] / steps[1:-1]
    # log spacing: successive ratios are roughly constant once rounding no longer dominates
    assert np.all(ratios[-5:] == pytest.approx(ratios[-1], rel=0.05))
    assert len(steps) <= 21


def test_list_adds_step_zero_and_sorts():
    steps = capture_steps({"kind": "list", "steps": [7, 3, 7]}, iterations_per_epoch=5, epochs=2)
    np.testing.assert_array_equal(steps, [0, 3, 7])


def test_list_rejects_steps_after_training():
    with pytest.raises(ConfigError, match=r"capture\.schedule\.steps.*11.*0\.\.10"):
        capture_steps({"kind": "list", "steps": [3, 11]}, iterations_per_epoch=5, epochs=2)


def test_dense_first_epoch_then_every_epoch():
    schedule = {"kind": "epoch", "first_epoch_every": 2}
    steps = capture_steps(schedule, iterations_per_epoch=7, epochs=3)
    np.testing.assert_array_equal(steps, [0, 2, 4, 6, 7, 14, 21])


@pytest.mark.parametrize(
    ("schedule", "key"),
    [
        ({"kind": "every"}, "every"),
        ({"kind": "every", "every": 0}, "every"),
        ({"kind": "log", "points": 1}, "points"),
        ({"kind": "hourly"}, "kind"),
        ({"kind": "epoch", "first_epoch_every": 0}, "first_epoch_every"),
    ],
)
def test_bad_schedules_name_the_key(schedule, key):
    with pytest.raises(ConfigError, match=rf"capture\.schedule\.{key}"):
        capture_steps(schedule, iterations_per_epoch=5, epochs=2)


@given(
    kind=st.sampled_from(["epoch", "every", "log"]),
    k=st.integers(1, 50),
    ipe=st.integers(1, 40),
    epochs=st.integers(1, 12),
    dense=st.one_of(st.none(), st.integers(1, 10)),
)
def test_schedule_invariants(kind, k, ipe, epochs, dense):
    schedule = {"kind": kind, "every": k, "points": k + 1, "first_epoch_every": dense}
    steps = capture_steps(schedule, iterations_per_epoch=ipe, epochs=epochs)
    assert steps[0] == 0
    assert steps[-1] == ipe * epochs
    assert np.all(np.diff(steps) > 0)
    if dense is not None:
        assert set(range(0, ipe + 1, dense)) <= set(steps.tolist())


def test_epochs_of_and_iterations_per_epoch():
    ipe = iterations_per_epoch(1437, 100)
    assert ipe == 15  # the last, partial batch counts
    np.testing.assert_array_equal(epochs_of([0, 15, 30, 5], ipe), [0.0, 1.0, 2.0, 1 / 3])
    assert epochs_of(np.array([0]), 2).dtype == np.float64
    with pytest.raises(ConfigError):
        iterations_per_epoch(0, 100)
