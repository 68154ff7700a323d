"""The learning math of SONA, in numpy only: no database, no I/O.

Each module maps to one section of the reference's description
(docs/reference.md): `signal` to "Learning signal" and `micro_lora` to
"Micro-LoRA" (Loop A); `embedding`, `kmeans` and `patterns` to "Pattern
extraction"; `ewc` to "EWC++"; `base_lora` and `background` to "Base LoRA"
and Loop B's learning step, redesigned as docs/learning.md describes;
`routes` is sona_store's own (route statistics, docs/learning.md).
"""
