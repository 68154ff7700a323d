"""The base LoRA as dense matrices, to check the low-rank forward pass
against (docs/learning.md, "Base LoRA")."""

from __future__ import annotations

import numpy as np

from sona_store.learning.base_lora import BaseLoraWeights


def merged_delta(weights: BaseLoraWeights, layer_idx: int) -> np.ndarray:
    """The dense (dim, dim) matrix W = scale * up[l]^T down[l], so that
    forward(x) == x + W x."""
    if not 0 <= layer_idx < weights.layers:
        raise IndexError(f"layer {layer_idx} out of range 0..{weights.layers - 1}")
    w = np.float32(weights.scale) * (weights.up[layer_idx].T @ weights.down[layer_idx])
    out: np.ndarray = w.astype(np.float32)
    return out
