"""EWC++ (online elastic weight consolidation), as the reference runs it (docs/reference.md#ewc),
held as plain state so a persistence layer can store and restore it bit for bit.

Every operation is a pure function: it returns new arrays (or a new `EwcState`) and never
mutates its inputs. Arithmetic is float32 throughout, with the configuration's constants
rounded to float32 first, as the reference's `f32` code does.

Differs from the reference on purpose (its defects 2 and 5): a vector whose length is not
`param_count`, or that holds NaN or an infinity, raises `ValidationError` (a ValueError)
instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sona_store.errors import ConfigError, ValidationError

# Thresholds the reference hard-codes.
BOUNDARY_MIN_SAMPLES = 50  # boundary detection needs this many samples of the current task
IMPORTANCE_EPS = np.float32(1e-8)  # a Fisher value at or below this is treated as zero
VARIANCE_EPS = np.float32(1e-8)  # parameters with var/samples at or below this are skipped
LAMBDA_GROWTH_PER_TASK = np.float32(0.1)


@dataclass(frozen=True)
class EwcConfig:
    """EWC++ settings. `initial_lambda` is SonaConfig.ewc_lambda; `param_count` must equal the
    length of the gradients fed in (layers * rank * dim for the base LoRA)."""

    param_count: int
    max_tasks: int = 10
    initial_lambda: float = 2000.0
    min_lambda: float = 100.0
    max_lambda: float = 15000.0
    fisher_ema_decay: float = 0.999
    boundary_threshold: float = 2.0
    gradient_history_size: int = 100  # kept for parity with the reference; no effect here

    def __post_init__(self) -> None:
        if self.param_count < 1:
            raise ConfigError(f"param_count must be at least 1, got {self.param_count}")
        if self.max_tasks < 1:
            raise ConfigError(f"max_tasks must be at least 1, got {self.max_tasks}")
        if not 0.0 < self.min_lambda <= self.max_lambda:
            raise ConfigError(
                f"need 0 < min_lambda <= max_lambda, got {self.min_lambda}, {self.max_lambda}"
            )
        if not 0.0 <= self.fisher_ema_decay <= 1.0:
            raise ConfigError(f"fisher_ema_decay must be in [0, 1], got {self.fisher_ema_decay}")


@dataclass(frozen=True)
class TaskMemory:
    """A finished task: its Fisher diagonal and the weights it ended at."""

    task_id: int
    fisher: np.ndarray  # (param_count,) float32
    optimal_weights: np.ndarray  # (param_count,) float32
    importance: float = 1.0


@dataclass
class EwcState:
    """Everything EWC++ carries between calls. `grad_var` is Welford's running sum of
    squared deviations (M2), starting at 1 as in the reference, not the variance: the
    boundary test divides it by `samples_seen`."""

    fisher: np.ndarray  # current task's Fisher diagonal, (param_count,) float32
    weights: np.ndarray  # current weights, snapshotted into a TaskMemory on a new task
    grad_mean: np.ndarray
    grad_var: np.ndarray
    samples_seen: int
    task_id: int
    lambda_: float
    tasks: tuple[TaskMemory, ...]  # oldest first, at most max_tasks

    @classmethod
    def initial(cls, config: EwcConfig) -> EwcState:
        """Fresh state: zero Fisher, weights and mean, var ones, lambda = initial_lambda."""
        n = config.param_count
        return cls(
            fisher=np.zeros(n, dtype=np.float32),
            weights=np.zeros(n, dtype=np.float32),
            grad_mean=np.zeros(n, dtype=np.float32),
            grad_var=np.ones(n, dtype=np.float32),
            samples_seen=0,
            task_id=0,
            lambda_=float(np.float32(config.initial_lambda)),
            tasks=(),
        )


def _check_vector(v: np.ndarray, expected: int, name: str) -> np.ndarray:
    """The vector as float32, or ValidationError when its length or values are wrong."""
    arr = np.asarray(v)
    if arr.ndim != 1 or arr.shape[0] != expected:
        actual = arr.shape[0] if arr.ndim == 1 else f"shape {arr.shape}"
        raise ValidationError(f"expected length {expected} (param_count), got {actual}", field=name)
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValidationError("contains NaN or infinite values", field=name)
    return arr


def validate_state(state: EwcState, config: EwcConfig) -> None:
    """Raise ValidationError unless every array of `state` has param_count entries and the
    task ring fits max_tasks; use after restoring a state, and before each operation."""
    n = config.param_count
    arrays = {
        "fisher": state.fisher,
        "weights": state.weights,
        "grad_mean": state.grad_mean,
        "grad_var": state.grad_var,
    }
    for i, task in enumerate(state.tasks):
        arrays[f"tasks[{i}].fisher"] = task.fisher
        arrays[f"tasks[{i}].optimal_weights"] = task.optimal_weights
    for name, arr in arrays.items():
        if np.shape(arr) != (n,):
            raise ValidationError(f"expected shape ({n},), got {np.shape(arr)}", field=name)
    if len(state.tasks) > config.max_tasks:
        raise ValidationError(
            f"holds {len(state.tasks)} tasks, more than max_tasks={config.max_tasks}",
            field="tasks",
        )
    if state.samples_seen < 0:
        raise ValidationError(f"negative samples_seen {state.samples_seen}", field="samples_seen")


def check_finite(state: EwcState) -> None:
    """Raise ValidationError if any array of `state` holds NaN or an infinity: run on
    every state before it is stored."""
    arrays = {"fisher": state.fisher, "weights": state.weights}
    arrays |= {"grad_mean": state.grad_mean, "grad_var": state.grad_var}
    for i, task in enumerate(state.tasks):
        arrays[f"tasks[{i}].fisher"] = task.fisher
        arrays[f"tasks[{i}].optimal_weights"] = task.optimal_weights
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise ValidationError("contains NaN or infinite values", field=name)
    if not np.isfinite(state.lambda_):
        raise ValidationError("is not finite", field="lambda")


def update_fisher(
    state: EwcState,
    g: np.ndarray,
    config: EwcConfig,
    *,
    statistics_of: np.ndarray | None = None,
    fisher_sample: np.ndarray | None = None,
) -> EwcState:
    """Fold one gradient into the Fisher EMA, F = decay * F + (1 - decay) * g^2, and into
    the Welford mean and M2 (n = samples_seen + 1; mean += delta / n;
    var += delta * (g - new mean)) that boundary detection compares against.
    `statistics_of` gives the Welford update another gradient than the Fisher's, and
    `fisher_sample` folds a given per-parameter importance (>= 0) instead of g^2 (see
    `ewc_step`); by default both use g, as the reference does."""
    validate_state(state, config)
    g = _check_vector(g, config.param_count, "gradient")
    s = g if statistics_of is None else _check_vector(statistics_of, config.param_count, "gradient")
    sample = g * g
    if fisher_sample is not None:
        sample = _check_vector(fisher_sample, config.param_count, "fisher_sample")
        if (sample < 0).any():
            raise ValidationError("must be >= 0", field="fisher_sample")
    decay = np.float32(config.fisher_ema_decay)
    fisher = decay * state.fisher + (np.float32(1.0) - decay) * sample
    n = np.float32(state.samples_seen + 1)
    delta = s - state.grad_mean
    mean = state.grad_mean + delta / n
    var = state.grad_var + delta * (s - mean)
    return dataclasses.replace(
        state,
        fisher=fisher.astype(np.float32),
        grad_mean=mean.astype(np.float32),
        grad_var=var.astype(np.float32),
        samples_seen=state.samples_seen + 1,
    )


def detect_task_boundary(state: EwcState, g: np.ndarray, config: EwcConfig) -> bool:
    """True when g is far from this task's gradients: fewer than 50 samples never is;
    otherwise the mean z-score |g - mean| / sqrt(var / samples), over parameters with
    var / samples > 1e-8, must exceed boundary_threshold (no such parameter: False)."""
    validate_state(state, config)
    g = _check_vector(g, config.param_count, "gradient")
    if state.samples_seen < BOUNDARY_MIN_SAMPLES:
        return False
    variance = state.grad_var / np.float32(state.samples_seen)
    mask = variance > VARIANCE_EPS
    count = int(np.count_nonzero(mask))
    if count == 0:
        return False
    z = np.abs(g[mask] - state.grad_mean[mask]) / np.sqrt(variance[mask])
    avg_z = np.float32(z.sum(dtype=np.float32)) / np.float32(count)
    return bool(avg_z > np.float32(config.boundary_threshold))


def task_lambda(task_count: int, config: EwcConfig) -> float:
    """clamp(initial * (1 + 0.1 * task_count), min, max): more tasks, more to protect."""
    scale = np.float32(1.0) + LAMBDA_GROWTH_PER_TASK * np.float32(task_count)
    raw = np.float32(config.initial_lambda) * scale
    lo, hi = np.float32(config.min_lambda), np.float32(config.max_lambda)
    return float(np.float32(min(max(raw, lo), hi)))


def start_new_task(state: EwcState, config: EwcConfig) -> EwcState:
    """Remember the running task (its Fisher and current weights, importance 1), dropping
    the oldest past max_tasks; reset Fisher, mean, var and samples; raise lambda."""
    validate_state(state, config)
    n = config.param_count
    memory = TaskMemory(
        task_id=state.task_id,
        fisher=state.fisher.astype(np.float32, copy=True),
        optimal_weights=state.weights.astype(np.float32, copy=True),
        importance=1.0,
    )
    tasks = (*state.tasks, memory)[-config.max_tasks :]
    return EwcState(
        fisher=np.zeros(n, dtype=np.float32),
        weights=state.weights.astype(np.float32, copy=True),
        grad_mean=np.zeros(n, dtype=np.float32),
        grad_var=np.ones(n, dtype=np.float32),
        samples_seen=0,
        task_id=state.task_id + 1,
        lambda_=task_lambda(len(tasks), config),
        tasks=tasks,
    )


def anchor_terms(state: EwcState, config: EwcConfig) -> tuple[np.ndarray, np.ndarray]:
    """The anchored penalty lambda / 2 * sum_t importance_t * F_t * (w - w*_t)^2 of the
    remembered tasks (Kirkpatrick et al. 2017; online form, Schwarz et al. 2018), as
    the two arrays a proximal step needs: pull = lambda * sum_t importance_t * F_t * w*_t
    and weight = lambda * sum_t importance_t * F_t (float64). Its gradient at w is
    weight * w - pull: it pulls w back toward each task's optimum, hardest where that
    task's Fisher is largest. The running task's own Fisher is not in it, so the task
    being learned is never damped. Zeros with no remembered task."""
    validate_state(state, config)
    n = config.param_count
    pull = np.zeros(n, dtype=np.float64)
    weight = np.zeros(n, dtype=np.float64)
    lam = float(np.float32(state.lambda_))
    for task in state.tasks:
        f = task.fisher.astype(np.float64) * float(np.float32(task.importance))
        weight += f
        pull += f * task.optimal_weights.astype(np.float64)
    return lam * pull, lam * weight


def with_weights(state: EwcState, w: np.ndarray) -> EwcState:
    """The state with its current weights set to (a copy of) w, which must have as many
    entries as state.weights; call after each LoRA update so the next task snapshot
    remembers where the task ended."""
    w = _check_vector(w, int(np.shape(state.weights)[0]), "weights")
    return dataclasses.replace(state, weights=w.astype(np.float32, copy=True))


def ewc_step(
    state: EwcState, signal: np.ndarray, fisher_sample: np.ndarray, config: EwcConfig
) -> tuple[EwcState, bool]:
    """One background cycle's EWC++ bookkeeping: test `signal` (this cycle's raw
    per-parameter drive, in RMS units) for a task boundary against the running task's
    statistics; on a boundary, remember the running task (its Fisher and the weights it
    ended at become an anchor) and start a new one; then fold `fisher_sample` (the
    cycle's curvature) into the Fisher and `signal` into the Welford statistics.
    The caller then takes a proximal step with `anchor_terms` of the returned state.
    Returns (new state, boundary detected)."""
    boundary = detect_task_boundary(state, signal, config)
    if boundary:
        state = start_new_task(state, config)
    state = update_fisher(state, signal, config, fisher_sample=fisher_sample)
    return state, boundary
