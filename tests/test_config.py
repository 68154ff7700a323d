"""SonaConfig: the reference's defaults and presets (docs/reference.md#configuration-and-presets), loop
constants, and validation at construction."""

from __future__ import annotations

import pytest

from sona_store import ConfigError, SonaConfig
from sona_store.config import PRESETS

# The table of docs/reference.md#configuration-and-presets.
COLUMNS = (
    "micro_lora_rank",
    "base_lora_rank",
    "micro_lora_lr",
    "base_lora_lr",
    "ewc_lambda",
    "pattern_clusters",
    "background_interval_ms",
    "quality_threshold",
)
TABLE = {
    "default": (2, 8, 0.002, 0.0001, 2000, 100, 3600000, 0.15),
    "max_throughput": (2, 4, 0.0005, 0.0001, 2000, 100, 7200000, 0.4),
    "max_quality": (2, 16, 0.002, 0.001, 2000, 100, 1800000, 0.2),
    "edge_deployment": (1, 4, 0.001, 0.0001, 1000, 50, 3600000, 0.5),
    "batch_processing": (2, 8, 0.001, 0.0001, 2000, 100, 3600000, 0.3),
    "for_ephemeral": (2, 4, 0.002, 0.0001, 1000, 50, 60000, 0.3),
    "for_coordinator": (2, 16, 0.001, 0.0005, 2000, 200, 300000, 0.4),
}


@pytest.mark.parametrize("name", TABLE)
def test_presets_match_the_reference(name):
    config = SonaConfig() if name == "default" else getattr(SonaConfig, name)()
    assert config.hidden_dim == config.embedding_dim == 256
    for column, expected in zip(COLUMNS, TABLE[name], strict=True):
        assert getattr(config, column) == pytest.approx(expected), column


def test_each_named_preset_is_its_row_of_the_table():
    assert set(PRESETS) == set(TABLE) - {"default"}
    for name in PRESETS:
        assert getattr(SonaConfig, name)(hidden_dim=16) == SonaConfig.preset(name, hidden_dim=16)


def test_an_unknown_preset_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'fastest'.*max_throughput"):
        SonaConfig.preset("fastest")


def test_loop_constants_and_embedding_dim_default():
    config = SonaConfig(hidden_dim=64)
    assert config.embedding_dim == 64
    assert (
        config.min_trajectories,
        config.pattern_quality_threshold,
        config.min_cluster_size,
        config.kmeans_max_iterations,
        config.kmeans_convergence,
        config.retention_window,
    ) == (10, 0.05, 1, 100, 0.001, 10000)
    assert config.base_lora_layers == 12 and config.micro_flush_threshold == 100
    assert SonaConfig(hidden_dim=64, embedding_dim=32).embedding_dim == 32
    assert SonaConfig.for_ephemeral(hidden_dim=32).hidden_dim == 32  # presets take overrides


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"hidden_dim": -8}, "hidden_dim"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"hidden_dim": 8.5}, "hidden_dim"),
        ({"hidden_dim": True}, "hidden_dim"),
        ({"micro_lora_rank": 3}, "micro_lora_rank"),
        ({"micro_lora_rank": 0}, "micro_lora_rank"),
        ({"base_lora_rank": 0}, "base_lora_rank"),
        ({"micro_lora_lr": -0.1}, "micro_lora_lr"),
        ({"base_lora_lr": float("nan")}, "base_lora_lr"),
        ({"ewc_lambda": -1}, "ewc_lambda"),
        ({"pattern_clusters": 0}, "pattern_clusters"),
        ({"quality_threshold": 1.5}, "quality_threshold"),
        ({"retention_window": 0}, "retention_window"),
    ],
)
def test_invalid_values_are_rejected(changes, field):
    with pytest.raises(ConfigError, match=field):
        SonaConfig(**changes)
    assert issubclass(ConfigError, ValueError)


def test_round_trip_and_unknown_fields():
    config = SonaConfig.max_quality(hidden_dim=32)
    assert SonaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown configuration fields: colour"):
        SonaConfig.from_dict({**config.to_dict(), "colour": "blue"})
    assert config.shape_mismatches(SonaConfig(hidden_dim=16)) == [
        "hidden_dim: stored 16, given 32",
        "embedding_dim: stored 16, given 32",
        "base_lora_rank: stored 8, given 16",
    ]
