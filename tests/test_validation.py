"""Bad input is refused before anything is written.

Every bad item comes after good ones in its batch: the error must name the
trajectory (or, for `ingest`, the line) and the field, be a ValueError, and leave
the trajectories and their steps exactly as they were.

The case matrix shares one store per backend (creating a PostgreSQL database per
case would cost more than the cases); the tests after it use `db_url`.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from sona_store import SonaConfig, SonaStore
from sona_store.errors import ValidationError
from sona_store.services.validation import validate_batch

from .conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
from .helpers import make_trajectories

DIM = 8
CONFIG = SonaConfig(hidden_dim=DIM, pattern_clusters=4)


def row_counts(store: SonaStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("trajectories", "trajectory_steps")
        }


def good_items(n: int = 2, seed: int = 11) -> list[dict[str, Any]]:
    """Good trajectories of two steps each, with every optional field set."""
    items = make_trajectories(n, DIM, seed=seed, steps=2)
    for i, item in enumerate(items):
        item.update(model_route=f"route-{i}", context_ids=["doc-1"], latency_us=1200)
        for j, step in enumerate(item["steps"]):
            step.update(layer_name="layer", step_idx=j)
    return items


def mutated(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    item = copy.deepcopy(good_items(1, seed=99)[0])
    change(item)
    return item


def set_(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda item: item.__setitem__(key, value)


def set_step(key: str, value: Any, step: int = 1) -> Callable[[dict[str, Any]], None]:
    return lambda item: item["steps"][step].__setitem__(key, value)


def set_entry(key: str, index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda item: item[key].__setitem__(index, value)


def set_step_entry(key: str, index: int, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda item: item["steps"][1][key].__setitem__(index, value)


def drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda item: item.pop(key)


def drop_step(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda item: item["steps"][1].pop(key)


NAN, INF = float("nan"), float("inf")
QUERY, QUALITY = "query_embedding", "quality"
ACTS, ATTN, REWARD = "steps[1].activations", "steps[1].attention_weights", "steps[1].reward"

# (id, change to a good trajectory, text the error must contain to name the field)
BAD_CASES: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("query-too-short", lambda t: t[QUERY].pop(), QUERY),
    ("query-too-long", lambda t: t[QUERY].append(0.5), QUERY),
    ("query-empty", set_(QUERY, []), QUERY),
    ("activations-too-short", lambda t: t["steps"][1]["activations"].pop(), ACTS),
    ("activations-too-long", lambda t: t["steps"][1]["activations"].append(0.1), ACTS),
    ("activations-empty", set_step("activations", []), ACTS),
    ("query-nan", set_entry(QUERY, 3, NAN), QUERY),
    ("query-inf", set_entry(QUERY, 0, INF), QUERY),
    ("query-minus-inf", set_entry(QUERY, 7, -INF), QUERY),
    ("query-beyond-float32", set_entry(QUERY, 2, 1e39), QUERY),
    ("activations-nan", set_step_entry("activations", 5, NAN), ACTS),
    ("activations-inf", set_step_entry("activations", 0, INF), ACTS),
    ("attention-nan", set_step_entry("attention_weights", 1, NAN), ATTN),
    ("attention-inf", set_step_entry("attention_weights", 0, -INF), ATTN),
    ("reward-nan", set_step("reward", NAN), REWARD),
    ("reward-inf", set_step("reward", INF), REWARD),
    ("reward-int-beyond-float", set_step("reward", 10**400), REWARD),
    ("quality-nan", set_(QUALITY, NAN), QUALITY),
    ("quality-inf", set_(QUALITY, INF), QUALITY),
    ("quality-above-one", set_(QUALITY, 1.0001), QUALITY),
    ("quality-below-zero", set_(QUALITY, -0.0001), QUALITY),
    ("quality-missing", drop(QUALITY), QUALITY),
    ("query-missing", drop(QUERY), QUERY),
    ("activations-missing", drop_step("activations"), ACTS),
    ("reward-missing", drop_step("reward"), REWARD),
    ("quality-null", set_(QUALITY, None), QUALITY),
    ("query-null", set_(QUERY, None), QUERY),
    ("unknown-field", set_("qualty", 0.5), "qualty"),
    ("unknown-step-field", set_step("rewrd", 0.5), "rewrd"),
    ("query-string-entry", set_entry(QUERY, 1, "0.5"), QUERY),
    ("query-nested-list", set_entry(QUERY, 1, [0.5]), QUERY),
    ("query-null-entry", set_entry(QUERY, 1, None), QUERY),
    ("query-bool-entry", set_entry(QUERY, 1, True), QUERY),
    ("query-is-string", set_(QUERY, "0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8"), QUERY),
    ("query-is-number", set_(QUERY, 0.5), QUERY),
    ("query-is-object", set_(QUERY, {"0": 0.5}), QUERY),
    ("query-is-matrix", set_(QUERY, [[0.5] * DIM]), QUERY),
    ("activations-string-entry", set_step_entry("activations", 0, "x"), ACTS),
    ("activations-bool-entry", set_step_entry("activations", 0, False), ACTS),
    ("activations-all-bool", set_step("activations", [True] * DIM), ACTS),
    ("attention-string-entry", set_step_entry("attention_weights", 0, "x"), ATTN),
    ("attention-is-string", set_step("attention_weights", "0.5"), ATTN),
    ("quality-string", set_(QUALITY, "0.9"), QUALITY),
    ("quality-bool", set_(QUALITY, True), QUALITY),
    ("quality-list", set_(QUALITY, [0.9]), QUALITY),
    ("reward-string", set_step("reward", "1.0"), REWARD),
    ("reward-bool", set_step("reward", False), REWARD),
    ("reward-null", set_step("reward", None), REWARD),
    ("steps-not-a-list", set_("steps", {"activations": [0.0] * DIM, "reward": 1.0}), "steps"),
    ("steps-is-string", set_("steps", ""), "steps"),
    ("step-not-an-object", set_("steps", [[0.0] * DIM]), "steps[0]"),
    ("latency-negative", set_("latency_us", -1), "latency_us"),
    ("latency-fraction", set_("latency_us", 1.5), "latency_us"),
    ("latency-beyond-bigint", set_("latency_us", 2**63), "latency_us"),
    ("latency-string", set_("latency_us", "12"), "latency_us"),
    ("model-route-number", set_("model_route", 7), "model_route"),
    ("model-route-too-long", set_("model_route", "r" * 201), "model_route"),
    ("context-ids-string", set_("context_ids", "doc-1"), "context_ids"),
    ("context-ids-number-entry", set_("context_ids", [1]), "context_ids"),
    ("context-ids-null-entry", set_("context_ids", [None]), "context_ids"),
    ("layer-name-number", set_step("layer_name", 3), "steps[1].layer_name"),
    ("step-idx-string", set_step("step_idx", "1"), "steps[1].step_idx"),
]
CASE_PARAMS = [case[1:] for case in BAD_CASES]
CASE_IDS = [case[0] for case in BAD_CASES]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def case_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SonaStore]:
    """One store per backend for the whole case matrix, holding some trajectories
    already (so "unchanged" is not just "still empty")."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('validation') / 'store.db'}"
    else:
        if PG_ADMIN_URL is None:
            pytest.skip("no PostgreSQL configured (set SONA_STORE_TEST_PG)")
        url = create_pg_database()
    store = SonaStore(url, CONFIG)
    store.record_trajectories(good_items(3, seed=1))
    try:
        yield store
    finally:
        store.close()
        if request.param == "postgresql":
            drop_pg_database(url)


