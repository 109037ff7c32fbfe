"""Pure pieces of the PostgreSQL store: its URL, and the SQLite table groups' SQL in PostgreSQL's dialect.

The table groups (``sqlite.py``, ``sqlite_*.py``) are written once, in SQL that both databases
mostly share; ``translate`` rewrites the few SQLite-only forms they use. Each rule below names the
statement it exists for, and the store contract tests run every statement on both databases, so a
new SQLite-only form fails a test instead of reaching a user.

``rowid`` needs no rule: the PostgreSQL schema gives each table whose statements use it a real
``rowid`` column (an identity), so ordering and batched deletes read the same on both.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_SCHEMA = "public"
SCHEMES = ("postgresql", "postgres")
# A plain identifier: it goes into `SET search_path` and `CREATE SCHEMA`, which take no parameters.
SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# `INSERT OR REPLACE INTO t`: the key a replaced row conflicts on, per table.
REPLACE_KEYS = {"activations": ("id",), "shadows": ("function",), "instance_lives": ("id",)}

# Exact SQLite forms -> their PostgreSQL equivalent (first the statement that uses each).
REWRITES = (
    # usage_sums by day: a UTC calendar day as text, 'YYYY-MM-DD' on both.
    ("date(start, 'unixepoch')", "to_char(to_timestamp(start) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
    # usage_sums: SQLite sums booleans as 0/1, PostgreSQL does not sum booleans.
    ("SUM(status != 'ok')", "SUM(CASE WHEN status != 'ok' THEN 1 ELSE 0 END)"),
    # close_open_lives: SQLite's two-argument MAX is PostgreSQL's GREATEST.
    ("SET stopped = MAX(", "SET stopped = GREATEST("),
    # first_activity: a subquery in FROM needs an alias before PostgreSQL 16.
    ("SELECT MIN(started) FROM instance_lives)", "SELECT MIN(started) FROM instance_lives) AS firsts"),
)
# sync_spec_triggers / sync_spec_routes with nothing declared: `id NOT IN ()` keeps nothing out.
EMPTY_NOT_IN = re.compile(r"\s+AND\s+\w+\s+NOT IN \(\)")
# start_rollout reads the new rollout's id (sqlite3's ``lastrowid``): PostgreSQL returns it.
RETURNING_ID = " RETURNING id"
RETURNS_ID = re.compile(r"^\s*INSERT INTO rollouts\s*\(")
# Upserts that add to a count (rejections, shadow_skips, quota_usage): PostgreSQL wants the
# stored row's column named by its table, `count = rejections.count + excluded.count`.
INSERT_TABLE = re.compile(r"^\s*INSERT INTO (\w+)")
ADD_TO_STORED = re.compile(r"\b(\w+) = \1 \+ excluded\.\1\b", re.IGNORECASE)
INSERT_OR = re.compile(r"^\s*INSERT OR (IGNORE|REPLACE) INTO (\w+)\s*\(([^)]*)\)", re.IGNORECASE)


def parse_state_url(url: str) -> tuple[str, str]:
    """``postgresql://USER@HOST:PORT/DB?schema=NAME`` -> (the URL psycopg connects to, the schema).

    Raises ValueError with what is wrong: another scheme, no database, a schema name that is not
    a plain identifier. Other query parameters (sslmode, connect_timeout...) go to psycopg.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"--state {url}: expected a postgresql:// URL (postgresql://USER@HOST:PORT/DB)")
    if not parts.path.strip("/"):
        raise ValueError(f"--state {url}: name the database, e.g. postgresql://USER@HOST:5432/tidal")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for name, value in query if name == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"--state {url}: schema {schema!r} is not a plain name (letters, digits, _)")
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")), schema


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """One statement of the table groups, in PostgreSQL's dialect with psycopg's ``%s`` placeholders.

    >>> translate("INSERT OR IGNORE INTO functions (name, created_at) VALUES (?, ?)")
    'INSERT INTO functions (name, created_at) VALUES (%s, %s) ON CONFLICT DO NOTHING'
    """
    for sqlite_form, postgres_form in REWRITES:
        sql = sql.replace(sqlite_form, postgres_form)
    sql = EMPTY_NOT_IN.sub("", sql)
    sql = _insert_or(sql)
    table = INSERT_TABLE.match(sql)
    if table is not None:
        sql = ADD_TO_STORED.sub(rf"\1 = {table.group(1)}.\1 + excluded.\1", sql)
    if RETURNS_ID.match(sql):
        sql = sql.rstrip() + RETURNING_ID
    # No statement has `?` or `%` inside a literal; psycopg reads `%%` as one `%`.
    return sql.replace("%", "%%").replace("?", "%s")


def _insert_or(sql: str) -> str:
    match = INSERT_OR.match(sql)
    if match is None:
        return sql
    verb, table, columns = match.group(1).upper(), match.group(2), match.group(3)
    plain = f"INSERT INTO {table} ({columns})" + sql[match.end() :]
    if verb == "IGNORE":
        return plain.rstrip() + " ON CONFLICT DO NOTHING"
    keys = REPLACE_KEYS.get(table)
    if keys is None:
        raise ValueError(f"INSERT OR REPLACE INTO {table}: add its key to REPLACE_KEYS")
    names = [name.strip() for name in columns.split(",")]
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name not in keys)
    return plain.rstrip() + f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
