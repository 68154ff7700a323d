"""Services: what the store does, each as functions over a database transaction.

Each module owns one capability (a cycle, a rollback, a quarantine, retention,
LoRA import and export, the report, input validation, the recording path).
Services use `sona_store.db` and `sona_store.learning`; they never import the
facade (`sona_store.store`) or the adapters (`cli`, `scheduler`).
"""
