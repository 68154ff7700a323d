"""Persistence: typed SQLAlchemy models, the engine/session helpers, the schema
(Alembic) runner, and small repository functions grouped by what they store."""
