"""Many rows per INSERT with the values a chunk shares bound once (tidal.store.sqlite_bulk): the
statements it plans, and activation records stored through it and read back unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from conftest import activation
from tidal.store import SQLiteStore
from tidal.store.sqlite_bulk import ROWS_PER_INSERT, bulk_inserts, chunk_sizes, insert_sql, varying_columns

HEAD = "INSERT INTO t (id, function, ms)"


def test_a_column_shared_by_every_row_is_one_parameter_named_by_each_tuple() -> None:
    rows = [("a1", "echo", 1), ("a2", "echo", 1)]

    ((sql, parameters),) = bulk_inserts(HEAD, rows, max_parameters=999)

    assert sql == f"{HEAD} VALUES (?1, ?3, ?4), (?2, ?3, ?4)"
    assert parameters == ["a1", "a2", "echo", 1]


def test_columns_vary_when_any_row_differs_and_identical_rows_need_one_set_of_values() -> None:
    assert varying_columns([("a", 1, 0.5), ("b", 1, 0.5), ("c", 1, 0.25)]) == (0, 2)
    assert varying_columns([("a", 1), ("a", 1)]) == ()
    ((sql, parameters),) = bulk_inserts(HEAD, [("a", "echo", 1)] * 4, max_parameters=999)
    assert sql == f"{HEAD} VALUES " + ", ".join(["(?1, ?2, ?3)"] * 4)
    assert parameters == ["a", "echo", 1]


def test_chunks_never_take_more_parameters_than_sqlite_allows() -> None:
    rows = [(f"a{n}", f"fn{n % 2}", n) for n in range(20)]  # every column varies

    statements = list(bulk_inserts(HEAD, rows, max_parameters=10))

    assert [len(parameters) for _, parameters in statements] == [9] * 6 + [6]  # 3 rows of 3, then 2
    values = [parameters for _, parameters in statements]
    assert [tuple(chunk[i : i + 3]) for chunk in values for i in range(0, len(chunk), 3)] == rows


def test_a_long_batch_is_cut_into_chunks_of_rows_per_insert_and_the_rest_into_powers_of_two() -> None:
    rows = [(f"a{n}", "echo", 1) for n in range(ROWS_PER_INSERT * 2 + 5)]

    statements = list(bulk_inserts(HEAD, rows, max_parameters=32766))

    assert [len(parameters) - 2 for _, parameters in statements] == [ROWS_PER_INSERT, ROWS_PER_INSERT, 4, 1]
    assert insert_sql(HEAD, 3, 1, (0,)) == statements[-1][0]
    assert [value for _, parameters in statements for value in parameters[:-2]] == [row[0] for row in rows]
    assert chunk_sizes(300, 128) == [128, 128, 32, 8, 4]
    assert chunk_sizes(20, 3) == [3] * 6 + [2] and chunk_sizes(0, 128) == []


def test_batches_of_any_length_use_a_few_statements_that_stay_compiled() -> None:
    """Compiling a 128-row statement costs SQLite as much as storing 900 records: the folder's
    batches (a segment each, of any length) must keep reusing the same few texts."""
    texts = set()
    for length in range(1, 700):
        rows = [(f"a{n}", "echo", n % 3) for n in range(length)]
        texts.update(sql for sql, _ in bulk_inserts(HEAD, rows, max_parameters=32766))

    # 128 rows and each power of two below (8 sizes), and the one-row batch where nothing varies.
    assert len(texts) <= 9, len(texts)


def test_which_columns_vary_is_decided_once_for_the_whole_batch() -> None:
    """A column that changes only in a later chunk is bound per row in every chunk: one text."""
    rows = [(f"a{n}", "echo" if n < 200 else "other", 1) for n in range(ROWS_PER_INSERT * 2)]

    first, second = bulk_inserts(HEAD, rows, max_parameters=32766)

    assert first[0] == second[0] == insert_sql(HEAD, 3, ROWS_PER_INSERT, (0, 1))
    assert second[1][:4] == ["a128", "echo", "a129", "echo"] and second[1][-1] == 1


def test_records_that_differ_in_any_field_are_stored_and_read_back_unchanged(tmp_path: Path) -> None:
    """Rows where a field is shared for a while and then differs, across chunk edges, with SQLite's
    parameter limit lowered so that chunks are cut by it too."""
    records = []
    for n in range(400):
        record = activation(n, 1000.0 + n / 10)
        record.instance = f"echo-{n // 150}"  # the same within most chunks, not all
        record.duration_ms = 0.5 + n % 3 / 10
        if n % 97 == 0:
            record.status, record.http_status = "error", 500
            record.error_type, record.error_message = "ValueError", f"bad input {n}"
        if n >= 250:
            record.key_id, record.trigger, record.cold = "k1", "job", True
        records.append(record)
    store = SQLiteStore(tmp_path / "tidal.db")
    try:
        store._db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 200)
        store.add_activation_rows([msgspec.structs.astuple(record) for record in records])
        stored = store.activations("echo", limit=1000)
    finally:
        store.close()

    assert sorted(stored, key=lambda record: record.id) == records


def test_without_sharing_every_row_brings_all_its_values_as_plain_placeholders() -> None:
    """For PostgreSQL: psycopg's %s cannot name one value twice."""
    rows = [("a1", "echo", 1), ("a2", "echo", 1)]

    ((sql, parameters),) = bulk_inserts(HEAD, rows, max_parameters=999, share=False)

    assert sql == f"{HEAD} VALUES (?, ?, ?), (?, ?, ?)"
    assert parameters == ["a1", "echo", 1, "a2", "echo", 1]
