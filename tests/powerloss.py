"""Power loss for SQLite files, modelled the way SQLite's own crash tests do (src/test6.c).

``PowerLossVFS`` is an apsw VFS over the default ("unix") one. Every write to a store's files
(the database, its WAL, its rollback journal) is held in memory, as an operating system's page
cache holds it, until that file is synced: reads see the held writes, the real file on disk
holds only what was synced. A sync writes the file's held writes to the real file, in order;
the real file is the durable medium of the model, so no real fsync is needed. ``power_loss()``
then drops whatever was not synced, as a machine losing power does:

- ``unsynced="lost"``: every unsynced write and truncate is lost (the simplest model).
- ``unsynced="prefix"``: the disk wrote the held writes back in order and power failed at a
  random one: those before it land, it is torn (as below), those after it are lost; or all
  landed and only the sync's answer was lost. Whole unsynced commits often survive this way,
  so recovery must find where they end.
- ``unsynced="torn"``: each unsynced write is cut at 512-byte sector boundaries and each piece
  independently lands, is lost, or lands as garbage (test6's three outcomes, same odds:
  3/8, 3/8, 1/4), in any combination: later writes may land while earlier ones do not. An
  unsynced truncate happens or not. Garbage stays inside the bytes being written, which is the
  "powersafe overwrite" the unix VFS reports for the device (SQLite relies on nothing more).
  ``powersafe_overwrite=False`` instead reports a device without it (test6's default): a
  write then lands, is lost, or trashes every 4096-byte sector it touches, bytes around it
  included, and SQLite pads its WAL syncs to sector boundaries to survive that.

Power can be cut between calls (``power_loss()``) or in the middle of one: ``lose_power_after(n)``
cuts it at the (n+1)-th write, truncate or sync from then on; that call and every later one on
the old files fails with an I/O error, as they would on a dead machine. After a loss, close the
dead connection, then ``power_on()`` writes what survived to the real files; stores opened from
then on read those bytes.

Deleting a file takes effect at once (SQLite deletes a WAL or journal only after syncing what
it needs). Temporary files (no name, or deleted on close) are not modelled: they pass through.

``connector(vfs)`` returns a ``connect`` for ``SQLiteStore``: an apsw connection (apsw bundles
its own SQLite, so it can load a Python VFS) behind the small part of the ``sqlite3``
connection interface the store uses, raising ``sqlite3`` errors with ``sqlite_errorcode``.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import apsw

PIECE_BYTES = 512           # a disk sector: the unit a torn write lands or not in
TRASH_SECTOR_BYTES = 4096   # without powersafe overwrite, what garbage covers (SQLite's default)

_Op = tuple[int, bytes | None]  # (offset, data) a write; (size, None) a truncate


@dataclass
class _Image:
    """One file as the operating system shows it: synced bytes plus writes not yet synced."""

    data: bytearray
    pending: list[_Op] = field(default_factory=list)
    handles: int = 0  # open files on it


class PowerLossVFS(apsw.VFS):
    """See the module docstring. ``name`` must be unique while it is registered."""

    def __init__(self, name: str, *, seed: int = 0, unsynced: str = "lost",
                 powersafe_overwrite: bool = True) -> None:
        if unsynced not in ("lost", "prefix", "torn"):
            raise ValueError(f"unsynced must be 'lost', 'prefix' or 'torn', not {unsynced!r}")
        super().__init__(name, "")  # inherits the default VFS ("unix")
        self.name = name
        self.unsynced = unsynced
        self.powersafe_overwrite = powersafe_overwrite
        self.random = random.Random(seed)
        self.images: dict[str, _Image] = {}
        self.powered = True
        self.era = 0                    # bumped at each loss: files opened before are dead
        self.countdown: int | None = None
        self.ticks = 0                  # writes, truncates and syncs so far
        self.open_files = 0
        self.landing: dict[str, list[_Op]] = {}  # what survived the last loss, per file

    # -------------------------------------------------------------- the test's controls

    def lose_power_after(self, calls: int) -> None:
        """Cut power at the (calls+1)-th write, truncate or sync from now on."""
        self.countdown = calls

    def power_loss(self) -> None:
        """Cut power now: what survives of each file's unsynced writes is decided here and
        written by ``power_on``; the files open now fail from here on."""
        if not self.powered:
            return
        self.landing = {path: self._surviving(image.pending)
                        for path, image in self.images.items() if image.pending}
        self.images.clear()
        self.powered = False
        self.countdown = None
        self.era += 1

    def power_on(self) -> None:
        """Write the surviving pieces to the real files. The dead connection must be closed
        first (its file handles hold the real files' locks)."""
        if self.powered:
            return
        assert self.open_files == 0, "close the connection that lost power first"
        for path, ops in self.landing.items():
            if not ops or not Path(path).exists():
                continue
            with open(path, "r+b") as real:
                _apply(real, ops)
        self.landing = {}
        self.powered = True

    # -------------------------------------------------------------- the VFS

    def xOpen(self, name, flags):  # noqa: N802 (apsw's method names)
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        if path is None or flags[0] & apsw.SQLITE_OPEN_DELETEONCLOSE:
            return apsw.VFSFile("", name, flags)
        if not self.powered:
            raise apsw.CantOpenError("power is off")
        return _HeldFile(self, path, name, flags)

    def xDelete(self, name, syncdir):  # noqa: N802
        if not self.powered:
            raise apsw.IOError("power is off")
        self.images.pop(name, None)
        return super().xDelete(name, syncdir)

    # -------------------------------------------------------------- internals

    def _tick(self) -> None:
        """Count one write, truncate or sync toward a planned loss."""
        self.ticks += 1
        if self.countdown is None:
            return
        if self.countdown == 0:
            self.power_loss()
            raise apsw.IOError("power lost")
        self.countdown -= 1

    def _surviving(self, pending: list[_Op]) -> list[_Op]:
        if self.unsynced == "lost" or not pending:
            return []
        if self.unsynced == "prefix":
            cut = self.random.randrange(len(pending) + 1)  # len: all landed
            return pending[:cut] + self._torn(pending[cut:cut + 1])
        return self._torn(pending)

    def _torn(self, ops: list[_Op]) -> list[_Op]:
        landed: list[_Op] = []
        for offset, data in ops:
            if data is None:
                if self.random.random() < 0.5:
                    landed.append((offset, None))
            elif self.powersafe_overwrite:
                for start, piece in _pieces(offset, data):
                    landed += self._fate(start, piece, start, len(piece))
            else:
                first = offset // TRASH_SECTOR_BYTES * TRASH_SECTOR_BYTES
                last = -(-(offset + len(data)) // TRASH_SECTOR_BYTES) * TRASH_SECTOR_BYTES
                landed += self._fate(offset, data, first, last - first)
        return landed

    def _fate(self, offset: int, data: bytes, trash_at: int, trash_bytes: int) -> list[_Op]:
        """test6's odds: 3/8 lands, 3/8 is lost, 1/4 lands as garbage."""
        draw = self.random.randrange(8)
        if draw < 3:
            return [(offset, data)]
        if draw < 6:
            return []
        return [(trash_at, self.random.randbytes(trash_bytes))]


class _HeldFile(apsw.VFSFile):
    """A file whose writes wait in the VFS's image of it until it is synced."""

    def __init__(self, vfs: PowerLossVFS, path: str, name, flags) -> None:
        super().__init__("", name, flags)  # the real file: opened (created) as usual
        self.vfs = vfs
        self.path = path
        self.era = vfs.era
        vfs.open_files += 1
        self.closed = False
        image = vfs.images.get(path)
        if image is None:  # what the disk holds: all of it was synced
            size = super().xFileSize()
            image = _Image(bytearray(super().xRead(size, 0)) if size else bytearray())
            vfs.images[path] = image
        image.handles += 1
        self.image = image

    def _alive(self) -> None:
        if self.era != self.vfs.era or not self.vfs.powered:
            raise apsw.IOError("power lost")

    def xRead(self, amount, offset):  # noqa: N802
        self._alive()
        # fewer bytes than asked: apsw zero-fills the rest and reports a short read
        return bytes(self.image.data[offset:offset + amount])

    def xWrite(self, data, offset):  # noqa: N802
        self._alive()
        data = bytes(data)
        image = self.image
        end = offset + len(data)
        if end > len(image.data):
            image.data.extend(bytes(end - len(image.data)))
        image.data[offset:end] = data
        image.pending.append((offset, data))
        self.vfs._tick()  # a write cut short by the loss is one of the unsynced ones

    def xTruncate(self, newsize):  # noqa: N802
        self._alive()
        image = self.image
        if newsize < len(image.data):
            del image.data[newsize:]
        else:
            image.data.extend(bytes(newsize - len(image.data)))
        image.pending.append((newsize, None))
        self.vfs._tick()

    def xSync(self, flags):  # noqa: N802
        self._alive()
        self.vfs._tick()  # a loss during the sync: none of it is known to have landed
        for offset, data in self.image.pending:
            if data is None:
                super().xTruncate(offset)
            else:
                super().xWrite(data, offset)
        self.image.pending.clear()

    def xFileSize(self):  # noqa: N802
        self._alive()
        return len(self.image.data)

    def xFileControl(self, op, ptr):  # noqa: N802
        if op == apsw.SQLITE_FCNTL_SIZE_HINT:
            return True  # only a hint; the unix VFS would grow the real file behind our back
        return super().xFileControl(op, ptr)

    def xDeviceCharacteristics(self):  # noqa: N802
        if not self.vfs.powersafe_overwrite:
            return 0  # test6's default device: no atomic writes, no powersafe overwrite
        return super().xDeviceCharacteristics()

    def xClose(self):  # noqa: N802
        # held writes stay in the VFS's image: closing a file does not sync it. An image
        # with none is dropped, so the next open reads the disk (another program may write it)
        if not self.closed:
            self.closed = True
            self.vfs.open_files -= 1
            self.image.handles -= 1
            if (not self.image.handles and not self.image.pending
                    and self.vfs.images.get(self.path) is self.image):
                del self.vfs.images[self.path]
        super().xClose()


def _pieces(offset: int, data: bytes) -> Iterator[tuple[int, bytes]]:
    """``data`` written at ``offset``, cut at every ``PIECE_BYTES`` boundary of the file."""
    position = offset
    end = offset + len(data)
    while position < end:
        cut = min(end, (position // PIECE_BYTES + 1) * PIECE_BYTES)
        yield position, data[position - offset:cut - offset]
        position = cut


def _apply(real, ops: list[_Op]) -> None:
    for offset, data in ops:
        if data is None:
            real.truncate(offset)
        else:
            real.seek(offset)
            real.write(data)


# ---------------------------------------------------------------------- sqlite3 over apsw

# CPython's sqlite3 error classes by primary result code (Modules/_sqlite/util.c)
_ERROR_CLASSES: dict[int, type[Exception]] = {
    sqlite3.SQLITE_INTERNAL: sqlite3.InternalError,
    sqlite3.SQLITE_NOTFOUND: sqlite3.InternalError,
    sqlite3.SQLITE_CORRUPT: sqlite3.DatabaseError,
    sqlite3.SQLITE_TOOBIG: sqlite3.DataError,
    sqlite3.SQLITE_CONSTRAINT: sqlite3.IntegrityError,
    sqlite3.SQLITE_MISMATCH: sqlite3.IntegrityError,
    sqlite3.SQLITE_MISUSE: sqlite3.InterfaceError,
    sqlite3.SQLITE_RANGE: sqlite3.InterfaceError,
    **{code: sqlite3.OperationalError for code in (
        sqlite3.SQLITE_ERROR, sqlite3.SQLITE_PERM, sqlite3.SQLITE_ABORT, sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL, sqlite3.SQLITE_EMPTY, sqlite3.SQLITE_SCHEMA)},
}
_DML = ("INSERT", "UPDATE", "DELETE", "REPLACE")  # statements whose changes rowcount reports


def _sqlite3_error(exc: apsw.Error) -> Exception:
    """``exc`` as the ``sqlite3`` module would have raised it."""
    extended = getattr(exc, "extendedresult", None)
    if extended is None:  # not from SQLite: misuse of the API (closed connection, bindings)
        return sqlite3.ProgrammingError(str(exc))
    primary = extended & 0xFF
    if primary == sqlite3.SQLITE_NOMEM:
        return MemoryError(str(exc))
    error = _ERROR_CLASSES.get(primary, sqlite3.DatabaseError)(str(exc))
    error.sqlite_errorcode = extended
    error.sqlite_errorname = apsw.mapping_result_codes.get(
        extended, apsw.mapping_result_codes.get(primary, "SQLITE_UNKNOWN"))
    return error


class _Cursor:
    """The part of ``sqlite3.Cursor`` SQLiteStore uses, over an apsw cursor."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        try:
            self._cursor = connection.apsw.cursor()
        except apsw.Error as exc:
            raise _sqlite3_error(exc) from exc
        self._rows: Iterator[tuple] = iter(())
        self.rowcount = -1

    def execute(self, sql: str, parameters: Iterable = ()) -> _Cursor:
        dml = sql.lstrip().upper().startswith(_DML)
        try:
            self._rows = iter(self._cursor.execute(sql, tuple(parameters)))
            self.rowcount = self._connection.apsw.changes() if dml else -1
        except apsw.Error as exc:
            raise _sqlite3_error(exc) from exc
        return self

    def executemany(self, sql: str, seq_of_parameters: Iterable[Iterable]) -> _Cursor:
        total = 0
        try:
            for parameters in seq_of_parameters:
                self._cursor.execute(sql, tuple(parameters))
                total += self._connection.apsw.changes()
        except apsw.Error as exc:
            raise _sqlite3_error(exc) from exc
        self._rows = iter(())
        self.rowcount = total if sql.lstrip().upper().startswith(_DML) else -1
        return self

    def fetchall(self) -> list[tuple]:
        try:
            return list(self._rows)
        except apsw.Error as exc:
            raise _sqlite3_error(exc) from exc

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        try:
            return next(self._rows)
        except apsw.Error as exc:
            raise _sqlite3_error(exc) from exc

    def close(self) -> None:
        self._rows = iter(())
        try:
            self._cursor.close(True)
        except apsw.Error:
            pass


class _Connection:
    """The part of ``sqlite3.Connection`` (opened with ``isolation_level=None``: no implicit
    transactions, as in apsw) SQLiteStore uses, over an apsw connection."""

    def __init__(self, path: str, vfs: str) -> None:
        try:
            self.apsw = apsw.Connection(path, vfs=vfs)
        except apsw.Error as exc:
            raise _sqlite3_error(exc) from exc

    @property
    def in_transaction(self) -> bool:
        return self.apsw.in_transaction

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    def execute(self, sql: str, parameters: Iterable = ()) -> _Cursor:
        return _Cursor(self).execute(sql, parameters)

    def close(self) -> None:
        try:
            self.apsw.close()
        except apsw.Error as exc:
            self.apsw.close(True)  # the files are closed either way
            raise _sqlite3_error(exc) from exc


def connector(vfs: PowerLossVFS) -> Callable[..., _Connection]:
    """A ``connect`` for ``SQLiteStore(..., connect=...)`` whose files go through ``vfs``."""

    def connect(path, isolation_level=None) -> _Connection:
        assert isolation_level is None, "SQLiteStore manages its transactions itself"
        return _Connection(str(path), vfs.name)

    return connect
