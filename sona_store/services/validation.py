"""Checking trajectories before anything is written.

Input is the JSONL shape of the golden cases (dicts of lists) or the same
with numpy arrays. A batch is validated whole, into arrays, so a bad item
anywhere means nothing of the batch reaches the database.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import chain, pairwise
from typing import Any

import numpy as np

from sona_store.config import SonaConfig
from sona_store.errors import ValidationError
from sona_store.learning.embedding import trajectory_embeddings
from sona_store.learning.signal import batch_learning_signals

MAX_LATENCY_US = 2**63 - 1  # a BIGINT column


@dataclass(frozen=True)
class Field:
    """One field of a trajectory or of a step, as both validation paths read
    it (the bulk path and the item-by-item one once restated the rules and
    drifted apart): whether it is required, and a number's closed range."""

    name: str
    required: bool = False
    low: float | None = None
    high: float | None = None

    def in_range(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    @property
    def range_text(self) -> str:
        return f"[{self.low}, {self.high}]"


QUALITY = Field("quality", required=True, low=0.0, high=1.0)
LATENCY_US = Field("latency_us", low=0, high=MAX_LATENCY_US)
TRAJECTORY_SPEC = (
    Field("query_embedding", required=True),
    QUALITY,
    Field("steps"),
    Field("model_route"),
    Field("context_ids"),
    LATENCY_US,
)
STEP_SPEC = (
    Field("activations", required=True),
    Field("reward", required=True),
    Field("attention_weights"),
    Field("layer_name"),
    Field("step_idx", low=0),
)
TRAJECTORY_FIELDS = {f.name for f in TRAJECTORY_SPEC}
# A gc archive line (`retention`) also carries the trajectory's id in the
# store it came from: checked here, used only by `ingest --restore`.
ARCHIVED_FIELDS = TRAJECTORY_FIELDS | {"id"}
REQUIRED_TRAJECTORY_FIELDS = tuple(f.name for f in TRAJECTORY_SPEC if f.required)
STEP_FIELDS = {f.name for f in STEP_SPEC}
REQUIRED_STEP_FIELDS = tuple(f.name for f in STEP_SPEC if f.required)
MAX_TEXT = 200
_BOOL_TYPES = {bool, np.bool_}
# Below this, no float32 operation of a pattern embedding can overflow (a
# quarter of float32's largest value leaves room for every rounding).
EMBEDDING_SAFE_BOUND = float(np.finfo(np.float32).max) / 4
# Largest L2 norm of a micro-LoRA learning signal. Signals of trajectories with steps
# are normalised (norm <= 1); a trajectory without steps teaches its query as it is
# (the reference's rule, golden-tested), so its query's norm is bounded here: a flush
# then adds at most lr * 1e6 to `up`, and a float32 sum of 1e32 such signals is finite.
MICRO_SIGNAL_MAX_NORM = 1e6
# Below this bound on a signal's entries times sqrt(width), neither the
# signal's float32 sums nor the squares of its norm can overflow.
SIGNAL_SAFE_BOUND = 1e18


@dataclass
class TrajectoryBatch:
    """n validated trajectories and their m steps, as arrays ready to insert."""

    queries: np.ndarray  # (n, embedding_dim) float32
    qualities: np.ndarray  # (n,) float64
    latencies: list[int | None]
    routes: list[str | None]
    contexts: list[list[str]]
    step_owner: np.ndarray  # (m,) index into the batch
    step_index: np.ndarray  # (m,) position within its trajectory
    activations: np.ndarray  # (m, hidden_dim) float32
    attention: list[bytes]  # m float32 vectors of any length, as stored
    rewards: np.ndarray  # (m,) float64
    layer_names: list[str | None]
    rewards32: np.ndarray = field(init=False)  # (m,) the rewards as the learning math takes them
    _signals: np.ndarray | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        with np.errstate(over="ignore", invalid="ignore"):
            self.rewards32 = self.rewards.astype(np.float32)

    @property
    def signals(self) -> np.ndarray:
        """(n, embedding_dim): Loop A's gradients, computed when first asked
        for: a live trajectory is validated on its caller's thread without
        them (bounds prove them finite), and the writer computes a whole
        group's at once."""
        signals = self._signals
        if signals is None:
            with np.errstate(over="ignore", invalid="ignore"):
                signals = self._signals = batch_learning_signals(
                    self.queries, self.step_owner, self.activations, self.rewards32
                )
        return signals

    def first_non_finite(self) -> tuple[int, str] | None:
        """The first trajectory whose derived float32 values overflow (a finite
        but huge reward or activation), and what overflowed; None if none does."""
        if self._surely_finite():
            return None
        bad_reward = ~np.isfinite(self.rewards32)
        checks = (
            ("steps.reward", self.step_owner[bad_reward]),  # ascending: steps are by owner
            ("steps.activations", self._overflowing_embeddings()),
            ("steps.activations", self._non_finite_signals()),
            ("query_embedding", self._oversized_signals()),
        )
        found = [
            (int(rows[0]), order, name) for order, (name, rows) in enumerate(checks) if len(rows)
        ]
        return min(found)[::2] if found else None

    def _surely_finite(self) -> bool:
        """The bounds of the three checks below at once, from four maxima: a
        batch of ordinary values (every one a live router records) passes
        here without the per-check passes, which only find the culprit."""
        if not len(self.queries):
            return True
        longest = int(np.bincount(self.step_owner).max()) if len(self.step_owner) else 0
        return _bounds_hold(
            max_query=_max_abs(self.queries),
            query_width=self.queries.shape[1],
            stepless=longest == 0 or len(np.unique(self.step_owner)) < len(self.queries),
            longest=longest,
            max_act=_max_abs(self.activations),
            act_width=self.activations.shape[1],
            max_reward=_max_abs(self.rewards32),
            top_reward=float(self.rewards32.max()) if longest else 0.0,
        )

    def _non_finite_signals(self) -> np.ndarray:
        """Trajectories whose learning signal is not finite. A signal sums at
        most (steps) advantages (each at most 2 max|reward|) times an
        activation, then squares it for its norm: below SIGNAL_SAFE_BOUND
        nothing can overflow, and the signals are not computed here."""
        if not len(self.step_owner):
            return np.zeros(0, dtype=np.int64)  # signals are the (finite) queries
        longest = int(np.bincount(self.step_owner).max())
        bound = 2.0 * longest * _max_abs(self.rewards32) * _max_abs(self.activations)
        if bound * math.sqrt(self.activations.shape[1] or 1) < SIGNAL_SAFE_BOUND:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(~np.isfinite(self.signals).all(1))

    def _oversized_signals(self) -> np.ndarray:
        """Trajectories whose learning signal's norm exceeds MICRO_SIGNAL_MAX_NORM
        (only a query without steps can: the others are normalised, and a
        query without steps is its own signal)."""
        n = len(self.queries)
        if not n:
            return np.zeros(0, dtype=np.int64)
        stepless = np.flatnonzero(np.bincount(self.step_owner, minlength=n) == 0)
        if not len(stepless):
            return np.zeros(0, dtype=np.int64)
        queries = self.queries[stepless]
        if _max_abs(queries) * np.sqrt(queries.shape[1]) <= MICRO_SIGNAL_MAX_NORM:
            return np.zeros(0, dtype=np.int64)
        norms = np.linalg.norm(queries.astype(np.float64), axis=1)
        oversized: np.ndarray = stepless[~(norms <= MICRO_SIGNAL_MAX_NORM)]
        return oversized

    def _overflowing_embeddings(self) -> np.ndarray:
        """Trajectories whose pattern embedding (computed by each cycle, not
        stored) would not be finite. Its float32 sums are bounded by
        max|q| + (most steps) * max(reward, 0) * max|a|: only a batch whose bound
        comes near float32's limit has its embeddings computed to find out."""
        if not len(self.queries):
            return np.zeros(0, dtype=np.int64)
        bound = _max_abs(self.queries)
        if len(self.step_owner):
            weight = max(float(self.rewards32.max()), 0.0)
            longest = int(np.bincount(self.step_owner).max())
            bound += longest * weight * _max_abs(self.activations)
        if bound < EMBEDDING_SAFE_BOUND:
            return np.zeros(0, dtype=np.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            embeddings = trajectory_embeddings(
                self.queries, self.step_owner, self.activations, self.rewards32
            )
        return np.flatnonzero(~np.isfinite(embeddings).all(1))

    def __len__(self) -> int:
        return len(self.queries)

    @classmethod
    def gather(cls, items: list[Recordable], config: SonaConfig) -> TrajectoryBatch:
        """Batches and live trajectories as one batch, in order (the writer's
        group): each run of live trajectories becomes one batch."""
        batches: list[TrajectoryBatch] = []
        lives: list[LiveTrajectory] = []
        for item in items:
            if isinstance(item, LiveTrajectory):
                lives.append(item)
                continue
            if lives:
                batches.append(_gather_live(lives, config))
                lives = []
            batches.append(item)
        if lives:
            batches.append(_gather_live(lives, config))
        return cls.concat(batches)

    @classmethod
    def concat(cls, batches: list[TrajectoryBatch]) -> TrajectoryBatch:
        """Validated batches as one, in order (the writer's group commit),
        their learning signals carried over rather than computed again."""
        if len(batches) == 1:
            return batches[0]
        offsets = np.cumsum([0, *(len(b) for b in batches[:-1])])
        merged = cls.__new__(cls)
        merged.queries = np.concatenate([b.queries for b in batches])
        merged.qualities = np.concatenate([b.qualities for b in batches])
        merged.latencies = [x for b in batches for x in b.latencies]
        merged.routes = [x for b in batches for x in b.routes]
        merged.contexts = [x for b in batches for x in b.contexts]
        merged.step_owner = np.concatenate(
            [b.step_owner + offset for b, offset in zip(batches, offsets, strict=True)]
        )
        merged.step_index = np.concatenate([b.step_index for b in batches])
        merged.activations = np.concatenate([b.activations for b in batches])
        merged.attention = [x for b in batches for x in b.attention]
        merged.rewards = np.concatenate([b.rewards for b in batches])
        merged.layer_names = [x for b in batches for x in b.layer_names]
        merged.rewards32 = np.concatenate([b.rewards32 for b in batches])
        known = [b._signals for b in batches if b._signals is not None]
        merged._signals = np.concatenate(known) if len(known) == len(batches) else None
        return merged


def _vector(value: Any, *, index: int | None, name: str, dim: int | None) -> np.ndarray:
    if value is None:
        raise ValidationError("is missing", index=index, field=name)
    if isinstance(value, (str, bytes, Mapping)):
        raise ValidationError(
            f"must be a list of numbers, got {type(value).__name__}", index=index, field=name
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise ValidationError(
            f"must be a list of numbers ({exc})", index=index, field=name
        ) from None
    listed = not isinstance(value, np.ndarray) or array.dtype == object
    elements = array.tolist() if isinstance(value, np.ndarray) else value
    if listed and array.ndim == 1 and _BOOL_TYPES & set(map(type, elements)):
        # numpy reads [0.5, True] as [0.5, 1.0]: a bool is not a number here.
        raise ValidationError("must be a flat list of numbers, got a bool", index=index, field=name)
    if array.dtype == object and array.ndim == 1 and not _has_complex(array):
        # Numbers numpy keeps as objects (Decimal, Fraction): what float()
        # takes without parsing text, as the bulk path's struct packing does.
        with contextlib.suppress(struct.error, TypeError, OverflowError):
            array = np.frombuffer(struct.pack(f"{len(array)}d", *array), dtype=np.float64)
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise ValidationError("must be a flat list of numbers", index=index, field=name)
    if array.size == 0 and dim != 0:
        raise ValidationError("is empty", index=index, field=name)
    if dim is not None and array.size != dim:
        raise ValidationError(f"has {array.size} values, expected {dim}", index=index, field=name)
    with np.errstate(over="ignore", invalid="ignore"):
        array = _as_float32(array)
    if not np.isfinite(array).all():
        raise ValidationError(
            "contains NaN or infinity (or a value too large for float32)", index=index, field=name
        )
    return array


def check_vector(value: Any, name: str, dim: int) -> np.ndarray:
    """`value` as float32; raises ValidationError, naming `name`, unless it is
    `dim` finite numbers. A plain list or numeric array takes the bulk path's
    packing; anything else the item-by-item checks, which name the problem."""
    fast = live_vector(value, dim)
    if fast is not None:
        return fast[0]
    return _vector(value, index=None, name=name, dim=dim)


def _has_complex(values: Iterable[Any]) -> bool:
    """numpy's complex scalars convert to float with a warning, dropping the
    imaginary part: a complex is not a number here."""
    return any(isinstance(v, complex) for v in values)


def _number(value: Any, *, index: int | None, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValidationError(
            f"must be a number, got {type(value).__name__}", index=index, field=name
        )
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise ValidationError("must be finite", index=index, field=name) from None
    if not math.isfinite(number):
        raise ValidationError("must be finite", index=index, field=name)
    return number


def _text(value: Any, *, index: int | None, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(
            f"must be a string, got {type(value).__name__}", index=index, field=name
        )
    if len(value) > MAX_TEXT:
        raise ValidationError(f"is longer than {MAX_TEXT} characters", index=index, field=name)
    problem = _text_problem(value)
    if problem:
        raise ValidationError(problem, index=index, field=name)
    return value


def archived_id(item: Mapping[str, Any], *, index: int | None) -> int | None:
    """The `id` a gc archive line carries (None when absent): a positive integer."""
    value = item.get("id")
    if value is None:
        return None
    if type(value) in _BOOL_TYPES or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValidationError(f"must be a positive integer, got {value!r}", index=index, field="id")
    return int(value)


def _text_problem(value: str) -> str | None:
    """Why a string cannot be stored the same on both databases, or None:
    PostgreSQL's text refuses NUL, and a lone surrogate (valid JSON, "\\ud800")
    has no UTF-8 encoding."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone surrogate (not valid Unicode text)"
    return None


def _plain_text(value: Any) -> bool:
    """Whether the bulk path may take `value` as text as it is (None or a
    storable string); anything else goes through `_text`, which names it."""
    return value is None or (
        type(value) is str and len(value) <= MAX_TEXT and _text_problem(value) is None
    )


def _check_fields(
    item: Any, allowed: set[str], required: Iterable[str], *, index: int | None, prefix: str
) -> None:
    where = prefix.rstrip(".") or None  # "steps[0]", or None for the trajectory itself
    if not isinstance(item, Mapping):
        raise ValidationError(
            f"must be an object, got {type(item).__name__}", index=index, field=where
        )
    unknown = sorted(set(item) - allowed, key=str)
    if unknown:
        raise ValidationError(
            f"unknown field(s): {', '.join(map(str, unknown))}", index=index, field=where
        )
    for name in required:
        if name not in item:
            raise ValidationError("is missing", index=index, field=f"{prefix}{name}")


def _max_abs(matrix: np.ndarray) -> float:
    """Largest magnitude of a finite matrix (two passes, no temporary)."""
    return max(float(matrix.max()), -float(matrix.min())) if matrix.size else 0.0


class _BatchBuilder:
    def __init__(self, config: SonaConfig):
        self.config = config
        self.queries: list[np.ndarray] = []
        self.qualities: list[float] = []
        self.latencies: list[int | None] = []
        self.routes: list[str | None] = []
        self.contexts: list[list[str]] = []
        self.step_owner: list[int] = []
        self.step_index: list[int] = []
        self.activations: list[np.ndarray] = []
        self.attention: list[bytes] = []
        self.rewards: list[float] = []
        self.layer_names: list[str | None] = []

    def add(self, item: Any, index: int) -> None:
        cfg = self.config
        _check_fields(item, ARCHIVED_FIELDS, REQUIRED_TRAJECTORY_FIELDS, index=index, prefix="")
        archived_id(item, index=index)
        query = _vector(
            item["query_embedding"], index=index, name="query_embedding", dim=cfg.embedding_dim
        )
        quality = _number(item["quality"], index=index, name="quality")
        if not QUALITY.in_range(quality):
            raise ValidationError(
                f"must be in {QUALITY.range_text}, got {quality}", index=index, field="quality"
            )
        steps = item.get("steps")
        steps = [] if steps is None else steps
        if not isinstance(steps, (list, tuple)):
            raise ValidationError("must be a list of steps", index=index, field="steps")
        latency = item.get("latency_us")
        if latency is not None:
            latency_value = _number(latency, index=index, name="latency_us")
            if latency_value != int(latency_value):
                raise ValidationError("must be an integer", index=index, field="latency_us")
            # An int keeps its exact value (a float cannot hold every 64-bit one).
            latency = int(latency) if isinstance(latency, (int, np.integer)) else int(latency_value)
            if not LATENCY_US.in_range(latency):
                raise ValidationError(
                    f"must be in {LATENCY_US.range_text}", index=index, field="latency_us"
                )
        route = _text(item.get("model_route"), index=index, name="model_route")
        context = item.get("context_ids")
        context = [] if context is None else context
        if not isinstance(context, (list, tuple)) or any(c is None for c in context):
            raise ValidationError("must be a list of strings", index=index, field="context_ids")
        context = [_text(c, index=index, name="context_ids") for c in context]
        owner = len(self.queries)
        parsed_steps = [self._step(step, index, j) for j, step in enumerate(steps)]
        # Everything of this trajectory is valid: only now does it join the batch.
        self.queries.append(query)
        self.qualities.append(quality)
        self.latencies.append(latency)
        self.routes.append(route)
        self.contexts.append(context)
        for j, (acts, attn, reward, layer) in enumerate(parsed_steps):
            self.step_owner.append(owner)
            self.step_index.append(j)
            self.activations.append(acts)
            self.attention.append(attn.astype(np.float32, copy=False).tobytes())
            self.rewards.append(reward)
            self.layer_names.append(layer)

    def _step(
        self, step: Any, index: int, j: int
    ) -> tuple[np.ndarray, np.ndarray, float, str | None]:
        prefix = f"steps[{j}]."
        _check_fields(step, STEP_FIELDS, REQUIRED_STEP_FIELDS, index=index, prefix=prefix)
        acts = _vector(
            step["activations"],
            index=index,
            name=prefix + "activations",
            dim=self.config.hidden_dim,
        )
        attention = step.get("attention_weights")
        attn = (
            np.zeros(0, dtype=np.float32)
            if attention is None
            or (isinstance(attention, (list, tuple, np.ndarray)) and not len(attention))
            else _vector(attention, index=index, name=prefix + "attention_weights", dim=None)
        )
        reward = _number(step["reward"], index=index, name=prefix + "reward")
        step_idx = step.get("step_idx")  # informational: the position in `steps` is used
        if step_idx is not None and (
            isinstance(step_idx, bool) or not isinstance(step_idx, int) or step_idx < 0
        ):
            raise ValidationError(
                "must be a non-negative integer", index=index, field=prefix + "step_idx"
            )
        layer = _text(step.get("layer_name"), index=index, name=prefix + "layer_name")
        return acts, attn, reward, layer

    def build(self) -> TrajectoryBatch:
        cfg = self.config
        m = len(self.step_owner)
        return TrajectoryBatch(
            queries=np.stack(self.queries)
            if self.queries
            else np.zeros((0, cfg.embedding_size), np.float32),
            qualities=np.asarray(self.qualities, dtype=np.float64),
            latencies=self.latencies,
            routes=self.routes,
            contexts=self.contexts,
            step_owner=np.asarray(self.step_owner, dtype=np.int64),
            step_index=np.asarray(self.step_index, dtype=np.int64),
            activations=np.stack(self.activations)
            if m
            else np.zeros((0, cfg.hidden_dim), np.float32),
            attention=self.attention,
            rewards=np.asarray(self.rewards, dtype=np.float64),
            layer_names=self.layer_names,
        )


def validate_batch(
    items: Iterable[Any], config: SonaConfig, *, first_index: int = 0
) -> TrajectoryBatch:
    """Validate every item (raising ValidationError naming the first bad one).

    A well-formed batch is checked in bulk (one numpy conversion for all its
    vectors); anything irregular goes through the item-by-item path, which is
    the one that names the bad trajectory and field."""
    items = list(items)
    batch = _bulk_batch(items, config)
    if batch is None:
        builder = _BatchBuilder(config)
        for offset, item in enumerate(items):
            builder.add(item, first_index + offset)
        batch = builder.build()
    _refuse_overflow(batch, first_index)
    return batch


def _refuse_overflow(batch: TrajectoryBatch, first_index: int) -> None:
    overflow = batch.first_non_finite()
    if overflow is not None:
        index, name = overflow
        raise ValidationError(
            "values too large: they overflow float32 in the embedding or learning signal, "
            f"or a query without steps (the micro-LoRA's signal as it is) has a norm "
            f"above {MICRO_SIGNAL_MAX_NORM:g}",
            index=first_index + index,
            field=name,
        )


_NUMBER_TYPES = (int, float)

# A complex number is not a number here: numpy's complex scalars convert to
# float with a ComplexWarning, dropping the imaginary part.
ComplexWarning = getattr(np, "exceptions", np).ComplexWarning
_COMPLEX = (complex, np.complexfloating)


def _plain_vectors(vectors: list[Any], width: int) -> np.ndarray | None:
    """(n, width) float32 when every vector is a list (or numeric array) of
    `width` finite numbers, no bools; None otherwise, and the item-by-item
    path names the problem.

    Lists are packed with `struct`, which converts them faster than numpy
    (benchmarks/README.md, "Figures behind the code's choices"): it takes exactly what `float()` takes from an object without
    parsing text, refusing strings, None and nesting, and raises on values
    beyond float32. Bools get through it as 0.0 and 1.0, so only rows holding
    an exact 0 or 1 have their element types checked."""
    if not vectors or width == 0:
        return np.zeros((len(vectors), width), dtype=np.float32)
    if all(type(v) is np.ndarray for v in vectors):
        if any(v.shape != (width,) or v.dtype.kind not in "iuf" for v in vectors):
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            converted = _as_float32(np.array(vectors))
        return converted if np.isfinite(converted).all() else None  # no bools: dtypes checked
    array = _packed(vectors, width)
    if array is None or not np.isfinite(array).all():
        return None
    for row in np.flatnonzero(((array == 0) | (array == 1)).any(axis=1)).tolist():
        v = vectors[row]
        if type(v) is list and _BOOL_TYPES & set(map(type, v)):
            return None
    return array


def _as_float32(array: np.ndarray) -> np.ndarray:
    """Integers go through float64, as JSON numbers and packed lists do."""
    if array.dtype.kind in "iu":
        array = array.astype(np.float64)
    return array.astype(np.float32, copy=False)


def _packed(vectors: list[Any], width: int) -> np.ndarray | None:
    """Lists packed with struct, arrays converted; None for anything else.
    A list's sum shows a complex (numpy's complex scalars would convert with
    a ComplexWarning, their imaginary part dropped) without touching the
    process's warning filters, which an application owns."""
    packer = struct.Struct(f"{width}f")
    rows = []
    try:
        for v in vectors:
            if type(v) is list and len(v) == width:
                if isinstance(sum(v, 0.0), _COMPLEX):
                    return None
                rows.append(packer.pack(*v))
            elif type(v) is np.ndarray and v.shape == (width,) and v.dtype.kind in "iuf":
                with np.errstate(over="ignore", invalid="ignore"):
                    rows.append(_as_float32(v).tobytes())
            else:
                return None
    except (struct.error, TypeError, OverflowError, ComplexWarning):
        return None
    return _rows(vectors, rows, width)


def _rows(vectors: list[Any], packed: list[bytes], width: int) -> np.ndarray:
    return np.frombuffer(b"".join(packed), dtype=np.float32).reshape(len(vectors), width)


def _bulk_batch(items: list[Any], config: SonaConfig) -> TrajectoryBatch | None:
    queries, qualities, latencies, routes, contexts = [], [], [], [], []
    owners, positions, acts, attention, rewards, layers = [], [], [], [], [], []
    for i, item in enumerate(items):
        if type(item) is not dict or not item.keys() <= TRAJECTORY_FIELDS:
            return None
        quality: Any = item.get("quality")
        latency = item.get("latency_us")
        route = item.get("model_route")
        context = item.get("context_ids", [])
        steps = item.get("steps", [])
        if (
            type(quality) not in _NUMBER_TYPES
            or not QUALITY.in_range(quality)
            or not all(name in item for name in REQUIRED_TRAJECTORY_FIELDS)
            or (
                latency is not None
                and (type(latency) is not int or not LATENCY_US.in_range(latency))
            )
            or not _plain_text(route)
            or type(context) is not list
            or (context and not all(c is not None and _plain_text(c) for c in context))
            or type(steps) is not list
        ):
            return None
        queries.append(item["query_embedding"])
        qualities.append(quality)
        latencies.append(latency)
        routes.append(route)
        contexts.append(context)
        for j, step in enumerate(steps):
            if (
                type(step) is not dict
                or not step.keys() <= STEP_FIELDS
                or not all(name in step for name in REQUIRED_STEP_FIELDS)
                or "step_idx" in step  # rare: the item-by-item path checks it
            ):
                return None
            reward = step.get("reward")
            weights = step.get("attention_weights", [])
            layer = step.get("layer_name")
            if (
                not (type(reward) is float or (type(reward) is int and abs(reward) < 2**53))
                or not math.isfinite(reward)
                or not _plain_text(layer)
            ):
                return None
            if type(weights) is np.ndarray:
                weights = weights.tolist()
            if type(weights) is not list:
                return None
            owners.append(i)
            positions.append(j)
            acts.append(step["activations"])
            attention.append(weights)
            rewards.append(reward)
            layers.append(layer)
    query_array = _plain_vectors(queries, config.embedding_size)
    act_array = _plain_vectors(acts, config.hidden_dim)
    # Attention vectors have any length: checked as one flat vector, then split.
    flat = list(chain.from_iterable(attention))
    flat_array = _plain_vectors([flat], len(flat))
    if query_array is None or act_array is None or flat_array is None:
        return None
    # Each step's float32 bytes, sliced from one buffer (no array per step).
    buffer = flat_array[0].tobytes()
    ends = np.cumsum([4 * len(weights) for weights in attention]).tolist()
    attention_bytes = [buffer[a:b] for a, b in pairwise([0, *ends])]
    return TrajectoryBatch(
        queries=query_array,
        qualities=np.asarray(qualities, dtype=np.float64),
        latencies=latencies,
        routes=routes,
        contexts=contexts,
        step_owner=np.asarray(owners, dtype=np.int64),
        step_index=np.asarray(positions, dtype=np.int64),
        activations=act_array,
        attention=attention_bytes,
        rewards=np.asarray(rewards, dtype=np.float64),
        layer_names=layers,
    )


@dataclass(frozen=True, slots=True)
class CheckedStep:
    """One live step, converted and checked when it was added."""

    activations: np.ndarray  # (hidden_dim,) float32
    max_abs: float  # of the activations: the overflow bounds need no pass
    attention: bytes  # float32
    reward: float
    layer_name: str | None


def live_vector(value: Any, width: int) -> tuple[np.ndarray, float] | None:
    """A list (or numeric array) of `width` finite numbers, no bools, as
    float32 with its largest magnitude; None for anything else (the full
    validation names it). The one-vector form of `_plain_vectors`' rules,
    with a single pass giving both finiteness and the magnitude."""
    if type(value) is list:
        if len(value) != width:
            return None
        try:
            if isinstance(sum(value, 0.0), _COMPLEX):
                return None
            array = np.frombuffer(struct.pack(f"{width}f", *value), dtype=np.float32)
        except (struct.error, TypeError, OverflowError, ComplexWarning):
            return None
        if width and ((array == 0) | (array == 1)).any() and _BOOL_TYPES & set(map(type, value)):
            return None
    elif type(value) is np.ndarray and value.shape == (width,) and value.dtype.kind in "iuf":
        with np.errstate(over="ignore", invalid="ignore"):
            array = _as_float32(value).copy()
    else:
        return None
    largest = float(np.abs(array).max()) if width else 0.0
    return (array, largest) if math.isfinite(largest) else None


def checked_step(
    activations: Any, attention: list[Any], reward: Any, layer_name: Any, hidden_dim: int
) -> CheckedStep | None:
    """A live step as the bulk path takes it, converted once when it is added
    (so ending the trajectory has nothing left to convert); None when
    anything in it is irregular, and the full validation, when the
    trajectory ends, names the problem."""
    if not (
        (type(reward) is float or (type(reward) is int and abs(reward) < 2**53))
        and math.isfinite(reward)
        and _plain_text(layer_name)
    ):
        return None
    acts = live_vector(activations, hidden_dim)
    weights = live_vector(attention, len(attention)) if attention else _NO_ATTENTION
    if acts is None or weights is None:
        return None
    return CheckedStep(acts[0], acts[1], weights[0].tobytes(), float(reward), layer_name)


_NO_ATTENTION = (np.zeros(0, dtype=np.float32), 0.0)


@dataclass(frozen=True, slots=True)
class LiveTrajectory:
    """One live trajectory, checked, as the caller hands it to the writer:
    the writer builds its group's arrays from many of these at once
    (`TrajectoryBatch.gather`), so the caller's thread builds none."""

    query: np.ndarray  # (embedding_dim,) float32
    steps: list[CheckedStep]
    quality: float
    latency: int
    route: str | None
    contexts: list[str]

    def __len__(self) -> int:
        return 1


Recordable = TrajectoryBatch | LiveTrajectory


def live_trajectory(
    query: np.ndarray,
    steps: list[CheckedStep],
    quality: Any,
    latency: int,
    route: Any,
    contexts: list[Any],
    config: SonaConfig,
) -> Recordable | None:
    """One live trajectory whose query and steps were checked as they were
    given, ready for the writer; None when a field left to check is
    irregular (the full validation then names it). Values whose derived
    float32 values could overflow are checked as `validate_batch` does (and
    refused with the same error)."""
    if (
        type(quality) not in _NUMBER_TYPES
        or not QUALITY.in_range(quality)
        or not LATENCY_US.in_range(latency)
        or not _plain_text(route)
        or (contexts and not all(c is not None and _plain_text(c) for c in contexts))
    ):
        return None
    live = LiveTrajectory(query, steps, quality, latency, route, contexts)
    if _live_bounds_hold(query, steps):
        return live
    batch = TrajectoryBatch.gather([live], config)
    _refuse_overflow(batch, 0)
    return batch


def _gather_live(lives: list[LiveTrajectory], config: SonaConfig) -> TrajectoryBatch:
    """Live trajectories as one batch: one array per column for the group."""
    owners: list[int] = []
    positions: list[int] = []
    steps: list[CheckedStep] = []
    for i, live in enumerate(lives):
        for j, step in enumerate(live.steps):
            owners.append(i)
            positions.append(j)
            steps.append(step)
    return TrajectoryBatch(
        queries=np.stack([live.query for live in lives]),
        qualities=np.array([live.quality for live in lives], dtype=np.float64),
        latencies=[live.latency for live in lives],
        routes=[live.route for live in lives],
        contexts=[live.contexts for live in lives],
        step_owner=np.array(owners, dtype=np.int64),
        step_index=np.array(positions, dtype=np.int64),
        activations=np.stack([s.activations for s in steps])
        if steps
        else np.zeros((0, config.hidden_dim), np.float32),
        attention=[s.attention for s in steps],
        rewards=np.array([s.reward for s in steps], dtype=np.float64),
        layer_names=[s.layer_name for s in steps],
    )


def _live_bounds_hold(query: np.ndarray, steps: list[CheckedStep]) -> bool:
    """`TrajectoryBatch._surely_finite` for one trajectory, from the maxima
    its steps carry (no pass over the arrays but the query's)."""
    rewards = [s.reward for s in steps]
    return _bounds_hold(
        max_query=float(np.abs(query).max()) if query.size else 0.0,
        query_width=query.size,
        stepless=not steps,
        longest=len(steps),
        max_act=max((s.max_abs for s in steps), default=0.0),
        act_width=steps[0].activations.size if steps else 0,
        max_reward=max(map(abs, rewards), default=0.0),
        top_reward=max(rewards, default=0.0),
    )


def _bounds_hold(
    *,
    max_query: float,
    query_width: int,
    stepless: bool,
    longest: int,
    max_act: float,
    act_width: int,
    max_reward: float,
    top_reward: float,
) -> bool:
    """Whether no float32 value derived from a batch (pattern embeddings,
    learning signals, a stepless query's signal norm) can overflow, from its
    maxima: the bounds of `TrajectoryBatch.first_non_finite`'s checks at
    once. False only means the exact checks must look."""
    # A query without steps is its own signal.
    if stepless and max_query * math.sqrt(query_width) > MICRO_SIGNAL_MAX_NORM:
        return False
    if longest == 0:
        return max_query < EMBEDDING_SAFE_BOUND
    if not max_reward < REWARD32_MAX:  # inf (or NaN) as float32
        return False
    embedding_bound = max_query + longest * max(top_reward, 0.0) * max_act
    signal_bound = 2.0 * longest * max_reward * max_act * math.sqrt(act_width or 1)
    return embedding_bound < EMBEDDING_SAFE_BOUND and signal_bound < SIGNAL_SAFE_BOUND


REWARD32_MAX = float(np.finfo(np.float32).max)  # a larger reward is inf as float32


def read_jsonl(lines: Iterable[str | bytes]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line. Lines may be text
    or bytes (decoded here as UTF-8, so a bad byte names its line). Anything
    that is not one JSON value (malformed, invalid UTF-8, nested too deeply,
    an integer too long to convert) is a ValidationError naming the line."""
    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValidationError(
                    f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})",
                    line=number,
                ) from None
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"malformed JSON ({exc.msg} at column {exc.colno})", line=number
            ) from None
        except RecursionError:
            raise ValidationError("JSON nested too deeply", line=number) from None
        except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
            raise ValidationError(f"malformed JSON ({_first_line(exc)})", line=number) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
