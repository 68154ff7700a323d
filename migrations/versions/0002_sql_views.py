"""SQL surface: the views `current_patterns`, `pattern_history` and `cycle_audit`
on both databases, and on PostgreSQL the functions `sona_vector(bytea)` (stored
vector as real[]), its inverse `sona_bytes(real[] or text)`,
`sona_vector_length(bytea)` and `sona_cosine(bytea, bytea)`.

SQLite gets the same functions from the connections sona_store opens
(sona_store/db/sqlfunctions.py), so this revision creates only its views there.
The views call no sona_* function: they work in a plain `sqlite3` shell too.

Views and tables: SQLite refuses to rename a table while a view names a table
that is missing, which is what a batch migration (copy, drop, rename) does. A
later revision that batch-alters `patterns`, `cycles`, `store_head` or
`audit_log` must drop these views first and create them again afterwards
(`drop_views()` / `create_views()` below, copied into that revision).

Revision ID: 0002_sql_views
Revises: 0001_initial
"""

from __future__ import annotations

from alembic import op

revision = "0002_sql_views"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

# Days since a timestamp, fractional; the only dialect-specific part of the views.
AGE_DAYS = {
    "sqlite": "(julianday('now') - julianday({column}))",
    "postgresql": "CAST(EXTRACT(EPOCH FROM (now() - {column})) / 86400 AS DOUBLE PRECISION)",
}


def view_definitions(dialect: str) -> dict[str, str]:
    """The SELECT of every view, in creation order."""
    age = AGE_DAYS[dialect].format(column="p.created_at")
    return {
        # The patterns served now: the head cycle's, less the pruned.
        "current_patterns": f"""
            SELECT p.id, p.cycle_id, p.cluster_size, p.total_weight, p.avg_quality,
                   p.pattern_type, p.access_count, p.last_accessed, p.created_at,
                   {age} AS age_days, p.centroid
            FROM patterns AS p
            JOIN store_head AS h ON h.cycle_id = p.cycle_id
            WHERE p.pruned_at IS NULL
        """,
        # Every pattern ever extracted, with the cycle that created it.
        "pattern_history": f"""
            SELECT p.id, p.cycle_id, c.started_at AS cycle_started_at,
                   c.status AS cycle_status, c.trigger AS cycle_trigger,
                   p.cluster_size, p.total_weight, p.avg_quality, p.pattern_type,
                   p.access_count, p.last_accessed, p.created_at, {age} AS age_days,
                   p.pruned_at, (h.id IS NOT NULL AND p.pruned_at IS NULL) AS is_current,
                   p.centroid
            FROM patterns AS p
            JOIN cycles AS c ON c.id = p.cycle_id
            LEFT JOIN store_head AS h ON h.cycle_id = p.cycle_id
        """,
        # Cycles and audit events (rollbacks, restores, LoRA imports) in one timeline.
        "cycle_audit": """
            SELECT 'cycle' AS event, c.started_at AS at, c.id AS cycle_id, c.actor,
                   c.status, c.trigger, c.trajectories_processed, c.patterns_extracted,
                   CAST(NULL AS BIGINT) AS from_cycle_id, CAST(NULL AS BIGINT) AS to_cycle_id,
                   c.reason, c.error, CAST(NULL AS BIGINT) AS audit_id,
                   CAST(NULL AS JSON) AS details
            FROM cycles AS c
            UNION ALL
            SELECT a.action, a.at, a.cycle_id, a.actor,
                   CAST(NULL AS VARCHAR(16)), CAST(NULL AS VARCHAR(16)),
                   CAST(NULL AS INTEGER), CAST(NULL AS INTEGER),
                   a.from_cycle_id, a.to_cycle_id,
                   a.reason, CAST(NULL AS TEXT), a.id, a.details
            FROM audit_log AS a
        """,
    }