def test_cases_are_valid_apart_from_the_change(case_store):
    """The unchanged trajectory used by every case is accepted, or the cases
    would prove nothing."""
    before = row_counts(case_store)
    ids = case_store.record_trajectories([mutated(lambda item: None)])
    assert len(ids) == 1
    after = row_counts(case_store)
    assert after == {
        "trajectories": before["trajectories"] + 1,
        "trajectory_steps": before["trajectory_steps"] + 2,
    }


@pytest.mark.parametrize(("change", "field"), CASE_PARAMS, ids=CASE_IDS)
def test_record_trajectories_rejects_bad_item_and_writes_nothing(case_store, change, field):
    batch = [*good_items(2), mutated(change), *good_items(1, seed=12)]
    before = row_counts(case_store)
    with pytest.raises(ValueError) as info:
        case_store.record_trajectories(batch)
    assert isinstance(info.value, ValidationError)
    message = str(info.value)
    assert "trajectory 2" in message
    assert field in message
    assert "\n" not in message
    assert row_counts(case_store) == before


@pytest.mark.parametrize(("change", "field"), CASE_PARAMS, ids=CASE_IDS)
def test_ingest_rejects_bad_line_and_writes_nothing(case_store, change, field):
    # Line 1 good, line 2 blank, lines 3-4 good, line 5 bad, line 6 good.
    good = [json.dumps(item) for item in good_items(3)]
    lines = [good[0], "", good[1], good[2], json.dumps(mutated(change)), good[0]]
    before = row_counts(case_store)
    with pytest.raises(ValueError) as info:
        # chunk_size=2: the good lines before the bad one are inserted (in the
        # same transaction) before the bad one is read.
        case_store.ingest(lines, chunk_size=2)
    assert isinstance(info.value, ValidationError)
    assert info.value.line == 5
    message = str(info.value)
    assert "line 5" in message
    assert field in message
    assert row_counts(case_store) == before


