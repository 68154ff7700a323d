"""The exported adapter loads into a model with PEFT, silently and exactly.

Runs when `peft` and `torch` are installed (`pip install -e '.[test,test-peft]'`);
skipped otherwise (CI does not install torch). The model has more layers than
the adapters, as a real one does: the micro tier adapts layer 0 only, the base
tier its first three, and every other layer must stay untouched without PEFT
warning about "missing adapter keys" or about keys of adapter_config.json it
does not know.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from sona_store import SonaConfig, SonaStore

from .helpers import make_trajectories

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

DIM = 8
MODEL_LAYERS = 12
CONFIG = SonaConfig(hidden_dim=DIM, pattern_clusters=3, base_lora_rank=2, base_lora_layers=3)


def _model() -> torch.nn.Module:
    """`model.layers.{i}.sona_adapter`: identity Linear layers, so a layer's
    output is x plus exactly the adapter's delta."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sona_adapter = nn.Linear(DIM, DIM, bias=False)
            with torch.no_grad():
                self.sona_adapter.weight.copy_(torch.eye(DIM))

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(Block() for _ in range(MODEL_LAYERS))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Inner()

    return Model()


def _load_silently(path: str, caplog: pytest.LogCaptureFixture) -> torch.nn.Module:
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(_model(), path)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "adapter" in m.lower() or "LoraConfig" in m], messages
    return model


def _layer(model: torch.nn.Module, i: int) -> torch.nn.Module:
    return model.base_model.model.model.layers[i].sona_adapter


@pytest.fixture
def learned(db_url: str) -> SonaStore:
    store = SonaStore(db_url, CONFIG)
    store.record_trajectories(make_trajectories(12, DIM, seed=1))
    store.run_cycle(force=True)
    store.flush()
    yield store
    store.close()


def test_micro_export_loads_without_warnings_and_adapts_layer_0_only(learned, tmp_path, caplog):
    out = learned.export_lora(tmp_path / "micro", tier="micro")
    model = _load_silently(str(out), caplog)
    x = np.linspace(-1, 1, DIM).astype(np.float32)
    with torch.no_grad():
        adapted = _layer(model, 0)(torch.from_numpy(x)).numpy()
        untouched = [_layer(model, i)(torch.from_numpy(x)).numpy() for i in range(1, 12)]
    expected = learned.apply_micro_lora(x)
    assert not np.array_equal(expected, x)  # the micro-LoRA has learned something
    assert np.allclose(adapted, expected, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(y, x) for y in untouched)


def test_base_export_loads_without_warnings_and_matches_the_store(learned, tmp_path, caplog):
    out = learned.export_lora(tmp_path / "base", tier="base")
    model = _load_silently(str(out), caplog)
    x = np.linspace(-1, 1, DIM).astype(np.float32)
    with torch.no_grad():
        outputs = [_layer(model, i)(torch.from_numpy(x)).numpy() for i in range(MODEL_LAYERS)]
    for i in range(CONFIG.base_lora_layers):
        assert np.allclose(outputs[i], learned.apply_base_lora(i, x), rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(y, x) for y in outputs[CONFIG.base_lora_layers :])
