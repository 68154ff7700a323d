"""Reference oracles: plain, one-thing-at-a-time transcriptions of what the
reference computes (docs/reference.md), which the product's vectorised and
persisted paths are tested against. The product never calls them.

- `micro_lora`: the reference's instant loop in memory (`InstantLoop`), its
  accumulator (`MicroAccumulator`) and its forward pass with sequential sums
  (`apply`), for the golden micro-LoRA cases and the fast paths' parity.
- `ewc`: `regularization_loss` and `consolidate_all_tasks`, EWC++ operations
  of the reference that no loop of sona_store runs.
- `base_lora`: the adapter as one dense matrix a layer (`merged_delta`), to
  check the low-rank forward pass against.
"""
