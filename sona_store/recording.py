"""Building one trajectory while a request is served, as the reference's
engine does: begin, add steps, end with a quality score."""

from __future__ import annotations

import time
from typing import Any


class TrajectoryBuilder:
    """Collects one trajectory in memory; nothing is written until the store
    ends it. Latency is measured from begin to end, as the reference does."""

    def __init__(self, query_embedding: Any):
        self.query_embedding = query_embedding
        self.steps: list[dict[str, Any]] = []
        self.model_route: str | None = None
        self.context_ids: list[str] = []
        self.quality: float | None = None
        self._started = time.perf_counter()

    def add_step(
        self,
        activations: Any,
        attention_weights: Any = (),
        reward: float = 0.0,
        layer_name: str | None = None,
    ) -> TrajectoryBuilder:
        step: dict[str, Any] = {
            "activations": activations,
            "attention_weights": list(attention_weights) if attention_weights is not None else [],
            "reward": reward,
        }
        if layer_name is not None:
            step["layer_name"] = layer_name
        self.steps.append(step)
        return self

    def set_route(self, model_route: str) -> TrajectoryBuilder:
        self.model_route = model_route
        return self

    def add_context(self, context_id: str) -> TrajectoryBuilder:
        self.context_ids.append(context_id)
        return self

    def to_item(self, quality: float | None = None) -> dict[str, Any]:
        """The trajectory in the JSONL shape, with the latency so far."""
        item: dict[str, Any] = {
            "query_embedding": self.query_embedding,
            "steps": self.steps,
            "quality": self.quality if quality is None else quality,
            "latency_us": int((time.perf_counter() - self._started) * 1e6),
            "context_ids": self.context_ids,
        }
        if self.model_route is not None:
            item["model_route"] = self.model_route
        return item
