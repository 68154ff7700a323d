"""The learning step of a background cycle (docs/reference.md#loop-b-the-background-cycle,
steps 4 to 6), redesigned
so that the base LoRA learns what it claims (docs/learning.md, "Base LoRA"):

- sign-aware: each pattern is a signed target, pulling the adapter's output toward its
  centroid when its quality is above `quality_threshold` and pushing it away below;
- bounded: the update is a proximal step toward those targets, so every `up` row stays
  a convex combination of its past, the targets (norm <= 1) and EWC++'s anchors;
- protected: EWC++ is an anchored penalty (online EWC): remembered tasks pull the
  weights back toward where they ended, weighted by their Fisher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sona_store.learning import base_lora, ewc
from sona_store.learning.base_lora import BaseLoraWeights
from sona_store.learning.ewc import EwcConfig, EwcState
from sona_store.learning.patterns import ExtractedPattern


@dataclass(frozen=True)
class LearningStep:
    lora: BaseLoraWeights
    ewc_state: EwcState
    task_boundary: bool


def ewc_config_for(param_count: int, ewc_lambda: float) -> EwcConfig:
    return EwcConfig(param_count=param_count, initial_lambda=ewc_lambda)


def quality_signs(avg_qualities: np.ndarray, threshold: float) -> np.ndarray:
    """Signed strength of each pattern in [-1, 1]: (q - t) / (1 - t) above the
    threshold t, (q - t) / t below it, so the best quality pulls with 1 and the worst
    pushes with 1 whatever t is (t = 0: nothing pushes; t = 1: nothing pulls)."""
    q = np.asarray(avg_qualities, dtype=np.float64)
    above = (q - threshold) / (1.0 - threshold) if threshold < 1 else np.zeros_like(q)
    below = (q - threshold) / threshold if threshold > 0 else np.zeros_like(q)
    return np.clip(np.where(q >= threshold, above, below), -1.0, 1.0)


def learn(
    lora: BaseLoraWeights,
    state: EwcState,
    patterns: Sequence[ExtractedPattern],
    *,
    lr: float,
    ewc_lambda: float,
    quality_threshold: float,
) -> LearningStep | None:
    """One cycle's base-LoRA update from its patterns, with EWC++. None when there is
    nothing to learn (no pattern, every pattern exactly at the threshold, or no
    channel driven): no new version is written."""
    if not patterns:
        return None
    signs = quality_signs(np.array([p.avg_quality for p in patterns]), quality_threshold)
    if not np.any(signs):
        return None
    directions = np.stack([base_lora.fit_vector(p.centroid, lora.dim) for p in patterns])
    sizes = np.array([p.cluster_size for p in patterns], dtype=np.float64)
    drive = base_lora.pattern_drive(lora, directions, signs, sizes / sizes.sum())
    if not np.any(drive.drive):
        return None
    config = ewc_config_for(lora.param_count, ewc_lambda)
    raw = drive.flat_drive()
    # EWC++'s boundary test sees the drive in RMS units: its constants (z-score 2
    # against a variance prior of 1) then mean the same whatever the embeddings' scale.
    rms = np.float32(np.sqrt(np.mean(raw.astype(np.float64) ** 2)))
    curvature = drive.flat_curvature()
    new_state, boundary = ewc.ewc_step(state, raw / rms, drive.flat_fisher(), config)
    pull = weight = None
    if ewc_lambda > 0:  # 0 means off: tracked (Fisher, boundaries), never applied
        pull, weight = ewc.anchor_terms(new_state, config)
    up = base_lora.proximal_step(
        base_lora.flat_params(lora), raw, curvature, lr, anchor_pull=pull, anchor_weight=weight
    )
    new_lora = base_lora.with_params(lora, up)
    new_state = ewc.with_weights(new_state, up)
    ewc.check_finite(new_state)  # BaseLoraWeights checks the adapter itself
    return LearningStep(lora=new_lora, ewc_state=new_state, task_boundary=boundary)
