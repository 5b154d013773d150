"""Stores: ``SQLiteStore`` (durable default) and ``MemoryStore`` (tests, simulation)."""

from zring.storage.base import Hint, Record, Store, Value
from zring.storage.memory import MemoryStore
from zring.storage.sqlite import SQLiteStore

__all__ = ["Hint", "MemoryStore", "Record", "SQLiteStore", "Store", "Value"]
