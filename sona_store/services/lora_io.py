"""LoRA export and import in the layout the PEFT library reads, so a learned
adapter can leave the store (to be merged into a model) and an adapter trained
elsewhere can come in as an audited, rollbackable version.

Mapping (one PEFT "layer" per store layer i; `<module>` repeats for every name
in `target_modules`, each a copy of the same tensors):

    base_model.model.<prefix>.layers.{i}.<module>.lora_A.weight  (r, dim)  = down[i]
    base_model.model.<prefix>.layers.{i}.<module>.lora_B.weight  (dim, r)  = up[i].T

The store's forward is `x + scale * up^T (down x)`; PEFT's is
`x + (lora_alpha / r) * B (A x)`, so A = down, B = up^T and:

- base tier: `lora_alpha` = the version's alpha (scale = alpha / rank in both);
- micro tier (one layer): the micro-LoRA's scale is 1/sqrt(rank), so
  `lora_alpha` = sqrt(rank), which makes `lora_alpha / r` that same scale.

Tensors are float32 and copied bit for bit (a transpose is exact), so an
export imported again gives the same arrays. `adapter_config.json` carries
PEFT's fields only (PEFT warns about any key it does not know, so sona_store's
metadata, tier, version, dim, layers..., is `sona_store.json` beside it), with
`layers_to_transform` naming the exported layers. See docs/lora_export.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from sona_store.config import SonaConfig
from sona_store.db import state
from sona_store.db.engine import transaction
from sona_store.db.models import LoraVersion
from sona_store.db.types import utcnow
from sona_store.enums import LoraTier
from sona_store.errors import (
    AdapterError,
    FileAccessError,
    LoraVersionNotFoundError,
    MissingExtraError,
)
from sona_store.files import private_dir, write_private
from sona_store.services.head import lock_head, move_head
from sona_store.services.lora_format import (
    CONFIG_NAME,
    DEFAULT_LAYER_PREFIX,
    DEFAULT_TARGET_MODULES,
    METADATA_NAME,
    WEIGHTS_NAME,
)

FORMAT_VERSION = 1

_KEY = re.compile(
    r"^base_model\.model\.(?P<prefix>.+?)\.layers\.(?P<layer>\d+)\."
    r"(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$"
)
_HEAD_POINTER: dict[str, str] = {
    LoraTier.BASE: "base_lora_version_id",
    LoraTier.MICRO: "micro_lora_version_id",
}

# Limits checked before an adapter is read (its size follows from the store's
# configuration, so a hostile file is refused before it costs memory).
MAX_CONFIG_BYTES = 1 << 20  # adapter_config.json
MAX_TARGET_MODULES = 64
HEADER_BYTES_PER_TENSOR = 512  # a safetensors header entry is ~150 bytes
HEADER_BYTES_BASE = 64 * 1024  # plus the __metadata__ section
# What a version may make current: its scale (lora_alpha / r) and each layer's
# gain, scale * ||up||_F * ||down||_F, which bounds |delta| / |x|. Learned
# adapters stay far below both (their gain is well under 1).
MAX_LORA_SCALE = 1e3
MAX_LORA_GAIN = 1e3


def _safetensors_numpy() -> Any:
    try:
        import safetensors.numpy as st
    except ImportError as exc:  # an optional extra
        raise MissingExtraError(
            "LoRA export/import needs the safetensors package: pip install 'sona-store[export]'"
        ) from exc
    return st


def _check_tier(tier: str) -> str:
    try:
        return LoraTier(tier)
    except ValueError:
        raise AdapterError(f"tier must be one of {', '.join(LoraTier)}, got {tier!r}") from None


def _peft_alpha(tier: str, rank: int, alpha: float) -> float | int:
    """The `lora_alpha` that makes PEFT's lora_alpha / r equal the store's scale."""
    value = math.sqrt(rank) if tier == LoraTier.MICRO else float(alpha)
    return int(value) if value.is_integer() else value


def _scale(tier: str, rank: int, alpha: float) -> float:
    """The scale a stored version serves with (alpha / rank; the micro tier's
    is fixed at 1/sqrt(rank))."""
    return _peft_alpha(tier, rank, alpha) / rank


def tensor_name(prefix: str, layer: int, module: str, ab: str) -> str:
    return f"base_model.model.{prefix}.layers.{layer}.{module}.lora_{ab}.weight"


# -- export -----------------------------------------------------------------------


def export_lora(
    engine: Engine,
    out_dir: str | os.PathLike[str],
    version: int | None = None,
    tier: str | None = None,
    target_modules: list[str] | tuple[str, ...] | None = None,
    *,
    layer_prefix: str = DEFAULT_LAYER_PREFIX,
) -> Path:
    """Write `adapter_model.safetensors` and `adapter_config.json` for a LoRA
    version (None: the current one of `tier`) into `out_dir`; returns out_dir.
    `tier` None means the version's own tier, or base when no version is given."""
    st = _safetensors_numpy()
    modules = list(target_modules or DEFAULT_TARGET_MODULES)
    if not modules or any(not m or not re.fullmatch(r"[\w.]+", m) for m in modules):
        raise AdapterError(f"target modules must be non-empty names like q_proj, got {modules}")
    if len(set(modules)) != len(modules):
        raise AdapterError(f"target modules repeat a name: {modules}")
    if not re.fullmatch(r"[\w.]+", layer_prefix):
        raise AdapterError(f"layer prefix must be a dotted name, got {layer_prefix!r}")
    with transaction(engine) as session:
        if version is None:
            head = state.get_head(session)
            version = getattr(head, _HEAD_POINTER[_check_tier(tier or LoraTier.BASE)])
            tier = None  # the head's version of that tier is of that tier
        arrays = state.load_lora(session, version)
        if tier is not None and _check_tier(tier) != arrays.tier:
            raise AdapterError(f"LoRA version {version} is a {arrays.tier} version, not {tier}")
    layers, rank, dim = arrays.up.shape
    tensors: dict[str, np.ndarray] = {}
    for i in range(layers):
        a = np.ascontiguousarray(arrays.down[i], dtype=np.float32)
        b = np.ascontiguousarray(arrays.up[i].T, dtype=np.float32)
        for module in modules:
            tensors[tensor_name(layer_prefix, i, module, "A")] = a
            tensors[tensor_name(layer_prefix, i, module, "B")] = b
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": _peft_alpha(arrays.tier, rank, arrays.alpha),
        "target_modules": modules,
        # Only the exported layers: a model with more of them (the one-layer
        # micro tier on a 12-layer model) loads without "missing adapter keys".
        "layers_to_transform": list(range(layers)),
        "layers_pattern": "layers",
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
    }
    # sona_store's own metadata lives beside the PEFT files, not in
    # adapter_config.json: PEFT warns about every key it does not know.
    metadata = {
        "format_version": FORMAT_VERSION,
        "tier": arrays.tier,
        "version_id": arrays.version_id,
        "parent_version_id": arrays.parent_id,
        "source": arrays.source,
        "dim": dim,
        "layers": layers,
        "rank": rank,
        "alpha": arrays.alpha,
        "scale": _peft_alpha(arrays.tier, rank, arrays.alpha) / rank,
        "layer_prefix": layer_prefix,
        "exported_at": utcnow().isoformat(),
    }
    out = private_dir(out_dir)
    header = {
        "format": "pt",
        "sona_store_tier": arrays.tier,
        "sona_store_version_id": str(arrays.version_id),
    }
    write_private(out / WEIGHTS_NAME, lambda p: st.save_file(tensors, p, metadata=header))
    for name, data in ((CONFIG_NAME, config), (METADATA_NAME, metadata)):
        write_private(out / name, partial(_write_json, data))
    return out


