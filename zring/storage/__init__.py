"""Stores: ``SQLiteStore`` (durable default) and ``MemoryStore`` (tests, simulation)."""

from zring.storage.base import Hint, Record, Store, Value
from zring.storage.memory import MemoryStore
from zring.storage.sqlite import SQLiteStore

STORE_FILE = "zring.db"  # a node's store, in its data directory

__all__ = ["STORE_FILE", "Hint", "MemoryStore", "Record", "SQLiteStore", "Store", "Value"]
