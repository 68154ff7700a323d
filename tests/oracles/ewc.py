"""EWC++ operations of the reference that no loop of sona_store runs
(docs/reference.md, "EWC++"): the penalty's value and the consolidation of
the task ring. The tests check them by hand, and against the anchored
penalty the base LoRA's proximal step does use (`anchor_terms`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from sona_store.learning.ewc import EwcConfig, EwcState, TaskMemory, validate_state, with_weights


def regularization_loss(state: EwcState, w: np.ndarray, config: EwcConfig) -> float:
    """lambda / 2 * sum over tasks and parameters of importance * F * (w - w*)^2: how far
    w has drifted from what earlier tasks needed. 0 with no remembered task."""
    validate_state(state, config)
    w = with_weights(state, w).weights  # the same length and finiteness checks
    if not state.tasks:
        return 0.0
    fisher = np.stack([t.fisher for t in state.tasks])
    optimal = np.stack([t.optimal_weights for t in state.tasks])
    importance = np.array([t.importance for t in state.tasks], dtype=np.float32)[:, None]
    diff = w[None, :] - optimal
    total = np.sum(importance * fisher * diff * diff, dtype=np.float64)
    return float(np.float32(state.lambda_) * np.float32(total) / np.float32(2.0))


def consolidate_all_tasks(state: EwcState, config: EwcConfig) -> EwcState:
    """Merge the task ring into one task, as the reference does: its Fisher is the
    importance-weighted mean, its importance the sum, its weights the current ones and
    its task_id 0. No remembered task: the state is returned unchanged."""
    validate_state(state, config)
    if not state.tasks:
        return state
    fisher = np.stack([t.fisher for t in state.tasks]).astype(np.float32)
    importance = np.array([t.importance for t in state.tasks], dtype=np.float32)
    total = np.float32(importance.sum(dtype=np.float32))
    merged: np.ndarray = np.sum(fisher * importance[:, None], axis=0, dtype=np.float32)
    if total > 0:
        merged = merged / total
    consolidated = TaskMemory(
        task_id=0,
        fisher=merged.astype(np.float32),
        optimal_weights=state.weights.astype(np.float32, copy=True),
        importance=float(total),
    )
    return dataclasses.replace(state, tasks=(consolidated,))
