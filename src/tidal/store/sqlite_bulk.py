"""Many rows in one SQLite INSERT, each value the rows of a batch share bound once.

The journal folder stores every activation record (tidal.metering.folder), and binding the
parameters was a third of what a row cost it: each text value is copied into SQLite on binding,
and a warm call's record repeats most of its neighbour's (function, revision, status, the empty
error and key fields). So a chunk of rows becomes one ``INSERT ... VALUES`` whose tuples name
numbered parameters: the columns that vary get one parameter per row, each column constant over
the batch gets a single parameter that every tuple names again.

    rows (id, function, ms): ("a1", "echo", 1), ("a2", "echo", 1)
    SQL:    ... VALUES (?1, ?3, ?4), (?2, ?3, ?4)
    params: ["a1", "a2", "echo", 1]

Per echo record that took the folder from 42,000 to 28,000 instructions (callgrind,
bench/metering_instructions.py).

Compiling such a statement costs SQLite about 10 million instructions at 128 rows, as much as
storing 900 records, so the SQL must come from a small set that stays in the connection's
statement cache. It depends only on the number of rows and on which columns vary: which columns
vary is decided once for the whole batch (a segment the folder stores), and a batch is cut into
chunks of ``ROWS_PER_INSERT`` rows and then, for the rest, of halving powers of two (a batch of 300:
128, 128, 32, 8, 4). Cut into 128s and whatever was left, with the varying columns decided per
chunk, folds of the 400 to 2,000 records that arrive every 200 ms under load compiled statement
after statement: 46,300 instructions a record instead of 32,400 (bench/metering_instructions.py
--folder-only).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

ROWS_PER_INSERT = 128  # more rows a statement saves little more (28.5k -> 27.8k instructions a row at 256)

Row = Sequence[Any]


def varying_columns(rows: Sequence[Row]) -> tuple[int, ...]:
    """The positions of the columns whose value is not the same in every row (in order). A tuple
    comparison stops at the first difference: a column that varies is told after a row or two."""
    return tuple(
        position for position, column in enumerate(zip(*rows, strict=True))
        if column != (column[0],) * len(column)
    )  # fmt: skip


@functools.lru_cache(maxsize=128)  # as many as sqlite3's statement cache holds
def insert_sql(head: str, width: int, rows: int, varying: tuple[int, ...]) -> str:
    """``head`` (``INSERT INTO t (a, b)``) and ``rows`` tuples of ``width`` numbered parameters:
    row ``r``'s ``k``-th varying column is ``?(r * len(varying) + k + 1)``, the ``j``-th constant
    one ``?(rows * len(varying) + j + 1)`` in every tuple. When every column varies the numbers
    follow the text, so the parameters are plain ``?`` (which PostgreSQL's translation takes)."""
    if len(varying) == width:
        return f"{head} VALUES " + ", ".join(["(" + ", ".join("?" * width) + ")"] * rows)
    constant = [position for position in range(width) if position not in varying]
    shared = {position: rows * len(varying) + index + 1 for index, position in enumerate(constant)}
    tuples = []
    for row in range(rows):
        own = iter(range(row * len(varying) + 1, (row + 1) * len(varying) + 1))
        names = [
            f"?{shared[position]}" if position in shared else f"?{next(own)}" for position in range(width)
        ]
        tuples.append("(" + ", ".join(names) + ")")
    return f"{head} VALUES " + ", ".join(tuples)


def bulk_inserts(
    head: str, rows: Sequence[Row], max_parameters: int, share: bool = True
) -> Iterator[tuple[str, list[Any]]]:
    """The statements (SQL and parameters) that insert ``rows``, all of one width, in order; none
    takes more than ``max_parameters`` (the connection's SQLITE_LIMIT_VARIABLE_NUMBER).
    ``share=False``: every row brings all of its values (for a database whose placeholders cannot
    name one value twice: psycopg's ``%s``)."""
    if not rows:
        return
    width = len(rows[0])
    if width > max_parameters:
        raise ValueError(f"rows of {width} values exceed SQLite's limit of {max_parameters} parameters")
    # A column constant over the batch is constant in each chunk of it: one split for all chunks.
    varying = varying_columns(rows) if share else tuple(range(width))
    fits = (max_parameters - (width - len(varying))) // len(varying) if varying else ROWS_PER_INSERT
    start = 0
    for size in chunk_sizes(len(rows), min(fits, ROWS_PER_INSERT)):
        chunk = rows[start : start + size]
        yield insert_sql(head, width, size, varying), parameters(chunk, varying)
        start += size


def chunk_sizes(total: int, largest: int) -> list[int]:
    """``total`` rows as chunks of ``largest``, the rest as halving powers of two (each smaller than
    ``largest``): few distinct sizes, so few distinct statements. ``chunk_sizes(300, 128)`` is
    ``[128, 128, 32, 8, 4]``."""
    sizes = [largest] * (total // largest)
    rest = total % largest
    while rest:
        size = 1 << (rest.bit_length() - 1)
        sizes.append(size)
        rest -= size
    return sizes


def parameters(chunk: Sequence[Row], varying: tuple[int, ...]) -> list[Any]:
    """The varying values row by row, then the constant ones once (the order insert_sql names)."""
    first = chunk[0]
    if len(varying) == 1:
        values = [row[varying[0]] for row in chunk]
    elif varying:
        values = list(itertools.chain.from_iterable(map(itemgetter(*varying), chunk)))
    else:
        values = []
    values.extend(first[position] for position in range(len(first)) if position not in varying)
    return values
