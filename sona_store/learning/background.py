"""The learning step of a background cycle (SEED.md Loop B, steps 4 to 6), with
the reference's defects 2 and 3 fixed: the pattern gradient drives a Hebbian
update of every base-LoRA layer's `up`, and EWC++ sees exactly those
parameters (see docs/learning.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sona_store.learning import base_lora, ewc
from sona_store.learning.base_lora import BaseLoraWeights
from sona_store.learning.ewc import EwcConfig, EwcState


@dataclass(frozen=True)
class LearningStep:
    lora: BaseLoraWeights
    ewc_state: EwcState
    task_boundary: bool


def ewc_config_for(param_count: int, ewc_lambda: float) -> EwcConfig:
    return EwcConfig(param_count=param_count, initial_lambda=ewc_lambda)


def learn(
    lora: BaseLoraWeights,
    state: EwcState,
    pattern_gradient: np.ndarray,
    *,
    lr: float,
    ewc_lambda: float,
) -> LearningStep | None:
    """Constrain the per-parameter gradient with EWC++, update the adapter, and
    remember the new weights in the EWC++ state. None when the gradient is zero
    (no pattern passed the quality threshold): nothing to learn, no new version."""
    g = base_lora.fit_vector(pattern_gradient, lora.dim)
    if not np.any(g):
        return None
    config = ewc_config_for(lora.param_count, ewc_lambda)
    raw = base_lora.hebbian_gradient(lora, g)
    # EWC++ sees the gradient in RMS units: its fixed constants (boundary
    # z-score 2, variance prior 1, lambda 2000) then mean the same whatever the
    # scale of the embeddings; the step applied keeps the gradient's own scale.
    rms = np.float32(np.sqrt(np.mean(raw.astype(np.float64) ** 2)))
    new_state, constrained_units, boundary = ewc.ewc_step(state, raw / rms, config)
    constrained = constrained_units * rms
    if ewc_lambda == 0:
        # EWC++ off: the state is still tracked (Fisher, boundaries), but the
        # update is not constrained (after a boundary the reference's lambda
        # would otherwise be clamped up to min_lambda).
        constrained = raw
    new_lora = base_lora.apply_update(lora, constrained, lr)
    new_state = ewc.with_weights(new_state, base_lora.flat_params(new_lora))
    return LearningStep(lora=new_lora, ewc_state=new_state, task_boundary=boundary)
