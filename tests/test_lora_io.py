"""LoRA export to the PEFT layout and import back (issue: LoRA export and import):
exact names, shapes and values; a bit-exact round trip that is audited and
rollbackable; bad adapters rejected with nothing written (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from sona_store import SonaConfig, SonaStore
from sona_store.cli.main import main
from sona_store.learning.micro_lora import initial_micro_lora
from sona_store.services.lora_io import (
    CONFIG_NAME,
    METADATA_NAME,
    WEIGHTS_NAME,
)

from .helpers import make_trajectories

DIM = 8
CONFIG = SonaConfig(
    hidden_dim=DIM, pattern_clusters=3, base_lora_rank=2, base_lora_lr=0.05, base_lora_layers=3
)
PREFIX = "base_model.model.model.layers"


@pytest.fixture
def lstore(db_url: str) -> SonaStore:
    """A store whose base LoRA has learned (two cycles) and whose micro-LoRA has
    absorbed signals, so no exported tensor is trivially zero."""
    s = SonaStore(db_url, CONFIG)
    for seed in (1, 2):
        s.record_trajectories(make_trajectories(12, DIM, seed=seed))
        s.run_cycle(force=True)
    s.flush()
    yield s
    s.close()


def _counts(store: SonaStore) -> dict[str, Any]:
    with store.engine.connect() as conn:
        out = {
            t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("lora_versions", "audit_log", "vector_blobs")
        }
    out["head"] = store.head()
    return out


def _has_view(store: SonaStore, name: str) -> bool:
    return name in sa.inspect(store.engine).get_view_names()


# -- export -------------------------------------------------------------------------


def test_export_base_gives_peft_names_shapes_and_exact_values(lstore, tmp_path):
    current = lstore.lora_state()
    assert np.abs(current.up).max() > 0
    out = lstore.export_lora(tmp_path / "adapter", target_modules=["q_proj", "v_proj"])
    assert out == tmp_path / "adapter"
    tensors = load_file(str(out / WEIGHTS_NAME))
    expected = {
        f"{PREFIX}.{i}.{m}.lora_{ab}.weight"
        for i in range(3)
        for m in ("q_proj", "v_proj")
        for ab in "AB"
    }
    assert set(tensors) == expected
    for i in range(3):
        for module in ("q_proj", "v_proj"):
            a = tensors[f"{PREFIX}.{i}.{module}.lora_A.weight"]
            b = tensors[f"{PREFIX}.{i}.{module}.lora_B.weight"]
            assert a.dtype == np.float32 and b.dtype == np.float32
            assert a.shape == (2, DIM) and b.shape == (DIM, 2)
            assert np.array_equal(a, current.down[i])
            assert np.array_equal(b, current.up[i].T)
            # PEFT's delta, (lora_alpha / r) * B A x, is the store's forward.
            x = np.linspace(-1, 1, DIM).astype(np.float32)
            peft = x + np.float32(current.alpha / 2) * (b @ (a @ x))
            assert np.allclose(peft, lstore.apply_base_lora(i, x), rtol=1e-6, atol=1e-7)
    with safe_open(str(out / WEIGHTS_NAME), framework="np") as f:
        assert f.metadata()["format"] == "pt"

    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == 2
    assert config["lora_alpha"] == current.alpha == 2.0
    assert config["target_modules"] == ["q_proj", "v_proj"]
    assert config["lora_dropout"] == 0.0
    assert config["bias"] == "none"
    assert config["fan_in_fan_out"] is False
    assert config.get("task_type") is None
    # PEFT's keys only (it warns about any other); the exported layers named.
    assert "sona_store" not in config
    assert config["layers_to_transform"] == [0, 1, 2]
    assert config["layers_pattern"] == "layers"
    meta = json.loads((out / METADATA_NAME).read_text())
    assert meta["tier"] == "base"
    assert meta["version_id"] == lstore.head()["base_lora_version_id"]
    assert (meta["dim"], meta["layers"], meta["rank"]) == (DIM, 3, 2)
    assert meta["source"] == "cycle"


def test_export_default_module_an_older_version_and_the_micro_tier(lstore, tmp_path):
    initial = lstore.export_lora(tmp_path / "v1", version=1)
    tensors = load_file(str(initial / WEIGHTS_NAME))
    assert set(tensors) == {
        f"{PREFIX}.{i}.sona_adapter.lora_{ab}.weight" for i in range(3) for ab in "AB"
    }
    assert not tensors[f"{PREFIX}.0.sona_adapter.lora_B.weight"].any()  # initial up is zero
    assert json.loads((initial / METADATA_NAME).read_text())["version_id"] == 1

    micro = lstore.lora_state(tier="micro")
    assert np.abs(micro.up).max() > 0
    out = lstore.export_lora(tmp_path / "micro", tier="micro")
    tensors = load_file(str(out / WEIGHTS_NAME))
    assert set(tensors) == {
        f"{PREFIX}.0.sona_adapter.lora_A.weight",
        f"{PREFIX}.0.sona_adapter.lora_B.weight",
    }
    assert np.array_equal(tensors[f"{PREFIX}.0.sona_adapter.lora_A.weight"], micro.down[0])
    assert np.array_equal(tensors[f"{PREFIX}.0.sona_adapter.lora_B.weight"], micro.up[0].T)
    config = json.loads((out / CONFIG_NAME).read_text())
    rank = CONFIG.micro_lora_rank
    # alpha / r must be the micro-LoRA's 1/sqrt(rank), not the usual alpha/rank.
    assert config["lora_alpha"] == math.sqrt(rank)
    scale = initial_micro_lora(rank, DIM).scale
    assert math.isclose(config["lora_alpha"] / config["r"], float(scale), rel_tol=1e-7)
    assert config["layers_to_transform"] == [0]  # one layer: the others are not adapted
    meta = json.loads((out / METADATA_NAME).read_text())
    assert meta["tier"] == "micro" and meta["layers"] == 1

    with pytest.raises(ValueError, match="is a base version, not micro"):
        lstore.export_lora(tmp_path / "x", version=1, tier="micro")
    with pytest.raises(LookupError, match="no LoRA version 999"):
        lstore.export_lora(tmp_path / "x", version=999)
    with pytest.raises(ValueError, match="target modules"):
        lstore.export_lora(tmp_path / "x", target_modules=["a b"])


# -- import ---------------------------------------------------------------------------


def test_import_of_an_export_is_bit_exact_current_and_audited(db_url, tmp_path):
    store = SonaStore(db_url, CONFIG)  # the default 0.5 s head cache: invalidation matters
    try:
        for seed in (1, 2):
            store.record_trajectories(make_trajectories(12, DIM, seed=seed))
            store.run_cycle(force=True)
        exported = store.lora_state()
        store.export_lora(tmp_path / "a")
        store.record_trajectories(make_trajectories(12, DIM, seed=3))
        store.run_cycle(force=True)
        before = store.head()["base_lora_version_id"]
        probe = np.linspace(-1, 1, DIM).astype(np.float32)
        learned_output = store.apply_base_lora(0, probe)  # fills the cache

        version = store.import_lora(
            tmp_path / "a", "known-good adapter", actor="tester"
        ).to_version_id

        assert store.head()["base_lora_version_id"] == version
        imported = store.lora_state(version)
        assert np.array_equal(imported.down, exported.down)
        assert np.array_equal(imported.up, exported.up)
        assert imported.down.tobytes() == exported.down.tobytes()
        assert imported.up.tobytes() == exported.up.tobytes()
        assert imported.alpha == exported.alpha
        assert (imported.tier, imported.source, imported.parent_id) == ("base", "import", before)
        # The in-process cache was dropped: the forward pass uses the import at once.
        now = store.apply_base_lora(0, probe)
        assert not np.array_equal(now, learned_output)
        with store.engine.connect() as conn:
            note = conn.execute(
                sa.text("SELECT note FROM lora_versions WHERE id = :v"), {"v": version}
            ).scalar_one()
        assert note == "known-good adapter"

        event = store.audit_log(limit=1)[0]
        assert event["action"] == "import_lora" and event["actor"] == "tester"
        assert event["reason"] == "known-good adapter"
        assert event["details"]["tier"] == "base"
        assert event["details"]["from_version_id"] == before
        assert event["details"]["to_version_id"] == version
        assert event["details"]["path"] == "a"
        with store.engine.connect() as conn:
            actions = conn.execute(sa.text("SELECT action FROM audit_log")).scalars().all()
        assert actions == ["import_lora"]
        if _has_view(store, "cycle_audit"):
            with store.engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT * FROM cycle_audit WHERE event = 'import_lora'")
                ).all()
            assert len(rows) == 1 and rows[0]._mapping["reason"] == "known-good adapter"

        # Re-exporting the imported version gives the same bytes of tensors.
        store.export_lora(tmp_path / "b")
        first = load_file(str(tmp_path / "a" / WEIGHTS_NAME))
        second = load_file(str(tmp_path / "b" / WEIGHTS_NAME))
        assert first.keys() == second.keys()
        assert all(first[k].tobytes() == second[k].tobytes() for k in first)
    finally:
        store.close()


def test_import_micro_and_rollbackable_by_lora_use(lstore, tmp_path):
    micro_before = lstore.lora_state(tier="micro")
    base_before = lstore.lora_state()
    lstore.export_lora(tmp_path / "micro", version=2)  # the initial micro version
    assert lstore.lora_state(2).tier == "micro"
    version = lstore.import_lora(tmp_path / "micro", "reset the instant loop").to_version_id
    head = lstore.head()
    assert head["micro_lora_version_id"] == version
    assert head["base_lora_version_id"] == base_before.version_id  # untouched
    imported = lstore.lora_state(tier="micro")
    assert np.array_equal(imported.up, lstore.lora_state(2).up)
    assert imported.alpha == lstore.lora_state(2).alpha

    move = lstore.use_lora_version(micro_before.version_id, "undo the reset")
    assert (move.tier, move.from_version_id, move.to_version_id) == (
        "micro",
        version,
        micro_before.version_id,
    )
    restored = lstore.lora_state(tier="micro")
    assert restored.up.tobytes() == micro_before.up.tobytes()
    assert restored.down.tobytes() == micro_before.down.tobytes()
    assert [e["action"] for e in lstore.audit_log()] == ["use_lora_version", "import_lora"]


def test_lora_use_restores_the_previous_base_weights_bit_for_bit(lstore, tmp_path):
    previous = lstore.lora_state()
    lstore.export_lora(tmp_path / "initial", version=1)
    version = lstore.import_lora(tmp_path / "initial", "try the untrained adapter").to_version_id
    assert not lstore.lora_state().up.any()

    move = lstore.use_lora_version(previous.version_id, "the learned one was better")
    assert move.audit_id == lstore.audit_log(limit=1)[0]["id"]
    now = lstore.lora_state()
    assert now.version_id == previous.version_id
    assert now.up.tobytes() == previous.up.tobytes()
    assert now.down.tobytes() == previous.down.tobytes()
    event = lstore.audit_log(limit=1)[0]
    assert event["action"] == "use_lora_version"
    assert event["details"] == {
        "tier": "base",
        "from_version_id": version,
        "to_version_id": previous.version_id,
        "head_cycle_id": lstore.head()["cycle_id"],
    }
    with pytest.raises(ValueError, match="already the current base LoRA"):
        lstore.use_lora_version(previous.version_id, "again")
    with pytest.raises(LookupError, match="no LoRA version 999"):
        lstore.use_lora_version(999, "nothing")


def test_a_cycle_after_an_import_learns_from_it_and_rolls_back_to_it(lstore, tmp_path):
    lstore.export_lora(tmp_path / "a", version=1)
    version = lstore.import_lora(tmp_path / "a", "start over").to_version_id
    lstore.record_trajectories(make_trajectories(12, DIM, seed=9))
    result = lstore.run_cycle(force=True)
    assert result.ewc_updated
    assert lstore.lora_state().parent_id == version
    lstore.rollback(result.cycle_id, reason="undo the cycle")
    assert lstore.head()["base_lora_version_id"] == version


# -- rejected adapters ---------------------------------------------------------------------


def _tamper(folder: Path, case: str) -> str:
    """Spoil a fresh export in one way; returns text the error must contain."""
    weights, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    tensors = load_file(str(weights))
    config = json.loads(config_path.read_text())
    key_a = f"{PREFIX}.1.sona_adapter.lora_A.weight"
    key_b = f"{PREFIX}.1.sona_adapter.lora_B.weight"
    needle = key_a
    if case == "wrong shape":
        tensors[key_a] = np.zeros((2, DIM + 1), dtype=np.float32)
        needle = "has shape (2, 9), expected (2, 8)"
    elif case == "nan":
        tensors[key_b] = tensors[key_b].copy()
        tensors[key_b][3, 1] = np.nan
        needle = f"{key_b}' contains NaN"
    elif case == "missing tensor":
        del tensors[key_b]
        needle = f"missing tensor '{key_b}'"
    elif case == "float64":
        tensors[key_a] = tensors[key_a].astype(np.float64)
        needle = "float64, expected float32"
    elif case == "extra layer":
        tensors[f"{PREFIX}.3.sona_adapter.lora_A.weight"] = tensors[key_a]
        needle = "layer 3"
    elif case == "stray tensor":
        tensors["base_model.model.lm_head.weight"] = tensors[key_a]
        needle = "unexpected tensor 'base_model.model.lm_head.weight'"
    elif case == "wrong rank":
        config["r"] = 4
        needle = "r must be the store's base rank 2, got 4"
    elif case == "not lora":
        config["peft_type"] = "IA3"
        needle = "peft_type must be 'LORA'"
    elif case == "bias":
        config["bias"] = "all"
        needle = "bias='all' is not supported"
    elif case == "bad alpha":
        config["lora_alpha"] = -1
        needle = "lora_alpha must be a positive number"
    elif case == "corrupt file":
        weights.write_bytes(b"not a safetensors file at all")
        return "not a readable safetensors file"
    elif case == "missing config":
        config_path.unlink()
        return "adapter_config.json: no such file"
    elif case == "tier mismatch":
        meta_path = config_path.parent / METADATA_NAME
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "tier": "micro"}))  # read as micro: wrong scale
        needle = "a micro-LoRA's scale is 1/sqrt(rank)"
    save_file(tensors, str(weights))
    config_path.write_text(json.dumps(config))
    return needle


TAMPERINGS = [
    "wrong shape",
    "nan",
    "missing tensor",
    "float64",
    "extra layer",
    "stray tensor",
    "wrong rank",
    "not lora",
    "bias",
    "bad alpha",
    "corrupt file",
    "missing config",
    "tier mismatch",
]


def test_a_tampered_adapter_raises_naming_the_problem_and_writes_nothing(lstore, tmp_path):
    before = _counts(lstore)
    for case in TAMPERINGS:
        folder = lstore.export_lora(tmp_path / case.replace(" ", "_"))
        needle = _tamper(folder, case)
        with pytest.raises(ValueError) as info:
            lstore.import_lora(folder, f"tampered: {case}")
        assert needle in str(info.value), (case, str(info.value))
        assert _counts(lstore) == before, case


def test_micro_import_checks_the_scale_and_the_reason_is_required(lstore, tmp_path):
    before = _counts(lstore)
    folder = lstore.export_lora(tmp_path / "micro", tier="micro")
    with pytest.raises(ValueError, match="needs a reason"):
        lstore.import_lora(folder, "  ")
    with pytest.raises(ValueError, match="the adapter is a micro LoRA, not base"):
        lstore.import_lora(folder, "wrong tier", tier="base")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["lora_alpha"] = 2  # alpha/r = 1, but the micro scale is 1/sqrt(2)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"scale is 1/sqrt\(rank\)"):
        lstore.import_lora(folder, "wrong scale")
    assert _counts(lstore) == before


def test_a_plain_peft_adapter_without_store_metadata_imports(lstore, tmp_path):
    """An adapter trained elsewhere: other prefix and module, no sona_store section."""
    rng = np.random.default_rng(7)
    folder = tmp_path / "peft"
    folder.mkdir()
    down = rng.standard_normal((3, 2, DIM)).astype(np.float32)
    up = rng.standard_normal((3, 2, DIM)).astype(np.float32)
    save_file(
        {
            f"base_model.model.transformer.layers.{i}.mlp.lora_{ab}.weight": (
                down[i] if ab == "A" else np.ascontiguousarray(up[i].T)
            )
            for i in range(3)
            for ab in "AB"
        },
        str(folder / WEIGHTS_NAME),
    )
    (folder / CONFIG_NAME).write_text(
        json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 16, "target_modules": ["mlp"]})
    )
    version = lstore.import_lora(folder, "adapter from a training run").to_version_id
    stored = lstore.lora_state(version)
    assert np.array_equal(stored.down, down) and np.array_equal(stored.up, up)
    assert stored.alpha == 16.0


# -- command line ----------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_export_import_and_lora_use(lstore, tmp_path, capsys):
    url = lstore.url
    previous = lstore.lora_state()
    code, out, err = _run(
        capsys,
        "--url",
        url,
        "export-lora",
        str(tmp_path / "e"),
        "--version",
        "1",
        "--target-modules",
        "q_proj,k_proj",
    )
    assert code == 0, err
    assert "exported base LoRA version 1" in out
    config = json.loads((tmp_path / "e" / CONFIG_NAME).read_text())
    assert config["target_modules"] == ["q_proj", "k_proj"]

    code, out, err = _run(
        capsys,
        "--url",
        url,
        "--actor",
        "ops",
        "import-lora",
        str(tmp_path / "e"),
        "--reason",
        "cli import",
    )
    assert code == 0, err
    version = lstore.head()["base_lora_version_id"]
    assert f"imported base LoRA as version {version} (was {previous.version_id})" in out
    assert lstore.audit_log(limit=1)[0]["actor"] == "ops"

    code, out, err = _run(
        capsys, "--url", url, "lora-use", str(previous.version_id), "--reason", "back"
    )
    assert code == 0, err
    assert f"base LoRA is now version {previous.version_id} (was {version}" in out
    assert lstore.lora_state().up.tobytes() == previous.up.tobytes()

    code, out, err = _run(
        capsys, "--url", url, "export-lora", str(tmp_path / "m"), "--tier", "micro"
    )
    assert code == 0 and "exported micro LoRA" in out


def test_cli_errors_are_one_line(lstore, tmp_path, capsys):
    url = lstore.url
    folder = lstore.export_lora(tmp_path / "bad")
    _tamper(folder, "nan")
    for args, needle in (
        (["import-lora", str(folder), "--reason", "x"], "contains NaN"),
        (["import-lora", str(tmp_path / "nowhere"), "--reason", "x"], "no such file"),
        (["lora-use", "999", "--reason", "x"], "no LoRA version 999"),
        (["export-lora", str(tmp_path / "o"), "--version", "999"], "no LoRA version 999"),
    ):
        code, _, err = _run(capsys, "--url", url, *args)
        assert code == 1, err
        assert err.startswith("sona-store: error: ") and err.count("\n") == 1, err
        assert needle in err, (needle, err)


def test_an_older_export_with_its_metadata_in_adapter_config_imports_as_its_tier(lstore, tmp_path):
    """Exports before sona_store.json kept the metadata in a `sona_store`
    section of adapter_config.json: its tier is still honoured."""
    out = lstore.export_lora(tmp_path / "old", tier="micro")
    meta = json.loads((out / METADATA_NAME).read_text())
    (out / METADATA_NAME).unlink()
    config = json.loads((out / CONFIG_NAME).read_text())
    (out / CONFIG_NAME).write_text(json.dumps({**config, "sona_store": meta}))
    before = lstore.head()
    version = lstore.import_lora(out, reason="an older export").to_version_id
    after = lstore.head()
    assert after["micro_lora_version_id"] == version != before["micro_lora_version_id"]
    assert after["base_lora_version_id"] == before["base_lora_version_id"]
