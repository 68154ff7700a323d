"""Building one trajectory while a request is served, as the reference's
engine does: begin, add steps, end with a quality score."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sona_store.config import SonaConfig
from sona_store.services.validation import CheckedStep, Recordable, checked_step, live_trajectory


class TrajectoryBuilder:
    """Collects one trajectory in memory; nothing is written until the store
    ends it. Latency is measured from begin to end, as the reference does.

    A store's builder (`SonaStore.begin_trajectory`) converts each step when
    it is added, so ending a trajectory on a router's request path has only
    its quality left to check; a step's values are read when it is added.
    Anything irregular is left to the full validation at the end, which
    names the problem."""

    def __init__(self, query_embedding: Any, *, hidden_dim: int | None = None):
        self.query_embedding = query_embedding
        self.steps: list[dict[str, Any]] = []
        self.model_route: str | None = None
        self.context_ids: list[str] = []
        self.quality: float | None = None
        self._started = time.perf_counter()
        # The checked float32 query (begin_trajectory) and steps, or None.
        self._query = query_embedding if hidden_dim is not None else None
        self._hidden_dim = hidden_dim
        self._checked: list[CheckedStep | None] = []

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
        if self._hidden_dim is not None:
            self._checked.append(
                checked_step(
                    activations, step["attention_weights"], reward, layer_name, self._hidden_dim
                )
            )
        return self

    def set_route(self, model_route: str) -> TrajectoryBuilder:
        self.model_route = model_route
        return self

    def add_context(self, context_id: str) -> TrajectoryBuilder:
        self.context_ids.append(context_id)
        return self

    def checked(self, quality: float | None, config: SonaConfig) -> Recordable | None:
        """The trajectory, validated from what was checked as it was given
        (a `LiveTrajectory` for the writer); None when anything is left for
        the full validation (`to_item` then `validate_batch`)."""
        steps = self._checked
        query = self._query
        if (
            query is None
            or self.query_embedding is not query
            or not isinstance(query, np.ndarray)
            or len(steps) != len(self.steps)
            or any(step is None for step in steps)
        ):
            return None
        return live_trajectory(
            query,
            steps,  # type: ignore[arg-type]  # no None: checked above
            self.quality if quality is None else quality,
            int((time.perf_counter() - self._started) * 1e6),
            self.model_route,
            self.context_ids,
            config,
        )

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
