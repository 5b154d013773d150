"""When a SQLiteStore's writes commit: each call in its own transaction, or every write of
a node's poll cycle in one (the group commit), and the checkpoint that syncs them.

The node's loop runs each poll cycle inside ``group_commit()`` and sends its replies only
after it returns, so one commit (one fsync under ``--fsync always``) covers every write of
the cycle. The batch's transaction opens at its first write: a cycle that only reads costs no
BEGIN/COMMIT. Inside a batch, a call that writes several rows takes a savepoint, so it stays
all or nothing by itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from zring.errors import StorageError
from zring.storage.sqlite_errors import SQLITE_ERRORS

__all__ = ["Transactions"]

_ROLLED_BACK = "the loop cycle's transaction was rolled back by SQLite after an error"


class Transactions:
    """The transaction state of one connection. ``fail`` turns a sqlite3 error into the
    store's StorageError (naming its file)."""

    def __init__(self, conn: sqlite3.Connection,
                 fail: Callable[[Exception], StorageError]) -> None:
        self._conn = conn
        self._fail = fail
        self._batch_depth = 0
        self._batch_began = False   # the current group commit opened its transaction

    @contextmanager
    def group_commit(self) -> Iterator[None]:
        """Every write inside in one transaction, committed on the way out."""
        self._batch_depth += 1
        if self._batch_depth == 1:
            self._batch_began = False
        try:
            yield
        except BaseException:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                self._abandon()
            raise
        self._batch_depth -= 1
        if self._batch_depth:
            return
        if self._batch_began and not self._conn.in_transaction:
            # SQLite rolled the whole transaction back after an error (a full disk, an I/O
            # error) that its caller survived: the writes before it are gone too
            raise self._fail(sqlite3.OperationalError(_ROLLED_BACK))
        if self._conn.in_transaction:
            try:
                self._execute("COMMIT")
            except BaseException:
                self._abandon()   # a failed COMMIT (a full disk) may leave it open
                raise

    def join_batch(self) -> None:
        """Before a one-statement write: inside a group commit, open the batch's transaction
        if it is not open (once: a transaction SQLite rolled back must fail the batch, not
        start afresh). Outside one, the statement commits by itself."""
        if self._batch_depth and not self._conn.in_transaction:
            if self._batch_began:
                raise self._fail(sqlite3.OperationalError(_ROLLED_BACK))
            self._execute("BEGIN IMMEDIATE")
            self._batch_began = True

    @contextmanager
    def call(self) -> Iterator[None]:
        """One call's writes, all or nothing: its own transaction, or inside a group commit a
        savepoint. sqlite3 errors pass through (the store's methods translate them)."""
        if self._batch_depth:
            self.join_batch()
            self._conn.execute("SAVEPOINT call")
            try:
                yield
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK TO call")
                    self._conn.execute("RELEASE call")
                raise
            self._conn.execute("RELEASE call")
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:  # SQLite rolls back by itself after some I/O errors
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def sync(self) -> None:
        """Checkpoint what is committed. In WAL mode with synchronous=NORMAL commits are not
        fsynced; a checkpoint syncs the WAL, then the database file."""
        if not self._conn.in_transaction:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _execute(self, statement: str) -> None:
        try:
            self._conn.execute(statement)
        except SQLITE_ERRORS as exc:
            raise self._fail(exc) from exc

    def _abandon(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except SQLITE_ERRORS:
            pass  # rolled back by SQLite itself, or the connection is gone
