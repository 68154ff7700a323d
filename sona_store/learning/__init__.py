"""The learning math of SONA, in numpy only: no database, no I/O.

Each module maps to one section of the reference description (SEED.md):
`embedding` and `kmeans` and `patterns` to "Pattern extraction", `signal` and
`micro_lora` to "Loop A", `ewc` to "EWC++", `base_lora` to the base adapter.
"""
