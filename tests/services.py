"""The real services some tests talk to (Redis, NATS, RabbitMQ, PostgreSQL): found running, or started here, never skipped.

Each fixture checks the server answers; if not, it starts it (``redis-server --daemonize yes``,
``nats-server -js`` in the background) when the binary exists, else installs it with apt-get, and
says so on stderr. A server that still does not answer fails the test with the reason.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tidal.store import SQLiteStore

REDIS_PORT, NATS_PORT, RABBITMQ_PORT, POSTGRES_PORT = 6379, 4222, 5672, 5432
# The machine's PostgreSQL: trust auth for 127.0.0.1, database `test` (each test makes its own schema).
POSTGRES_URL = f"postgresql://postgres@127.0.0.1:{POSTGRES_PORT}/test"


def answers(port: int, hello: bytes, expect: bytes, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
            if hello:
                connection.sendall(hello)
            return expect in connection.recv(4096)
    except OSError:
        return False


def _say(message: str) -> None:
    sys.stderr.write(f"\n[tests/services] {message}\n")


def _ensure(name: str, binary: str, package: str, start: list[str], up: Callable[[], bool]) -> None:
    if up():
        return
    if shutil.which(binary) is None:
        _say(f"{name} is not running and {binary} is missing: apt-get install -y {package}")
        subprocess.run(["apt-get", "install", "-y", package], check=False, capture_output=True)
    if shutil.which(binary) is None:
        pytest.fail(
            f"{name} is needed on 127.0.0.1 and {binary} could not be installed (apt-get install {package})"
        )
    _say(f"{name} was not running: starting `{' '.join(start)}`")
    subprocess.Popen(start, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 15
    while not up():
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not come up on 127.0.0.1 after `{' '.join(start)}`")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis on 127.0.0.1:6379 (started if missing)."""
    _ensure("Redis", "redis-server", "redis-server",
            ["redis-server", "--port", str(REDIS_PORT), "--daemonize", "yes"],
            lambda: answers(REDIS_PORT, b"PING\r\n", b"PONG"))  # fmt: skip
    yield f"redis://127.0.0.1:{REDIS_PORT}/0"


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """A real NATS server with JetStream on 127.0.0.1:4222 (started if missing)."""
    _ensure("NATS", "nats-server", "nats-server", ["nats-server", "-js", "-p", str(NATS_PORT)],
            lambda: answers(NATS_PORT, b"", b"INFO"))  # fmt: skip
    yield f"nats://127.0.0.1:{NATS_PORT}"


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A real RabbitMQ on 127.0.0.1:5672, guest/guest (started if missing)."""
    _ensure("RabbitMQ", "rabbitmq-server", "rabbitmq-server", ["rabbitmq-server"],
            lambda: answers(RABBITMQ_PORT, b"AMQP\x00\x00\x09\x01", b"\x01\x00\x00", timeout=3.0))  # fmt: skip
    yield f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}/"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL on 127.0.0.1:5432 (started if missing) with trust auth and database `test`."""
    import psycopg

    # An SSLRequest: any PostgreSQL answers it with one byte, S or N.
    _ensure("PostgreSQL", "pg_ctlcluster", "postgresql", ["service", "postgresql", "start"],
            lambda: answers(POSTGRES_PORT, b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"N") or
            answers(POSTGRES_PORT, b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"S"))  # fmt: skip
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=5).close()
    except psycopg.Error as error:
        pytest.fail(
            f"PostgreSQL answers but {POSTGRES_URL} does not open (trust auth, database test?): {error}"
        )
    yield POSTGRES_URL


@pytest.fixture
def postgres_state_url(postgres_url: str) -> Iterator[str]:
    """A ``--state`` URL naming a schema of this test's own, dropped after it."""
    yield from schema_of_its_own(postgres_url)


def schema_of_its_own(postgres_url: str) -> Iterator[str]:
    """A ``--state`` URL naming a fresh schema, dropped when the generator ends (fixtures of any scope)."""
    import psycopg

    schema = f"tidal_test_{uuid.uuid4().hex[:10]}"
    yield f"{postgres_url}?schema={schema}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


STORE_KINDS = ("sqlite", "postgres")


def open_test_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteStore]:
    """The body of a ``store`` fixture with ``params=STORE_KINDS``: the store contract tests run on
    SQLite and on PostgreSQL (PostgresStore is SQLiteStore's table groups on another connection)."""
    if request.param == "postgres":
        from tidal.store.postgres import PostgresStore

        store: SQLiteStore = PostgresStore(request.getfixturevalue("postgres_state_url"))
    else:
        store = SQLiteStore(tmp_path / "tidal.db")
    yield store
    store.close()
