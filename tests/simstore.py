"""The simulation's store: MemoryStore with the failures a disk has (pure: no files).

- Power loss: a store keeps what its last ``sync()`` made durable apart from what it has
  committed since; ``power_loss()`` is the store a node finds after the machine lost power:
  only the synced part. (A kill -9 keeps everything committed: the OS page cache survives,
  so a crashed node restarts on the same store object.)
- A failing disk: ``failing = "write"`` makes every write raise StorageError before it
  changes anything (the disk refuses it); ``failing = "commit"`` lets a loop cycle's writes
  happen and then fails its group commit, which undoes them all (a full disk at COMMIT; a
  cycle that wrote nothing commits nothing, so it does not fail). Reads keep working, as
  SQLite's do on a full disk.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import wraps

from zring.errors import StorageError
from zring.storage import MemoryStore

__all__ = ["SimStore"]

_WRITES = ("put", "put_many", "put_wire", "write_if_newer", "delete_range", "delete_keys",
           "purge_tombstones", "set_meta", "add_hints", "delete_hints", "expire_hints")


def _refusing(method):
    @wraps(method)
    def write(self, *args, **kwargs):
        if self.failing == "write":
            self.refused += 1
            raise StorageError("simulated disk error: the write was refused", reason="error")
        self.wrote = True
        return method(self, *args, **kwargs)
    return write


class SimStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.failing: str | None = None    # None, "write" or "commit"
        self.refused = 0                   # writes and commits that failed
        self.syncs = 0
        self.wrote = False                 # a write since the cycle began
        self._synced = self._state()

    # ------------------------------------------------------------------ power loss

    def sync(self) -> None:
        if self.failing is not None:
            raise StorageError("simulated disk error: sync failed", reason="error")
        self._synced = self._state()
        self.syncs += 1

    def power_loss(self) -> SimStore:
        """What survives the machine losing power: the state of the last sync."""
        survivor = SimStore()
        survivor._restore(self._synced)
        survivor._synced = survivor._state()
        return survivor

    # ------------------------------------------------------------------ a failing disk

    @contextmanager
    def group_commit(self):
        if self.failing != "commit":
            yield
            return
        before = self._state()
        self.wrote = False
        yield
        if not self.wrote:
            return
        self._restore(before)
        self.refused += 1
        raise StorageError("simulated disk full: the commit failed", reason="error")

    # ------------------------------------------------------------------ state

    def _state(self) -> tuple:
        # records, hints and meta are immutable values: shallow copies are snapshots
        return (dict(self._records), self._by_position.copy(), self._tombstones.copy(),
                dict(self._meta), dict(self._hints),
                {target: dict(held) for target, held in self._hints_by_target.items()},
                self._last_hint_id, self._bytes)

    def _restore(self, state: tuple) -> None:
        (records, by_position, tombstones, meta, hints, by_target, last_hint_id,
         size) = state
        self._records = dict(records)
        self._by_position = by_position.copy()
        self._tombstones = tombstones.copy()
        self._meta = dict(meta)
        self._hints = dict(hints)
        self._hints_by_target = {target: dict(held) for target, held in by_target.items()}
        self._last_hint_id = last_hint_id
        self._bytes = size


for _name in _WRITES:
    setattr(SimStore, _name, _refusing(getattr(MemoryStore, _name)))
