"""Issue 15, points 9 and 10: `import-lora` checks an adapter's size against
what the store's configuration implies before reading it, refuses adapters
whose output would overflow (so does `lora-use`), and serving never returns a
non-finite value."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from sona_store import SonaStore
from sona_store.db import state
from sona_store.db.engine import transaction
from sona_store.errors import ValidationError
from sona_store.services.lora_io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
)

from .test_cli import assert_one_line_error, run
from .test_lora_io import _counts, lstore  # noqa: F401 (a fixture)

pytest.importorskip("safetensors")
from safetensors.numpy import load_file, save_file  # noqa: E402


def _exported(store: SonaStore, folder: Path, tier: str = "base") -> Path:
    return store.export_lora(folder, tier=tier)


def _refused(store: SonaStore, folder: Path, *needles: str, capsys=None) -> None:
    """The import raises a ValueError naming the problem, writes nothing, and
    the CLI prints it as one line."""
    before = _counts(store)
    with pytest.raises(ValueError) as info:
        store.import_lora(folder, "hostile")
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    assert _counts(store) == before
    if capsys is not None:
        code, _, err = run(
            capsys, "--url", store.url, "import-lora", str(folder), "--reason", "hostile"
        )
        assert_one_line_error(code, err, *needles)
        assert _counts(store) == before


# -- point 9: sizes before reading -------------------------------------------------------


def test_a_sparse_huge_weights_file_is_refused_before_reading(lstore, tmp_path, capsys):  # noqa: F811
    folder = _exported(lstore, tmp_path / "huge")
    with (folder / WEIGHTS_NAME).open("r+b") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB on paper, nothing on disk
    _refused(lstore, folder, "1073741824 bytes is more than", capsys=capsys)


def test_a_header_of_many_empty_tensors_is_refused_before_reading(lstore, tmp_path):  # noqa: F811
    folder = _exported(lstore, tmp_path / "header")
    entries = {
        f"base_model.model.model.layers.0.m{i}.lora_A.weight": {
            "dtype": "F32",
            "shape": [0, 8],
            "data_offsets": [0, 0],
        }
        for i in range(50_000)
    }
    header = json.dumps(entries).encode()
    (folder / WEIGHTS_NAME).write_bytes(struct.pack("<Q", len(header)) + header)
    _refused(lstore, folder, "is more than an adapter of this store's shape can take")


def test_a_header_length_beyond_the_tensors_is_refused(lstore, tmp_path):  # noqa: F811
    folder = _exported(lstore, tmp_path / "claim")
    raw = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(struct.pack("<Q", 10**9) + raw[8:])
    _refused(lstore, folder, "header claims 1000000000 bytes")


def test_a_deeply_nested_or_huge_config_is_one_line(lstore, tmp_path, capsys):  # noqa: F811
    folder = _exported(lstore, tmp_path / "nested")
    (folder / CONFIG_NAME).write_text("[" * 50_000 + "]" * 50_000)
    _refused(lstore, folder, "nested too deeply", capsys=capsys)
    (folder / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "pad": "x" * (2 << 20)}))
    _refused(lstore, folder, "larger than 1048576 bytes", capsys=capsys)


def test_too_many_target_modules_are_refused(lstore, tmp_path):  # noqa: F811
    folder = _exported(lstore, tmp_path / "modules")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["target_modules"] = [f"m{i}" for i in range(65)]
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    _refused(lstore, folder, "target_modules must name 1 to 64 modules")


# -- point 10: bounded output ------------------------------------------------------------


def _scaled_weights(folder: Path, factor: float) -> None:
    path = folder / WEIGHTS_NAME
    tensors = {k: (v * np.float32(factor)).astype(np.float32) for k, v in load_file(path).items()}
    save_file(tensors, str(path))


@pytest.mark.parametrize("tier", ["base", "micro"])
def test_weights_whose_output_overflows_are_refused(lstore, tmp_path, capsys, tier):  # noqa: F811
    folder = _exported(lstore, tmp_path / tier, tier)
    _scaled_weights(folder, 1e30)
    _refused(lstore, folder, "would overflow", capsys=capsys)
    x = np.linspace(-1, 1, lstore.config.hidden_dim, dtype=np.float32)
    assert np.isfinite(lstore.apply_base_lora(0, x)).all()
    assert np.isfinite(lstore.apply_micro_lora(x)).all()


def test_an_alpha_that_overflows_is_refused(lstore, tmp_path, capsys):  # noqa: F811
    folder = _exported(lstore, tmp_path / "alpha")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["lora_alpha"] = 1e308
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    _refused(lstore, folder, "scale (lora_alpha / r)", capsys=capsys)


def test_a_bounded_adapter_still_imports(lstore, tmp_path):  # noqa: F811
    folder = _exported(lstore, tmp_path / "fine")
    _scaled_weights(folder, 3.0)
    version = lstore.import_lora(folder, "three times stronger").to_version_id
    assert lstore.head()["base_lora_version_id"] == version


def test_lora_use_refuses_a_stored_version_that_overflows(lstore):  # noqa: F811
    """A version written before these checks (here: directly) cannot be made current."""
    current = lstore.lora_state(None, "base")
    with transaction(lstore.engine) as session:
        bad = state.save_lora(
            session,
            "base",
            current.down,
            np.full_like(current.up, 1e30),
            current.alpha,
            parent_id=current.version_id,
            source="import",
        )
    before = lstore.head()
    with pytest.raises(ValueError, match="would overflow"):
        lstore.use_lora_version(bad, "try it")
    assert lstore.head() == before


def test_serving_never_returns_a_non_finite_value(lstore):  # noqa: F811
    dim = lstore.config.hidden_dim
    huge = np.full(dim, np.finfo(np.float32).max, dtype=np.float32)
    with pytest.raises(ValidationError, match="overflows float32"):
        lstore.apply_base_lora(0, huge)
    with pytest.raises(ValidationError, match="overflows float32"):
        lstore.apply_micro_lora(huge)
    with pytest.raises(ValidationError, match="overflows float32"):
        lstore.apply_micro_lora(np.stack([huge, huge]))
    large = np.full(dim, 1e36, dtype=np.float32)  # beyond the fast path's bound, finite
    assert np.isfinite(lstore.apply_micro_lora(large)).all()
    x = np.linspace(-1, 1, dim, dtype=np.float32)
    assert np.array_equal(lstore.apply_micro_lora(x), lstore.apply_micro_lora(x[None])[0])
