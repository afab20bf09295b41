"""Database access for the job store: SQLite (default) or PostgreSQL, one URL setting.

One SQLAlchemy engine per store (:class:`Pool`) holds a pool of connections; a
store operation borrows one for a single transaction (:meth:`Pool.write`) or a
consistent read (:meth:`Pool.read`) and gives it back. The store writes plain
SQL with named parameters (``:job_id``; a list or tuple value expands, as in
``state IN :states``), which SQLAlchemy renders for either driver. The schema
is owned by Alembic migrations (``service/migrations``), applied at start-up
on both backends, so a store made by an older version is upgraded in place.

SQLite: WAL mode, ``synchronous=FULL``, and every write transaction is
``BEGIN IMMEDIATE``, so claims serialise on the write lock instead of failing
on an upgrade from a read lock. PostgreSQL: workers on several hosts share the
jobs table, and a claim reads with ``SELECT ... FOR UPDATE SKIP LOCKED`` so two
workers never take the same job and none waits for another's lock.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import TextClause

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The execution option that marks a borrowed connection as a writer (SQLite: BEGIN IMMEDIATE).
_WRITE = "mammoseg_write"


class DatabaseError(Exception):
    """The database cannot be reached, migrated or used."""


class Row(dict[str, Any]):
    """A result row usable both as a mapping and by position (like sqlite3.Row)."""

    def __getitem__(self, key: str | int) -> Any:  # type: ignore[override]
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


class Cursor:
    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Row]:
        return self._rows


@dataclass(frozen=True)
class Backend:
    """What differs between SQLite and PostgreSQL in the store's SQL, in one place."""

    dialect: str  # "sqlite" or "postgresql"

    @property
    def skip_locked(self) -> str:
        return " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""


@lru_cache(maxsize=512)
def _statement(sql: str, expanding: tuple[str, ...]) -> TextClause:
    clause = sqlalchemy.text(sql)
    if expanding:
        clause = clause.bindparams(*(sqlalchemy.bindparam(n, expanding=True) for n in expanding))
    return clause


class Connection:
    """A borrowed pool connection inside one transaction, with the one call the store uses."""

    def __init__(self, raw: SAConnection, backend: Backend) -> None:
        self.raw = raw
        self.backend = backend

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> Cursor:
        """Run ``sql`` with named parameters; list and tuple values expand (``IN :ids``)."""
        params = dict(params or {})
        expanding = tuple(sorted(k for k, v in params.items() if isinstance(v, list | tuple)))
        try:
            result = self.raw.execute(_statement(sql, expanding), params)
            rows = [Row(r._mapping) for r in result] if result.returns_rows else []
        except SQLAlchemyError as exc:
            raise DatabaseError(f"{type(exc.__cause__ or exc).__name__}: {exc}") from exc
        return Cursor(rows, result.rowcount)


@dataclass(frozen=True)
class Database:
    """Where the jobs live: ``sqlite:///path`` or ``postgresql://user@host:port/db``."""

    url: str

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls(f"sqlite:///{path}")

    @property
    def backend(self) -> Backend:
        if self.url.startswith("sqlite:"):
            return Backend("sqlite")
        if self.url.startswith(("postgresql:", "postgresql+psycopg:", "postgres:")):
            return Backend("postgresql")
        raise DatabaseError(f"database URL scheme not supported: {self.url.split(':', 1)[0]}")

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:///"))

    @property
    def display(self) -> str:
        """The URL without a password, for logs and pages."""
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", self.url)

    def sqlalchemy_url(self) -> str:
        if self.backend.dialect == "sqlite":
            return self.url
        return re.sub(r"^postgres(ql)?(\+psycopg)?:", "postgresql+psycopg:", self.url)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        from alembic import command
        from alembic.config import Config

        if self.backend.dialect == "sqlite":
            self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.sqlalchemy_url().replace("%", "%%"))
        try:
            command.upgrade(config, "head")
        except Exception as exc:  # alembic/sqlalchemy errors: one message for start-up
            raise DatabaseError(f"cannot migrate the job store at {self.display}: {exc}") from exc


def _sqlite_engine(database: Database, size: int, overflow: int, timeout_s: float) -> Engine:
    engine = sqlalchemy.create_engine(
        database.sqlalchemy_url(),
        connect_args={"timeout": 30.0, "check_same_thread": False},
        poolclass=sqlalchemy.QueuePool,
        pool_size=size,
        max_overflow=overflow,
        pool_timeout=timeout_s,
    )

    # The pysqlite recipe: the driver leaves transactions to us, so a writer can
    # take the write lock at BEGIN (IMMEDIATE) and a reader gets a plain snapshot.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
            dbapi.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: SAConnection) -> None:
        immediate = conn.get_execution_options().get(_WRITE)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Pool:
    """The store's one engine: a pool of connections to ``database``.

    ``size`` connections stay open; up to ``overflow`` more open under load and
    close when given back; a caller waits at most ``timeout_s`` for one.
    """

    def __init__(
        self, database: Database, *, size: int = 5, overflow: int = 20, timeout_s: float = 30.0
    ) -> None:
        self.database = database
        self.backend = database.backend
        try:
            if self.backend.dialect == "sqlite":
                self.engine = _sqlite_engine(database, size, overflow, timeout_s)
            else:
                self.engine = sqlalchemy.create_engine(
                    database.sqlalchemy_url(),
                    connect_args={"connect_timeout": 10},
                    pool_size=size,
                    max_overflow=overflow,
                    pool_timeout=timeout_s,
                    pool_pre_ping=True,  # a restarted server's dead connections are replaced
                )
        except (SQLAlchemyError, ImportError) as exc:
            raise DatabaseError(f"cannot use {database.display}: {exc}") from exc

    @contextmanager
    def _borrow(self, *, write: bool) -> Iterator[Connection]:
        try:
            raw = self.engine.connect()
        except SQLAlchemyError as exc:
            raise DatabaseError(f"cannot connect to {self.database.display}: {exc}") from exc
        with raw:
            if write:
                raw.execution_options(**{_WRITE: True})
            try:
                with raw.begin():
                    yield Connection(raw, self.backend)
            except SQLAlchemyError as exc:  # the COMMIT itself failed
                raise DatabaseError(f"{type(exc.__cause__ or exc).__name__}: {exc}") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed when the block ends (rolled back on an error)."""
        with self._borrow(write=True) as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One consistent read (a snapshot); nothing written is kept."""
        with self._borrow(write=False) as conn:
            yield conn

    def dispose(self) -> None:
        """Close every pooled connection (the store is closed)."""
        self.engine.dispose()
