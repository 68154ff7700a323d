"""The live recording path checks each vector when it is given
(`begin_trajectory`, `add_step`) so that `end_trajectory` has only its
quality left to check. It must accept and refuse exactly what the full
validation (`validate_batch` of the trajectory's JSONL item) does, and build
the same arrays."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from sona_store import ValidationError
from sona_store.config import SonaConfig
from sona_store.recording import TrajectoryBuilder
from sona_store.services.validation import TrajectoryBatch, check_vector, validate_batch

DIM = 8
CONFIG = SonaConfig(hidden_dim=DIM, embedding_dim=DIM)
F32_MAX = float(np.finfo(np.float32).max)


def _builder(query: Any, steps: list[tuple[Any, Any, Any, Any]]) -> TrajectoryBuilder:
    builder = TrajectoryBuilder(check_vector(query, "query_embedding", DIM), hidden_dim=DIM)
    for activations, attention, reward, layer in steps:
        builder.add_step(activations, attention, reward, layer)
    return builder


def _full(builder: TrajectoryBuilder, quality: Any) -> TrajectoryBatch:
    return validate_batch([builder.to_item(quality)], CONFIG)


def _live(builder: TrajectoryBuilder, quality: Any) -> TrajectoryBatch | None:
    """The batch the writer builds from the live path's record (None: the
    live path left it to the full validation)."""
    checked = builder.checked(quality, CONFIG)
    return None if checked is None else TrajectoryBatch.gather([checked], CONFIG)


def _same(a: TrajectoryBatch, b: TrajectoryBatch) -> None:
    for name in ("queries", "qualities", "step_owner", "step_index", "activations", "rewards"):
        left, right = getattr(a, name), getattr(b, name)
        assert left.dtype == right.dtype and left.shape == right.shape, name
        np.testing.assert_array_equal(left, right, err_msg=name)
    for name in ("routes", "contexts", "attention", "layer_names"):
        assert getattr(a, name) == getattr(b, name), name
    np.testing.assert_array_equal(a.signals, b.signals)


rng = np.random.default_rng(7)


def _vec(scale: float = 1.0) -> list[float]:
    return (rng.normal(size=DIM) * scale).tolist()


ORDINARY = [
    (_vec(), [(_vec(), [0.5, 0.25], 0.8, None)], 0.9),
    (_vec(), [], 0.1),  # no steps: the query is the signal
    (_vec(), [(_vec(), [], -1.0, "layer-3"), (_vec(), [1.0], 2, None)], 1),
    (np.asarray(_vec(), np.float32), [(np.asarray(_vec()), np.ones(3), 0.0, None)], 0.0),
    (list(range(DIM)), [(list(range(DIM)), [], 1, None)], 0.5),  # integers
    (_vec(1e30), [(_vec(1e30), [], 1e-3, None)], 0.5),  # large, but nothing overflows
]


@pytest.mark.parametrize("query, steps, quality", ORDINARY)
def test_ordinary_input_takes_the_live_path_and_builds_the_same_batch(
    query: Any, steps: Any, quality: Any
) -> None:
    builder = _builder(query, steps)
    live = _live(builder, quality)
    assert live is not None, "an ordinary trajectory must not need the full validation"
    _same(live, _full(builder, quality))


IRREGULAR_STEPS = [
    ([0.5] * (DIM - 1) + [True], [], 0.5, None),  # a bool is not a number
    ([0.1] * DIM, [0.5, True], 0.5, None),
    ([0.1] * DIM, [], True, None),
    ([0.1] * DIM, [], np.float64(0.5), None),  # numpy scalar: the full path decides
    ([Decimal("0.5")] * DIM, [], 0.5, None),
    ([0.1] * (DIM - 1) + [float("nan")], [], 0.5, None),
    ([0.1] * (DIM - 1) + [math.inf], [], 0.5, None),
    ([0.1] * (DIM - 1) + [F32_MAX * 2], [], 0.5, None),  # beyond float32
    ([0.1] * (DIM - 1), [], 0.5, None),  # wrong width
    ([0.1] * DIM, [], 0.5, 7),  # a layer name that is not text
    ([0.1] * DIM, [], 0.5, "a\x00b"),
    ([0.1] * DIM, [], float("nan"), None),
    ([0.1] * DIM, [], 2**60, None),  # an int a float64 cannot hold exactly
    ([0.1] * DIM, ["x"], 0.5, None),
    ([0.1] * (DIM - 1) + [1j], [], 0.5, None),
    ([0.1] * DIM, [], 1e300, None),  # overflows float32: refused by name
    ([F32_MAX / 2] * DIM, [], 1e10, None),  # signal and embedding overflow
]


def _outcome(run: Any) -> tuple[str, Any]:
    try:
        return "ok", run()
    except ValidationError as exc:
        return "error", (exc.message, exc.field, exc.index)


@pytest.mark.parametrize("step", IRREGULAR_STEPS, ids=range(len(IRREGULAR_STEPS)))
def test_irregular_steps_end_as_the_full_validation_says(step: Any) -> None:
    """Whatever the live path does not take is decided by the full
    validation, with the same outcome and the same error."""
    builder = _builder(_vec(), [step])

    def live_or_full() -> TrajectoryBatch:
        batch = _live(builder, 0.5)
        return batch if batch is not None else _full(builder, 0.5)

    kind, live = _outcome(live_or_full)
    full_kind, full = _outcome(lambda: _full(builder, 0.5))
    assert kind == full_kind
    if kind == "error":
        assert live == full
    else:
        _same(live, full)


@pytest.mark.parametrize(
    "quality", [1.5, -0.1, float("nan"), None, "0.5", True, np.float64(0.5), math.inf]
)
def test_qualities_outside_the_plain_range_are_judged_by_the_full_validation(
    quality: Any,
) -> None:
    builder = _builder(_vec(), [(_vec(), [], 0.5, None)])
    kind, _ = _outcome(lambda: _full(builder, quality))
    live = _live(builder, quality)
    if kind == "error":
        assert live is None  # never accepts what the full validation refuses
    elif live is not None:  # a numpy scalar is left to the full validation
        _same(live, _full(builder, quality))


def test_a_query_without_steps_over_the_signal_norm_is_refused_on_the_live_path() -> None:
    builder = _builder([1e6] * DIM, [])
    with pytest.raises(ValidationError) as live:
        _live(builder, 0.5)
    with pytest.raises(ValidationError) as full:
        _full(builder, 0.5)
    assert (live.value.message, live.value.field) == (full.value.message, full.value.field)
    assert live.value.field == "query_embedding"


def test_a_builder_changed_by_hand_is_validated_whole() -> None:
    """Steps appended to `steps`, or a query replaced, are not what was
    checked: the full validation takes them."""
    builder = _builder(_vec(), [(_vec(), [], 0.5, None)])
    builder.steps.append({"activations": [math.nan] * DIM, "reward": 0.5})
    assert _live(builder, 0.5) is None
    with pytest.raises(ValidationError, match="NaN"):
        _full(builder, 0.5)

    replaced = _builder(_vec(), [])
    replaced.query_embedding = [0.0] * (DIM - 1)
    assert _live(replaced, 0.5) is None


def test_check_vector_refuses_what_it_refused_before() -> None:
    for bad, words in (
        ([0.1] * (DIM - 1), "expected 8"),
        ([0.1] * (DIM - 1) + [math.nan], "NaN"),
        ([0.1] * (DIM - 1) + [False], "bool"),
        ("abcdefgh", "list of numbers"),
        ([0.1] * (DIM - 1) + [None], "number"),
    ):
        with pytest.raises(ValidationError, match=words):
            check_vector(bad, "query_embedding", DIM)
    np.testing.assert_array_equal(
        check_vector(list(range(DIM)), "q", DIM), np.arange(DIM, dtype=np.float32)
    )


def test_a_group_of_live_trajectories_and_batches_gathers_in_order() -> None:
    """The writer's group: live trajectories (with and without steps) and
    whole batches, in arrival order, as one batch equal to validating all
    their items at once."""
    builders = [_builder(q, steps) for q, steps, _ in ORDINARY]
    qualities = [quality for _, _, quality in ORDINARY]
    items = [b.to_item(q) for b, q in zip(builders, qualities, strict=True)]
    lives = [b.checked(q, CONFIG) for b, q in zip(builders, qualities, strict=True)]
    assert all(live is not None for live in lives)
    middle = validate_batch(items[2:4], CONFIG)
    group = [lives[0], lives[1], middle, lives[4], lives[5]]
    expected = validate_batch(items[:2] + items[2:4] + items[4:], CONFIG)
    gathered = TrajectoryBatch.gather(group, CONFIG)  # type: ignore[arg-type]
    _same(gathered, expected)
    assert len(gathered) == 6 and gathered.latencies[2:4] == middle.latencies
