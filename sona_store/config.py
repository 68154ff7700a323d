"""SonaConfig: every setting of the reference's SonaConfig, its presets, and the
fixed constants of its loops (docs/reference.md#configuration-and-presets)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from sona_store.errors import ConfigError

# Where a store is when no URL is given (the library and the CLI alike).
DEFAULT_URL = "sqlite:///sona.db"
URL_ENV = "SONA_STORE_URL"

# Fixed values the reference hard-codes in its loops.
BASE_LORA_LAYERS = 12
MICRO_FLUSH_THRESHOLD = 100
MIN_TRAJECTORIES = 10
KMEANS_MAX_ITERATIONS = 100
KMEANS_CONVERGENCE = 0.001
MIN_CLUSTER_SIZE = 1
PATTERN_QUALITY_THRESHOLD = 0.05
RETENTION_WINDOW = 10_000

# The reference's presets: what each changes from the defaults above
# (docs/reference.md#configuration-and-presets has the whole table).
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "max_throughput": MappingProxyType(
            dict(
                base_lora_rank=4,
                micro_lora_lr=0.0005,
                background_interval_ms=7_200_000,
                quality_threshold=0.4,
            )
        ),
        "max_quality": MappingProxyType(
            dict(
                base_lora_rank=16,
                base_lora_lr=0.001,
                background_interval_ms=1_800_000,
                quality_threshold=0.2,
            )
        ),
        "edge_deployment": MappingProxyType(
            dict(
                micro_lora_rank=1,
                base_lora_rank=4,
                micro_lora_lr=0.001,
                ewc_lambda=1000.0,
                pattern_clusters=50,
                quality_threshold=0.5,
            )
        ),
        "batch_processing": MappingProxyType(dict(micro_lora_lr=0.001, quality_threshold=0.3)),
        "for_ephemeral": MappingProxyType(
            dict(
                base_lora_rank=4,
                ewc_lambda=1000.0,
                pattern_clusters=50,
                background_interval_ms=60_000,
                quality_threshold=0.3,
            )
        ),
        "for_coordinator": MappingProxyType(
            dict(
                base_lora_rank=16,
                micro_lora_lr=0.001,
                base_lora_lr=0.0005,
                pattern_clusters=200,
                background_interval_ms=300_000,
                quality_threshold=0.4,
            )
        ),
    }
)

# Fields earlier versions stored that no longer exist: a stored configuration holding
# them still loads, and they are dropped. trajectory_capacity was the reference's
# buffer size, past which it drops trajectories; sona_store never drops one (every
# recorded trajectory is a row), so it had no meaning here.
REMOVED_FIELDS = ("trajectory_capacity",)

# Fields that decide the shape of stored vectors: a store cannot be reopened
# with other values without corrupting what it holds.
SHAPE_FIELDS = ("hidden_dim", "embedding_dim", "micro_lora_rank", "base_lora_rank")


@dataclass(frozen=True)
class SonaConfig:
    """Settings of one store. Frozen: the values a cycle used are recorded with it."""

    hidden_dim: int = 256
    embedding_dim: int | None = None  # None: same as hidden_dim, as the reference's builder does
    micro_lora_rank: int = 2
    base_lora_rank: int = 8
    micro_lora_lr: float = 0.002
    base_lora_lr: float = 0.0001
    ewc_lambda: float = 2000.0
    pattern_clusters: int = 100
    background_interval_ms: int = 3_600_000
    # The base LoRA's line between good and bad: a pattern whose avg_quality is above
    # it pulls the adapter toward its centroid, below it pushes away (docs/learning.md).
    quality_threshold: float = 0.15
    # Loop constants, overridable for tests and benchmarks.
    min_trajectories: int = MIN_TRAJECTORIES
    pattern_quality_threshold: float = PATTERN_QUALITY_THRESHOLD
    min_cluster_size: int = MIN_CLUSTER_SIZE
    kmeans_max_iterations: int = KMEANS_MAX_ITERATIONS
    kmeans_convergence: float = KMEANS_CONVERGENCE
    retention_window: int = RETENTION_WINDOW
    base_lora_layers: int = BASE_LORA_LAYERS
    micro_flush_threshold: int = MICRO_FLUSH_THRESHOLD

    @property
    def embedding_size(self) -> int:
        """`embedding_dim` as an int (it is set from hidden_dim when None)."""
        return self.embedding_dim if self.embedding_dim is not None else self.hidden_dim

    def __post_init__(self) -> None:
        if self.embedding_dim is None:
            object.__setattr__(self, "embedding_dim", self.hidden_dim)
        self._validate()

    def _validate(self) -> None:
        positive_ints = (
            "hidden_dim",
            "embedding_dim",
            "base_lora_rank",
            "pattern_clusters",
            "background_interval_ms",
            "min_trajectories",
            "min_cluster_size",
            "kmeans_max_iterations",
            "retention_window",
            "base_lora_layers",
            "micro_flush_threshold",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.micro_lora_rank not in (1, 2):
            raise ConfigError(f"micro_lora_rank must be 1 or 2, got {self.micro_lora_rank!r}")
        non_negative = (
            "micro_lora_lr",
            "base_lora_lr",
            "ewc_lambda",
            "kmeans_convergence",
            "pattern_quality_threshold",
        )
        for name in non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.quality_threshold <= 1.0:
            raise ConfigError(
                f"quality_threshold must be in [0, 1], got {self.quality_threshold!r}"
            )

    # -- presets (docs/reference.md#configuration-and-presets) -------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SonaConfig:
        """The reference's preset `name` (a key of PRESETS), with `overrides`."""
        try:
            values = PRESETS[name]
        except KeyError:
            known = ", ".join(PRESETS)
            raise ConfigError(f"unknown preset {name!r}; the presets are {known}") from None
        return cls(**{**values, **overrides})

    @classmethod
    def max_throughput(cls, **overrides: Any) -> SonaConfig:
        return cls.preset("max_throughput", **overrides)

    @classmethod
    def max_quality(cls, **overrides: Any) -> SonaConfig:
        return cls.preset("max_quality", **overrides)

    @classmethod
    def edge_deployment(cls, **overrides: Any) -> SonaConfig:
        return cls.preset("edge_deployment", **overrides)

    @classmethod
    def batch_processing(cls, **overrides: Any) -> SonaConfig:
        return cls.preset("batch_processing", **overrides)

    @classmethod
    def for_ephemeral(cls, **overrides: Any) -> SonaConfig:
        return cls.preset("for_ephemeral", **overrides)

    @classmethod
    def for_coordinator(cls, **overrides: Any) -> SonaConfig:
        return cls.preset("for_coordinator", **overrides)

    # -- serialisation -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SonaConfig:
        """A configuration as stored; fields earlier versions stored and this one
        removed (REMOVED_FIELDS) are dropped, so older stores still open."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - set(REMOVED_FIELDS))
        if unknown:
            raise ConfigError(f"unknown configuration fields: {', '.join(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> SonaConfig:
        return dataclasses.replace(self, **changes)

    @property
    def base_lora_param_count(self) -> int:
        """Parameters EWC++ protects: every base-LoRA layer's `up`, flattened."""
        return self.base_lora_layers * self.base_lora_rank * self.hidden_dim

    def shape_mismatches(self, other: SonaConfig) -> list[str]:
        return [
            f"{name}: stored {getattr(other, name)}, given {getattr(self, name)}"
            for name in SHAPE_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]