def _write_json(data: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# -- reading and validating an adapter --------------------------------------------


@dataclass(frozen=True)
class ImportedLora:
    """A validated adapter, in the store's (layers, rank, dim) form."""

    tier: str
    down: np.ndarray
    up: np.ndarray
    alpha: float
    sha256: str


def read_adapter(
    in_dir: str | os.PathLike[str], *, rank: int, dim: int, layers: int, tier: str
) -> ImportedLora:
    """Read and check a PEFT LoRA directory against the expected shape; every
    problem is an AdapterError (a ValueError) that names it."""
    st = _safetensors_numpy()
    folder = Path(in_dir)
    weights_path, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for path in (weights_path, config_path):
        if not path.is_file():
            raise AdapterError(f"{path}: no such file (an adapter directory holds both files)")
    config = _read_config(config_path)
    alpha = _check_config(config, config_path, rank=rank, tier=tier)
    modules = config.get("target_modules")
    if modules is not None and (
        not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules)
    ):
        raise AdapterError(f"{config_path}: target_modules must be a list of module names")
    if modules is not None and not 0 < len(modules) <= MAX_TARGET_MODULES:
        raise AdapterError(
            f"{config_path}: target_modules must name 1 to {MAX_TARGET_MODULES} modules, "
            f"got {len(modules)}"
        )
    tensors_expected = 2 * layers * (len(modules) if modules else MAX_TARGET_MODULES)
    raw = _read_weights(weights_path, tensors_expected, tensor_bytes=4 * rank * dim)
    try:
        tensors = st.load(raw)
    except Exception as exc:  # safetensors raises its own error type
        raise AdapterError(
            f"{weights_path}: not a readable safetensors file ({_first_line(exc)})"
        ) from None
    down, up = _collect(tensors, config, weights_path, rank=rank, dim=dim, layers=layers)
    check_servable(down, up, _scale(tier, rank, alpha), f"{weights_path}:")
    return ImportedLora(tier, down, up, alpha, hashlib.sha256(raw).hexdigest())