@pytest.mark.parametrize(
    "bad_line",
    [
        '{"query_embedding": [0.1, 0.2], "quality": 0.5',  # truncated
        "{'query_embedding': [], 'quality': 0.5}",  # Python, not JSON
        "not json at all",
        '{"quality": 0.5} trailing',
    ],
    ids=["truncated", "single-quotes", "text", "trailing-garbage"],
)
def test_ingest_rejects_malformed_json_and_writes_nothing(case_store, bad_line):
    good = [json.dumps(item) for item in good_items(3)]
    before = row_counts(case_store)
    with pytest.raises(ValueError) as info:
        case_store.ingest([*good, bad_line, good[0]], chunk_size=2)
    assert "line 4" in str(info.value)
    assert "malformed JSON" in str(info.value)
    assert row_counts(case_store) == before


@pytest.mark.parametrize(
    "line", ["[1, 2, 3]", '"a string"', "42", "null"], ids=["array", "string", "number", "null"]
)
def test_ingest_rejects_a_line_that_is_not_an_object(case_store, line):
    good = [json.dumps(item) for item in good_items(2)]
    before = row_counts(case_store)
    with pytest.raises(ValueError, match="line 3"):
        case_store.ingest([*good, line])
    assert row_counts(case_store) == before


# -- on a store of its own per test (db_url) ------------------------------------


def test_bad_item_deep_in_a_large_batch_writes_nothing(store):
    store.record_trajectories(good_items(2))
    before = row_counts(store)
    batch = good_items(500, seed=3)
    batch[437]["steps"][0]["activations"][2] = float("nan")
    with pytest.raises(ValueError, match=r"trajectory 437, field 'steps\[0\]\.activations'"):
        store.record_trajectories(batch)
    assert row_counts(store) == before
    # The same batch, fixed, goes in whole.
    batch[437]["steps"][0]["activations"][2] = 0.0
    assert len(store.record_trajectories(batch)) == 500
    assert row_counts(store)["trajectories"] == before["trajectories"] + 500


def test_ingest_bad_line_in_a_later_chunk_rolls_back_earlier_chunks(store, tmp_path: Path):
    items = good_items(25, seed=4)
    lines = [json.dumps(item) for item in items]
    lines[21] = lines[21].replace('"quality": ', '"quality": 7.5 + ', 1)  # malformed
    before = row_counts(store)
    progress: list[int] = []
    with pytest.raises(ValueError, match="line 22"):
        store.ingest(lines, chunk_size=10, progress=progress.append)
    assert progress == [10, 20]  # two chunks had been written inside the transaction
    assert row_counts(store) == before
    assert store.pending_count() == 0


def test_numpy_input_is_checked_like_lists(store):
    good = [
        {
            "query_embedding": np.linspace(-1, 1, DIM, dtype=np.float32),
            "quality": np.float64(0.5),
            "steps": [{"activations": np.ones(DIM), "reward": np.float32(0.25)}],
        }
        for _ in range(2)
    ]
    bad = copy.deepcopy(good[0])
    bad["steps"][0]["activations"] = np.full(DIM, np.inf)
    with pytest.raises(ValueError, match=r"trajectory 2, field 'steps\[0\]\.activations'"):
        store.record_trajectories([*good, bad])
    bad = copy.deepcopy(good[0])
    bad["query_embedding"] = np.zeros(DIM + 1)
    with pytest.raises(ValueError, match="trajectory 1, field 'query_embedding'"):
        store.record_trajectories([good[0], bad])
    bad = copy.deepcopy(good[0])
    bad["query_embedding"] = np.ones(DIM, dtype=bool)
    with pytest.raises(ValueError, match="query_embedding"):
        store.record_trajectories([bad])
    assert row_counts(store) == {"trajectories": 0, "trajectory_steps": 0}
    assert len(store.record_trajectories(good)) == 2


