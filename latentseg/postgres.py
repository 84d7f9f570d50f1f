"""A PostgreSQL database made for a while and dropped after: the bench's studies and the
tests' storages each get a fresh one on a server they are given."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def scratch_database(server: str, prefix: str = "latentseg_bench_") -> Iterator[str]:
    """The URL of a fresh database (named ``prefix`` and a random suffix) on the PostgreSQL
    server that ``server`` reaches (a URL of a database there the bench may connect to, e.g.
    ``postgresql://postgres@127.0.0.1:5432/postgres``), dropped afterwards."""
    import uuid

    import sqlalchemy

    from latentseg.errors import ConfigError
    from latentseg.tracking.store import redact

    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    try:
        engine = sqlalchemy.create_engine(
            server,
            isolation_level="AUTOCOMMIT",
            poolclass=sqlalchemy.pool.NullPool,
            connect_args={"connect_timeout": 5},
        )
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # bad URL, no server, no right to create databases: say which
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--postgres {redact(server)}: cannot create a scratch database there: {reason}"
        ) from None
    try:
        yield engine.url.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
