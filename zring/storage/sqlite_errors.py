"""SQLite's failures as StorageErrors naming the store file, with a ``reason`` detail that
tells a file another process holds ("locked") from a damaged one ("damaged")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from zring.errors import StorageError

__all__ = ["SQLITE_ERRORS", "storage_error"]

# SQLite primary result codes meaning the file itself is damaged, not merely busy or absent
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_LOCKED_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# what a damaged file can raise: the sqlite3 module fails to decode an error message that
# quotes junk from the file (a mangled schema) with a bare UnicodeDecodeError
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def storage_error(path: Path, exc: Exception, *, closed: bool = False) -> StorageError:
    """``exc`` as a StorageError naming the file at ``path``, with a ``reason`` detail:
    "closed", "locked" (another process holds the file), "damaged" (the file is corrupt) or
    "error" (anything else: I/O, permissions, a full disk)."""
    name = str(path)
    if closed:
        return StorageError(f"store {name} is closed", path=name, reason="closed")
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # primary of extended
    if code in _LOCKED_CODES:
        return StorageError(f"store {name} is locked: is another node or process "
                            f"using it? ({exc})", path=name, reason="locked")
    if isinstance(exc, UnicodeDecodeError):
        return StorageError(f"store {name} is damaged: SQLite failed with a message "
                            f"quoting junk from the file ({exc})", path=name,
                            reason="damaged")
    if code in _DAMAGE_CODES or str(exc).startswith("Could not decode to UTF-8"):
        return StorageError(f"store {name} is damaged: {exc}", path=name, reason="damaged")
    return StorageError(f"store {name}: {exc}", path=name, reason="error")