def test_edge_values_are_accepted_and_stored(store):
    """What is valid must not be refused: the bounds of quality, no steps,
    no attention, integers, the optional fields left out."""
    items = [
        {"query_embedding": [1] * DIM, "quality": 0},
        {"query_embedding": [0.5] * DIM, "quality": 1, "steps": []},
        {
            "query_embedding": [-1.5] * DIM,
            "quality": 1.0,
            "steps": [{"activations": [2] * DIM, "reward": -3}],
        },
        {
            "query_embedding": [0.0] * DIM,
            "quality": 0.0,
            "steps": [{"activations": [0.1] * DIM, "reward": 0.0, "attention_weights": []}],
            "latency_us": 2**63 - 1,
            "model_route": None,
            "context_ids": [],
        },
    ]
    ids = store.record_trajectories(items)
    assert len(ids) == 4
    assert row_counts(store) == {"trajectories": 4, "trajectory_steps": 2}
    with store.engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT quality, latency_us FROM trajectories ORDER BY id")
        ).all()
    assert [q for q, _ in stored] == [0.0, 1.0, 1.0, 0.0]
    assert stored[3][1] == 2**63 - 1


def test_bulk_and_item_paths_accept_the_same_numbers(store):
    """Any real number float() takes without parsing text is a value
    (int, float, numpy scalars, Decimal, Fraction); both paths store the same
    float32 bytes. A `step_idx` sends a batch through the item-by-item path."""
    from decimal import Decimal
    from fractions import Fraction

    query = [Decimal("0.25"), Fraction(1, 3), np.float64(-2.5), 7, *([0.5] * (DIM - 4))]
    step = {"activations": [Fraction(1, 7)] * DIM, "reward": 0.5}
    bulk = {"query_embedding": query, "quality": 0.5, "steps": [step]}
    item = {"query_embedding": query, "quality": 0.5, "steps": [{**step, "step_idx": 0}]}
    ids = store.record_trajectories([bulk]) + store.record_trajectories([item])
    with store.engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT v.query_embedding, s.activations FROM trajectory_vectors v "
                "JOIN trajectory_steps s ON s.trajectory_id = v.trajectory_id "
                "WHERE v.trajectory_id IN (:a, :b) ORDER BY v.trajectory_id"
            ),
            {"a": ids[0], "b": ids[1]},
        ).all()
    expected = np.array([float(x) for x in query], dtype=np.float32).tobytes()
    assert [bytes(row[0]) for row in stored] == [expected, expected]
    assert bytes(stored[0][1]) == bytes(stored[1][1])


# Both validation paths (bulk and item by item) on the same odd values.
PATHS_CONFIG = SonaConfig(hidden_dim=4, embedding_dim=4)
PATH_ACTS = [0.5, 0.25, 0.125, 0.75]


def _both_paths(query: Any = None, attention: Any = None, *, ignore: bool = True) -> list[Any]:
    """What each path makes of one trajectory: (query, attention bytes) or
    "rejected". A `step_idx` sends it through the item-by-item path."""
    out: list[Any] = []
    for item_path in (False, True):
        step: dict[str, Any] = {"activations": PATH_ACTS, "reward": 0.5}
        if attention is not None:
            step["attention_weights"] = attention
        if item_path:
            step["step_idx"] = 0
        item = {"query_embedding": PATH_ACTS if query is None else query, "steps": [step]}
        item["quality"] = 0.5
        try:
            with warnings.catch_warnings():
                if ignore:  # as an application silencing warnings would
                    warnings.simplefilter("ignore")
                batch = validate_batch([item], PATHS_CONFIG)
            out.append((batch.queries[0].tolist(), bytes(batch.attention[0])))
        except ValidationError:
            out.append("rejected")
    return out


@pytest.mark.parametrize(
    "query",
    [
        [np.complex128(0.5 + 2j), 0.25, 0.125, 0.75],  # struct took the real part
        np.array([np.complex128(0.5 + 9j), 0.25, 0.125, 0.75], dtype=object),
        np.array([True, 0.25, 0.125, 0.75], dtype=object),  # bools inside objects
    ],
    ids=["complex-in-list", "complex-in-object-array", "bool-in-object-array"],
)
@pytest.mark.parametrize("ignore", [False, True], ids=["warnings-as-set", "warnings-ignored"])
def test_refused_on_both_paths(query, ignore):
    assert _both_paths(query=query, ignore=ignore) == ["rejected", "rejected"]


def test_large_integers_store_the_same_float32_on_both_paths():
    bulk, item = _both_paths(query=[2**60 + 2**36 + 1, 1, 2, 3])
    assert bulk != "rejected" and bulk == item


def test_an_empty_attention_array_is_no_attention_on_both_paths():
    bulk, item = _both_paths(attention=np.zeros(0, np.float32))
    assert bulk == item and bulk[1] == b""
