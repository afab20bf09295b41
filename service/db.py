"""Database access for the job store: SQLite (default) or PostgreSQL, one URL setting.

The store writes plain SQL with ``?`` placeholders; :class:`Connection` adapts
it to the backend (``%s`` and row objects for psycopg). The schema is owned by
Alembic migrations (``service/migrations``), applied at start-up on both
backends, so a store made by an older version is upgraded in place.

On PostgreSQL, workers on several hosts share the jobs table: a claim reads
with ``SELECT ... FOR UPDATE SKIP LOCKED`` so two workers never take the same
job and none waits for another's lock.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


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
    """What differs between SQLite and PostgreSQL, in one place."""

    dialect: str  # "sqlite" or "postgresql"

    @property
    def begin(self) -> str:
        # SQLite: take the write lock at once so claims serialise; PostgreSQL: row locks.
        return "BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN"

    @property
    def skip_locked(self) -> str:
        return " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""


_PLACEHOLDER = re.compile(r"\?")


class Connection:
    """One backend connection per thread, with the sqlite3-like calls the store uses."""

    def __init__(self, raw: Any, backend: Backend) -> None:
        self.raw = raw
        self.backend = backend

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self.backend.dialect == "sqlite":
            cur = self.raw.execute(sql, tuple(params))
            rows = (
                [Row(zip([d[0] for d in cur.description], r, strict=True)) for r in cur.fetchall()]
                if cur.description
                else []
            )
            return Cursor(rows, cur.rowcount)
        sql = _PLACEHOLDER.sub("%s", sql.replace("%", "%%"))
        with self.raw.cursor() as cur:
            cur.execute(sql, tuple(params))
            rows = (
                [
                    Row(zip([d.name for d in cur.description], r, strict=True))
                    for r in cur.fetchall()
                ]
                if cur.description
                else []
            )
            return Cursor(rows, cur.rowcount)

    def close(self) -> None:
        self.raw.close()


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

    def connect(self) -> Connection:
        backend = self.backend
        try:
            if backend.dialect == "sqlite":
                raw = sqlite3.connect(
                    self.sqlite_path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                raw.execute("PRAGMA journal_mode=WAL")
                raw.execute("PRAGMA synchronous=FULL")
                raw.execute("PRAGMA busy_timeout=30000")
                return Connection(raw, backend)
            import psycopg

            pg = psycopg.connect(self._libpq_url(), autocommit=True, connect_timeout=10)
            return Connection(pg, backend)
        except Exception as exc:  # sqlite3 / psycopg errors: one message for start-up
            raise DatabaseError(f"cannot connect to {self.display}: {exc}") from exc

    def _libpq_url(self) -> str:
        return re.sub(r"^postgres(ql)?(\+psycopg)?:", "postgresql:", self.url)

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


@contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    conn.execute(conn.backend.begin)
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
