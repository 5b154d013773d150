"""The hints of a RocksStore (hinted handoff): in their own column family, ``b"i" + id`` ->
the hint, with two indexes, per target in id order and by age (``rocks_format``). Ids only
grow: the next one is kept with the figures."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from zring.storage.base import Hint
from zring.storage.rocks_format import (
    CF_HINTS,
    TIMESTAMP_LIMIT,
    hint_created_key,
    hint_id_key,
    hint_target_prefix,
    translating_errors,
)
from zring.storage.rocks_records import decode_hint, encode_hint, record_row

__all__ = ["HintMethods"]


class HintMethods:
    """The Store's hint methods, mixed into RocksStore (which provides ``_pending``,
    ``_tables``, ``_next_hint_id``, ``_hint_counts`` and ``group_commit``)."""

    def add_hints(self, hints: Iterable[Hint]) -> int:
        batch = [(hint, record_row(hint.record)) for hint in hints]  # checks the record
        for hint, _ in batch:
            if not 0 <= hint.created_ms < TIMESTAMP_LIMIT:
                raise ValueError(f"created_ms {hint.created_ms} of the hint for "
                                 f"{hint.target!r} is outside [0, 2**63)")
        put = self._pending.put
        with self.group_commit():
            for hint, _ in batch:
                hint_id = self._next_hint_id
                self._next_hint_id += 1
                put(CF_HINTS, hint_id_key(hint_id), encode_hint(hint))
                put(CF_HINTS, hint_target_prefix(hint.target) + hint_id.to_bytes(8, "big"), b"")
                put(CF_HINTS, hint_created_key(hint.created_ms, hint_id), b"")
                self._hint_counts[hint.target] = self._hint_counts.get(hint.target, 0) + 1
        return len(batch)

    @translating_errors
    def hints_for(self, target: str, *, limit: int = 1000) -> list[Hint]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        prefix = hint_target_prefix(target)
        table = self._tables[CF_HINTS]
        entries = islice(self._pending.iterate(CF_HINTS, table, prefix,
                                               prefix + b"\xff" * 9), limit)
        hints = []
        for key, _ in list(entries):
            hint_id = int.from_bytes(key[len(prefix):], "big")
            raw = self._pending.lookup(CF_HINTS, hint_id_key(hint_id), self._tables)
            if raw is not None:
                hints.append(decode_hint(hint_id, raw))
        return hints

    @translating_errors
    def delete_hints(self, hint_ids: Iterable[int]) -> int:
        return self._forget_hints(h for h in dict.fromkeys(hint_ids) if 0 < h < (1 << 64))

    @translating_errors
    def hint_counts(self) -> dict[str, int]:
        return dict(self._hint_counts)

    @translating_errors
    def expire_hints(self, created_before_ms: int) -> int:
        if created_before_ms <= 0:
            return 0
        end = b"c" + min(created_before_ms, TIMESTAMP_LIMIT).to_bytes(8, "big")
        table = self._tables[CF_HINTS]
        return self._forget_hints([int.from_bytes(key[9:], "big") for key, _ in
                                   list(self._pending.iterate(CF_HINTS, table, b"c", end))])

    def _forget_hints(self, hint_ids: Iterable[int]) -> int:
        """Delete the hints of these ids that exist, in one commit; how many there were."""
        found = []
        for hint_id in hint_ids:
            raw = self._pending.lookup(CF_HINTS, hint_id_key(hint_id), self._tables)
            if raw is not None:
                found.append(decode_hint(hint_id, raw))
        with self.group_commit():
            for hint in found:
                self._forget_hint(hint)
        return len(found)

    def _forget_hint(self, hint: Hint) -> None:
        put = self._pending.put
        put(CF_HINTS, hint_id_key(hint.hint_id), None)
        put(CF_HINTS, hint_target_prefix(hint.target) + hint.hint_id.to_bytes(8, "big"), None)
        put(CF_HINTS, hint_created_key(hint.created_ms, hint.hint_id), None)
        left = self._hint_counts[hint.target] - 1
        if left > 0:
            self._hint_counts[hint.target] = left
        else:
            del self._hint_counts[hint.target]

