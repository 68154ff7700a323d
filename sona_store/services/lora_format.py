"""The names of the PEFT adapter folder `lora_io` writes and reads, apart
from `lora_io` itself so that the command line's help can show the defaults
without loading the store."""

from __future__ import annotations

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
METADATA_NAME = "sona_store.json"  # tier, version, dim...: not PEFT's to read
DEFAULT_TARGET_MODULES = ("sona_adapter",)
DEFAULT_LAYER_PREFIX = "model"