# PostgreSQL: decode little-endian float32 bytes exactly. There is no int4 ->
# float4 bit cast, so each value is rebuilt from its sign, exponent and mantissa:
# (-1)^s * m * 2^k with m < 2^24 is exact in float8, and so is the cast to real.
SONA_VECTOR = """
CREATE OR REPLACE FUNCTION sona_vector(data bytea) RETURNS real[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
SELECT coalesce(
    array_agg(
        CASE
            WHEN e = 255 AND m = 0 THEN CAST(CASE WHEN s = 1 THEN '-Infinity' ELSE 'Infinity' END AS real)
            WHEN e = 255 THEN CAST('NaN' AS real)
            WHEN e = 0 THEN CAST((1 - 2 * s) * CAST(m AS float8) * (2::float8 ^ -149) AS real)
            ELSE CAST((1 - 2 * s) * CAST(m + 8388608 AS float8) * (2::float8 ^ (e - 150)) AS real)
        END
        ORDER BY i
    ),
    '{}'::real[]
)
FROM (
    SELECT i,
           b3 >> 7 AS s,
           ((b3 & 127) << 1) | (b2 >> 7) AS e,
           ((b2 & 127) << 16) | (b1 << 8) | b0 AS m
    FROM (
        SELECT i, get_byte(data, 4 * i) AS b0, get_byte(data, 4 * i + 1) AS b1,
               get_byte(data, 4 * i + 2) AS b2, get_byte(data, 4 * i + 3) AS b3
        FROM generate_series(0, length(data) / 4 - 1) AS i
    ) AS bytes
) AS fields
$$
"""

SONA_VECTOR_LENGTH = """
CREATE OR REPLACE FUNCTION sona_vector_length(data bytea) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT length(data) / 4 $$
"""

# The inverse of sona_vector: float4send gives big-endian bytes, reversed here.
# A NULL entry makes the whole result NULL (a stored vector has none).
SONA_BYTES_ARRAY = """
CREATE OR REPLACE FUNCTION sona_bytes(v real[]) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
SELECT CASE WHEN array_position(v, NULL) IS NOT NULL THEN NULL ELSE coalesce(
    string_agg(
        substring(b from 4 for 1) || substring(b from 3 for 1)
        || substring(b from 2 for 1) || substring(b from 1 for 1),
        ''::bytea ORDER BY i
    ),
    ''::bytea
) END
FROM unnest(v) WITH ORDINALITY AS u(x, i), float4send(x) AS b
$$
"""

# The same from text: a JSON array ('[0.5, -1]', as SQLite's sona_bytes takes)
# or an array literal ('{0.5,-1}').
SONA_BYTES_TEXT = """
CREATE OR REPLACE FUNCTION sona_bytes(v text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT sona_bytes(CAST(translate(v, '[]', '{}') AS real[])) $$
"""

# As sona_store/db/sqlfunctions.py: float8 arithmetic; 0 when the lengths differ
# or a norm is under 1e-8; NULL in, NULL out (STRICT).
SONA_COSINE = """
CREATE OR REPLACE FUNCTION sona_cosine(a bytea, b bytea) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
SELECT CASE
    WHEN length(a) / 4 <> length(b) / 4 THEN 0
    WHEN sqrt(xx) < 1e-8 OR sqrt(yy) < 1e-8 THEN 0
    ELSE xy / (sqrt(xx) * sqrt(yy))
END
FROM (
    SELECT coalesce(sum(x * y), 0) AS xy, coalesce(sum(x * x), 0) AS xx,
           coalesce(sum(y * y), 0) AS yy
    FROM unnest(CAST(sona_vector(a) AS float8[]), CAST(sona_vector(b) AS float8[])) AS v(x, y)
) AS sums
$$
"""

# In creation order: a SQL function's body is checked against those before it.
POSTGRESQL_FUNCTIONS = {
    "sona_vector(bytea)": SONA_VECTOR,
    "sona_vector_length(bytea)": SONA_VECTOR_LENGTH,
    "sona_bytes(real[])": SONA_BYTES_ARRAY,
    "sona_bytes(text)": SONA_BYTES_TEXT,
    "sona_cosine(bytea, bytea)": SONA_COSINE,
}


def create_views(dialect: str) -> None:
    for name, select in view_definitions(dialect).items():
        op.execute(f"CREATE VIEW {name} AS {select.strip()}")


def drop_views() -> None:
    for name in reversed(list(view_definitions("sqlite"))):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        for definition in POSTGRESQL_FUNCTIONS.values():
            op.execute(definition)
    create_views(dialect)


def downgrade() -> None:
    drop_views()
    if op.get_bind().dialect.name == "postgresql":
        for signature in reversed(list(POSTGRESQL_FUNCTIONS)):
            op.execute(f"DROP FUNCTION IF EXISTS {signature}")
