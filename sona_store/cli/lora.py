"""`export-lora`, `import-lora` and `lora-use`: adapters in and out, head moves by hand."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sona_store.cli.common import open_store
from sona_store.enums import LoraTier
from sona_store.services.lora_format import (
    DEFAULT_LAYER_PREFIX,
    DEFAULT_TARGET_MODULES,
    METADATA_NAME,
)

TIERS = [tier.value for tier in LoraTier]


def cmd_export_lora(args: argparse.Namespace) -> int:
    modules = [m.strip() for m in args.target_modules.split(",")] if args.target_modules else None
    with open_store(args) as store:
        out = store.export_lora(
            args.out_dir,
            version=args.version,
            tier=args.tier,
            target_modules=modules,
            layer_prefix=args.layer_prefix,
        )
        written = json.loads((out / METADATA_NAME).read_text(encoding="utf-8"))
    print(
        f"exported {written['tier']} LoRA version {written['version_id']} "
        f"(layers {written['layers']}, r {written['rank']}, dim {written['dim']}) to {out}"
    )
    return 0


def cmd_import_lora(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        move = store.import_lora(args.dir, args.reason, tier=args.tier)
    print(
        f"imported {move.tier} LoRA as version {move.to_version_id} "
        f"(was {move.from_version_id}); it is current (audit #{move.audit_id})"
    )
    return 0


def cmd_lora_use(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        move = store.use_lora_version(args.version, args.reason)
    print(
        f"{move.tier} LoRA is now version {move.to_version_id} "
        f"(was {move.from_version_id}; audit #{move.audit_id})"
    )
    return 0


def register_cli(subparsers: Any) -> None:
    export = subparsers.add_parser(
        "export-lora", help="write a LoRA version as a PEFT adapter (safetensors)"
    )
    export.add_argument(
        "out_dir", metavar="OUT_DIR", help="folder for the adapter files (created if missing)"
    )
    export.add_argument("--version", type=int, help="LoRA version id (default: the current one)")
    export.add_argument("--tier", choices=TIERS, help="base or micro (default: base)")
    export.add_argument(
        "--target-modules",
        help=f"comma-separated module names (default: {','.join(DEFAULT_TARGET_MODULES)})",
    )
    export.add_argument(
        "--layer-prefix",
        default=DEFAULT_LAYER_PREFIX,
        help="module path before '.layers.N' in tensor names (default: %(default)s)",
    )
    export.set_defaults(func=cmd_export_lora)

    imp = subparsers.add_parser(
        "import-lora", help="store a PEFT LoRA adapter as a new, current version (audited)"
    )
    imp.add_argument("dir", metavar="DIR", help="PEFT adapter folder (adapter_config.json ...)")
    imp.add_argument("--reason", required=True, help="why, for the audit trail")
    imp.add_argument(
        "--tier", choices=TIERS, help="default: the adapter's sona_store metadata, else base"
    )
    imp.set_defaults(func=cmd_import_lora)

    use = subparsers.add_parser(
        "lora-use", help="make an existing LoRA version current for its tier (audited)"
    )
    use.add_argument("version", type=int, metavar="VERSION", help="LoRA version id")
    use.add_argument("--reason", required=True, help="why, for the audit trail")
    use.set_defaults(func=cmd_lora_use)