def _read_config(path: Path) -> dict[str, Any]:
    """adapter_config.json as a dict, refusing a file too large or too deeply
    nested to be a PEFT configuration."""
    with _reading(path):
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise AdapterError(
                f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not an adapter config"
            )
        text = path.read_bytes()
    try:
        config = json.loads(text.decode("utf-8"))
    except RecursionError:
        raise AdapterError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a huge integer
        raise AdapterError(f"{path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    return config


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """An adapter file the system will not let us read is the caller's to fix:
    FileAccessError, naming it."""
    try:
        yield
    except OSError as exc:
        raise FileAccessError(f"{path}: cannot read it ({exc.strerror or exc})") from exc


def _read_weights(path: Path, tensors: int, *, tensor_bytes: int) -> bytes:
    """The safetensors file's bytes, once its size and header length fit
    `tensors` float32 tensors of `tensor_bytes` each (checked before reading)."""
    header_limit = HEADER_BYTES_BASE + HEADER_BYTES_PER_TENSOR * tensors
    size_limit = 8 + header_limit + tensors * tensor_bytes
    with _reading(path):
        size = path.stat().st_size
        if size > size_limit:
            raise AdapterError(
                f"{path}: {size} bytes is more than an adapter of this store's shape can take "
                f"({size_limit} at most)"
            )
        with path.open("rb") as file:
            raw = file.read(size_limit + 1)
    if len(raw) > size_limit:
        raise AdapterError(f"{path}: grew while being read; refusing it")
    header = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else 0
    if header > header_limit:
        raise AdapterError(
            f"{path}: not a readable safetensors file (its header claims {header} bytes; "
            f"{tensors} tensors need at most {header_limit})"
        )
    return raw


def check_servable(down: np.ndarray, up: np.ndarray, scale: float, where: str) -> None:
    """Refuse (AdapterError) weights whose output could overflow: every layer's
    gain scale * ||up||_F * ||down||_F (in float64) at most MAX_LORA_GAIN and
    the scale at most MAX_LORA_SCALE, so a version made current cannot turn
    reasonable inputs into infinities, nor can the cycles that learn from it."""
    if not (math.isfinite(scale) and 0 < scale <= MAX_LORA_SCALE):
        raise AdapterError(
            f"{where} its scale (lora_alpha / r) {scale:.6g} is not in (0, {MAX_LORA_SCALE:g}]"
        )
    layers = len(down)
    norms_down = np.linalg.norm(down.reshape(layers, -1).astype(np.float64), axis=1)
    norms_up = np.linalg.norm(up.reshape(layers, -1).astype(np.float64), axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        gains = scale * norms_down * norms_up
    bad = np.flatnonzero(~(gains <= MAX_LORA_GAIN))
    if len(bad):
        layer = int(bad[0])
        raise AdapterError(
            f"{where} layer {layer}'s gain (scale * |up| * |down|) is {gains[layer]:.3g}, above "
            f"{MAX_LORA_GAIN:g}: its output would overflow; refusing it"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_config(config: dict[str, Any], path: Path, *, rank: int, tier: str) -> float:
    """Validate the PEFT fields; returns the alpha to store."""
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type must be 'LORA', got {config.get('peft_type')!r}")
    unsupported = {
        "bias": config.get("bias", "none") != "none",
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "use_dora": bool(config.get("use_dora")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
        "modules_to_save": bool(config.get("modules_to_save")),
    }
    for name, used in unsupported.items():
        if used:
            raise AdapterError(f"{path}: {name}={config[name]!r} is not supported by the store")
    r, lora_alpha = config.get("r"), config.get("lora_alpha")
    if isinstance(r, bool) or not isinstance(r, int) or r != rank:
        raise AdapterError(f"{path}: r must be the store's {tier} rank {rank}, got {r!r}")
    if (
        isinstance(lora_alpha, bool)
        or not isinstance(lora_alpha, int | float)
        or not math.isfinite(lora_alpha)
        or lora_alpha <= 0
    ):
        raise AdapterError(f"{path}: lora_alpha must be a positive number, got {lora_alpha!r}")
    scale = lora_alpha / (math.sqrt(r) if config.get("use_rslora") else r)
    if tier == LoraTier.MICRO:
        # The micro-LoRA's scale is fixed at 1/sqrt(rank); store the alpha its
        # versions always carry (rank) rather than pretend another is honoured.
        if not math.isclose(scale, 1 / math.sqrt(rank), rel_tol=1e-6):
            raise AdapterError(
                f"{path}: a micro-LoRA's scale is 1/sqrt(rank) = {1 / math.sqrt(rank):.6g} "
                f"(lora_alpha {math.sqrt(rank):.6g}), got lora_alpha/r = {scale:.6g}"
            )
        return float(rank)
    return float(lora_alpha) if not config.get("use_rslora") else scale * r


def _collect(
    tensors: dict[str, np.ndarray],
    config: dict[str, Any],
    path: Path,
    *,
    rank: int,
    dim: int,
    layers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Tensors -> (down, up), both (layers, rank, dim)."""
    found: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    prefixes = set()
    for name, tensor in tensors.items():
        match = _KEY.match(name)
        if match is None:
            raise AdapterError(f"{path}: unexpected tensor {name!r} (not a LoRA A/B weight)")
        prefixes.add(match["prefix"])
        ab = match["ab"]
        expected = (rank, dim) if ab == "A" else (dim, rank)
        if tensor.dtype != np.float32:
            raise AdapterError(f"{path}: tensor {name!r} is {tensor.dtype}, expected float32")
        if tensor.shape != expected:
            raise AdapterError(
                f"{path}: tensor {name!r} has shape {tensor.shape}, expected {expected}"
            )
        if not np.isfinite(tensor).all():
            raise AdapterError(f"{path}: tensor {name!r} contains NaN or infinite values")
        found.setdefault((int(match["layer"]), match["module"]), {})[ab] = tensor
    if not found:
        raise AdapterError(f"{path}: holds no LoRA tensors")
    if len(prefixes) > 1:
        raise AdapterError(f"{path}: tensors use several layer prefixes: {sorted(prefixes)}")
    prefix = prefixes.pop()
    declared = config.get("target_modules")
    modules = sorted(declared) if isinstance(declared, list) else sorted({m for _, m in found})
    for i in range(layers):
        for module in modules:
            for ab in "AB":
                if ab not in found.get((i, module), {}):
                    raise AdapterError(
                        f"{path}: missing tensor {tensor_name(prefix, i, module, ab)!r}"
                    )
    extra = sorted(key for key in found if key[0] >= layers or key[1] not in modules)
    if extra:
        layer, module = extra[0]
        raise AdapterError(
            f"{path}: tensors for layer {layer} module {module!r} do not fit the store's "
            f"{layers} layer(s) and target modules {modules}"
        )
    down = np.empty((layers, rank, dim), dtype=np.float32)
    up = np.empty((layers, rank, dim), dtype=np.float32)
    for i in range(layers):
        a, b = found[(i, modules[0])]["A"], found[(i, modules[0])]["B"]
        for module in modules[1:]:
            other = found[(i, module)]
            if not (np.array_equal(other["A"], a) and np.array_equal(other["B"], b)):
                raise AdapterError(
                    f"{path}: layer {i} has different weights for {modules[0]!r} and "
                    f"{module!r}; the store keeps one adapter per layer"
                )
        down[i] = a
        up[i] = b.T
    return down, up


def _adapter_tier(in_dir: Path, tier: str | None) -> str:
    """The tier named in the adapter's metadata (`sona_store.json`, or the
    `sona_store` section of an older export's adapter_config.json), checked
    against `tier`."""
    written = None
    for path, key in ((in_dir / METADATA_NAME, None), (in_dir / CONFIG_NAME, "sona_store")):
        try:
            section: Any = _read_config(path)  # size and nesting bounded
            section = section.get(key) if key else section
            if isinstance(section, dict) and section.get("tier") is not None:
                written = section["tier"]
                break
        except (OSError, ValueError):
            pass  # read_adapter reports the adapter's own problem
    if written is not None and tier is not None and written != tier:
        raise AdapterError(f"{in_dir}: the adapter is a {written} LoRA, not {tier}")
    return _check_tier(tier or written or LoraTier.BASE)


# -- import and moving the head -------------------------------------------------------


@dataclass(frozen=True)
class LoraMove:
    """What `use_lora_version` did."""

    audit_id: int
    tier: str
    from_version_id: int
    to_version_id: int


def import_lora(
    engine: Engine,
    config: SonaConfig,
    in_dir: str | os.PathLike[str],
    reason: str,
    *,
    actor: str,
    tier: str | None = None,
) -> LoraMove:
    """Store a PEFT LoRA directory as a new version of its tier and make it
    current, audited as `import_lora`. A bad adapter raises AdapterError and
    writes nothing."""
    if not reason or not reason.strip():
        raise AdapterError("an import needs a reason, for the audit trail")
    folder = Path(in_dir)
    tier = _adapter_tier(folder, tier)
    if tier == LoraTier.BASE:
        shape = {"rank": config.base_lora_rank, "layers": config.base_lora_layers}
    else:
        shape = {"rank": config.micro_lora_rank, "layers": 1}
    adapter = read_adapter(folder, dim=config.hidden_dim, tier=tier, **shape)
    pointer = _HEAD_POINTER[tier]
    with transaction(engine, immediate=True) as session:
        head = lock_head(session, cycle_lock=tier == LoraTier.BASE)  # cycles move the base pointer
        previous = getattr(head, pointer)
        version = state.save_lora(
            session,
            tier,
            adapter.down,
            adapter.up,
            adapter.alpha,
            parent_id=previous,
            source="import",
            note=reason,
        )
        change = move_head(
            session,
            head,
            {pointer: version},
            action="import_lora",
            actor=actor,
            reason=reason,
            links_cycles=False,
            details=lambda _before, after: {
                "tier": tier,
                "from_version_id": previous,
                "to_version_id": version,
                "path": folder.resolve().name,
                "sha256": adapter.sha256,
                "head_cycle_id": after["cycle_id"],
            },
        )
        return LoraMove(change.audit_id, tier, previous, version)


def use_lora_version(engine: Engine, version_id: int, reason: str, *, actor: str) -> LoraMove:
    """Make an existing LoRA version current for its tier (undoing an import, or
    going back to any earlier version), audited as `use_lora_version`. Cycles,
    EWC++ state and patterns stay as they are."""
    if not reason or not reason.strip():
        raise AdapterError("moving the LoRA head needs a reason, for the audit trail")
    with transaction(engine, immediate=True) as session:
        row = session.get(LoraVersion, version_id)
        if row is None:
            raise LoraVersionNotFoundError(f"no LoRA version {version_id}")
        arrays = state.load_lora(session, version_id)
        check_servable(
            arrays.down,
            arrays.up,
            _scale(arrays.tier, arrays.up.shape[1], arrays.alpha),
            f"LoRA version {version_id}:",
        )
        pointer = _HEAD_POINTER[row.tier]
        head = lock_head(session, cycle_lock=row.tier == LoraTier.BASE)
        previous = getattr(head, pointer)
        if previous == version_id:
            raise AdapterError(f"LoRA version {version_id} is already the current {row.tier} LoRA")
        change = move_head(
            session,
            head,
            {pointer: version_id},
            action="use_lora_version",
            actor=actor,
            reason=reason,
            links_cycles=False,
            details=lambda _before, after: {
                "tier": row.tier,
                "from_version_id": previous,
                "to_version_id": version_id,
                "head_cycle_id": after["cycle_id"],
            },
        )
        return LoraMove(change.audit_id, row.tier, previous, version_id)


__all__ = [
    "CONFIG_NAME",
    "METADATA_NAME",
    "WEIGHTS_NAME",
    "ImportedLora",
    "LoraMove",
    "MissingExtraError",
    "export_lora",
    "import_lora",
    "read_adapter",
    "use_lora_version",
]
