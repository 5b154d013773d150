"""Consistent-hash ring with virtual nodes (pure: no I/O, no clock, no sockets).

Placement
    Each node owns ``vnodes * weight`` tokens (see :mod:`zring.hashing`); a key belongs to the
    first token at or after its position, clockwise, wrapping at 2**64. So a token owns the
    range ``(previous token, token]`` as in Cassandra. Equal tokens of two nodes are ordered by
    node id, so the ring depends only on its members, never on the order they were added in.

Why 16,384 virtual nodes
    A node's share is a sum of random gaps, so its relative spread is about ``1/sqrt(vnodes)``:
    the default keeps the busiest of 50 nodes within a few percent of the mean. Lookups stay
    fast despite ~800k tokens because a bucket index over the top bits of the position narrows
    each search to one or two tokens; building uses numpy so a 50-node ring takes ~0.1 s.

Preference lists
    ``get_nodes(key, n)`` walks clockwise from the key and collects the first ``n`` distinct
    nodes. A join therefore changes at most one member of any preference list (the new node
    enters, the last one drops out), and a leave the reverse.

Ring differences
    :func:`ring_changes` lists the ranges whose preference list differs between two rings,
    with the old and new replicas, so a join or leave streams only those ranges.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np
import xxhash

from zring.hashing import RING_SIZE, node_tokens

__all__ = ["DEFAULT_VNODES", "HashRing", "RangeChange", "RingDiff", "ring_changes"]

DEFAULT_VNODES = 16384

_xxh3_64 = xxhash.xxh3_64_intdigest
_MAX_POSITION = RING_SIZE - 1
_SPLIT = 0xFFFF          # direct-table marker: a token splits this bucket, so bisect
_MAX_NODES = _SPLIT - 1  # node indices must fit the 16-bit tables


class RangeChange(NamedTuple):
    """Positions ``(start, end]`` (clockwise, wrapping past 2**64 - 1 when ``start >= end``)
    whose preference list is ``old_nodes`` in one ring and ``new_nodes`` in the other."""

    start: int
    end: int
    old_nodes: tuple[str, ...]
    new_nodes: tuple[str, ...]

    @property
    def gained(self) -> tuple[str, ...]:
        """Nodes that must receive this range's data (replicas in the new ring only)."""
        return tuple(n for n in self.new_nodes if n not in self.old_nodes)

    @property
    def lost(self) -> tuple[str, ...]:
        """Nodes that may drop this range's data once the gainers hold it."""
        return tuple(n for n in self.old_nodes if n not in self.new_nodes)

    @property
    def wraps(self) -> bool:
        return self.start >= self.end

    def contains(self, position: int) -> bool:
        if self.start < self.end:
            return self.start < position <= self.end
        return position > self.start or position <= self.end

    def intervals(self) -> list[tuple[int, int]]:
        """The range as inclusive ``(low, high)`` position intervals, for range scans."""
        if self.start < self.end:
            return [(self.start + 1, self.end)]
        parts = [(0, self.end)]
        if self.start < _MAX_POSITION:
            parts.append((self.start + 1, _MAX_POSITION))
        return parts


class HashRing:
    """Members, their weights, and the token layout derived from them.

    The layout is rebuilt lazily on the first lookup after a membership change, so adding
    many nodes costs one build.
    """

    __slots__ = ("_vnodes", "_weights", "_dirty", "_tokens", "_owner_ids", "_names",
                 "_starts", "_direct", "_shift", "_fingerprint")

    def __init__(self, nodes: Iterable[str] | Mapping[str, float] | None = None, *,
                 vnodes: int = DEFAULT_VNODES) -> None:
        if not isinstance(vnodes, int) or isinstance(vnodes, bool) or vnodes < 1:
            raise ValueError(f"vnodes must be a positive int, got {vnodes!r}")
        self._vnodes = vnodes
        self._weights: dict[str, float] = {}
        self._dirty = True
        self._fingerprint: int | None = None   # cached: a replica checks it per request
        # The built layout. Nodes are referred to by index into _names (sorted ids, then None
        # so that an empty ring answers None); small ints keep the tables compact and cached.
        self._tokens = array("Q")        # sorted token positions
        self._owner_ids = array("H")     # owner of each token, then the first owner again (wrap)
        self._names: list[str | None] = [None]
        self._starts = array("I", [0, 0, 0])  # bucket -> index of its first token
        self._direct = array("H", [0, 0])     # bucket -> owner, or _SPLIT if a token splits it
        self._shift = 63
        if nodes is not None:
            items = nodes.items() if isinstance(nodes, Mapping) else ((n, 1) for n in nodes)
            for node_id, weight in items:
                self.add_node(node_id, weight)

    # ---------------------------------------------------------------- membership

    def add_node(self, node_id: str, weight: float = 1) -> None:
        """Add ``node_id``; adding a member again only updates its weight."""
        if not isinstance(node_id, str) or not node_id:
            raise ValueError(f"node id must be a non-empty str, got {node_id!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"weight must be a positive number, got {weight!r}")
        if round(self._vnodes * weight) < 1:
            raise ValueError(f"weight {weight!r} gives node {node_id!r} no tokens")
        if self._weights.get(node_id) == weight:
            return
        self._weights[node_id] = weight
        self._dirty = True
        self._fingerprint = None

    def remove_node(self, node_id: str) -> None:
        """Remove ``node_id``; raises ``KeyError`` if it is not a member."""
        try:
            del self._weights[node_id]
        except KeyError:
            raise KeyError(f"node {node_id!r} is not in the ring") from None
        self._dirty = True
        self._fingerprint = None

    @property
    def nodes(self) -> list[str]:
        """Member ids, sorted."""
        return sorted(self._weights)

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    @property
    def vnodes(self) -> int:
        return self._vnodes

    def weight(self, node_id: str) -> float:
        return self._weights[node_id]

    def token_count(self, node_id: str | None = None) -> int:
        if node_id is None:
            self._ensure_built()
            return len(self._tokens)
        return round(self._vnodes * self._weights[node_id])

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._weights

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HashRing):
            return NotImplemented
        return self._vnodes == other._vnodes and self._weights == other._weights

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"HashRing(nodes={len(self._weights)}, vnodes={self._vnodes})"

    def copy(self) -> HashRing:
        clone = HashRing(vnodes=self._vnodes)
        clone._weights = dict(self._weights)
        return clone

    def fingerprint(self) -> int:
        """A 64-bit digest of the members, weights and vnodes: equal rings, equal fingerprints."""
        if self._fingerprint is None:
            text = repr((self._vnodes, sorted(self._weights.items())))
            self._fingerprint = _xxh3_64(text.encode("utf-8"))
        return self._fingerprint

    # ---------------------------------------------------------------- lookups

    def get_node(self, key: str | bytes) -> str | None:
        """The node that owns ``key`` (its first replica), or None on an empty ring."""
        if self._dirty:
            self._ensure_built()
        if key.__class__ is str:
            key = key.encode("utf-8")
        position = _xxh3_64(key)
        bucket = position >> self._shift
        node_index = self._direct[bucket]
        if node_index == _SPLIT:
            starts = self._starts
            token_index = bisect_left(self._tokens, position, starts[bucket], starts[bucket + 1])
            node_index = self._owner_ids[token_index]
        return self._names[node_index]

    def get_nodes(self, key: str | bytes, count: int) -> list[str]:
        """The preference list: ``count`` distinct nodes clockwise from ``key``."""
        if key.__class__ is str:
            key = key.encode("utf-8")
        return self.get_nodes_at(_xxh3_64(key), count)

    def get_node_at(self, position: int) -> str | None:
        """The owner of ring position ``position``, or None on an empty ring."""
        if self._dirty:
            self._ensure_built()
        if not self._tokens:
            return None
        return self._names[self._owner_ids[self._successor(position)]]

    def get_nodes_at(self, position: int, count: int) -> list[str]:
        """The preference list of the range containing ring position ``position``."""
        if self._dirty:
            self._ensure_built()
        wanted = min(count, len(self._names) - 1)
        if wanted < 1:
            return []
        owner_ids = self._owner_ids
        index = self._successor(position)
        found = [owner_ids[index]]
        size = len(self._tokens)
        while len(found) < wanted:
            index += 1
            if index >= size:
                index = 0
            node_index = owner_ids[index]
            if node_index not in found:
                found.append(node_index)
        names = self._names
        return [names[i] for i in found]

    def _successor(self, position: int) -> int:
        """Index of the token owning ``position``: the first token >= it (size = wrap)."""
        bucket = position >> self._shift
        starts = self._starts
        return bisect_left(self._tokens, position, starts[bucket], starts[bucket + 1])

    # ---------------------------------------------------------------- ranges

    def ranges(self) -> list[tuple[int, int, str]]:
        """Every token range as ``(start, end, owner)``: positions ``(start, end]``."""
        self._ensure_built()
        tokens, owner_ids, names = self._tokens, self._owner_ids, self._names
        return [(tokens[i - 1], tokens[i], names[owner_ids[i]]) for i in range(len(tokens))]

    def primary_shares(self) -> dict[str, float]:
        """Fraction of the ring each node owns as first replica (sums to 1)."""
        self._ensure_built()
        nodes = self._names[:-1]
        if not nodes:
            return {}
        tokens = np.frombuffer(self._tokens, dtype=np.uint64)
        gaps = np.diff(tokens, prepend=tokens[-1:]).astype(np.float64)  # wraps mod 2**64
        if not gaps.any():  # every token at one position: its owner holds the whole ring
            gaps[0] = float(RING_SIZE)
        owner_ids = np.frombuffer(self._owner_ids, dtype=np.uint16)[: len(tokens)]
        sums = np.bincount(owner_ids, weights=gaps, minlength=len(nodes))
        return {node: total / RING_SIZE for node, total in zip(nodes, sums.tolist())}

    def memory_bytes(self) -> int:
        """Bytes held by the built layout (token, owner, bucket and direct tables)."""
        self._ensure_built()
        return sum(table.itemsize * len(table)
                   for table in (self._tokens, self._owner_ids, self._starts, self._direct))

    def _preference_table(self, count: int) -> np.ndarray:
        """Row ``i``: the preference list (node indices) of the range ending at token ``i``.

        Vectorised walk: step ``d`` looks at the owner ``d`` tokens ahead for every row that
        still lacks members, so the work is the total walk length, done in numpy.
        """
        self._ensure_built()
        size = len(self._tokens)
        wanted = min(count, len(self._names) - 1)
        owners = np.frombuffer(self._owner_ids, dtype=np.uint16)[:size]
        table = np.full((size, max(wanted, 1)), _SPLIT, dtype=np.uint16)
        if size == 0 or wanted < 1:
            return table[:, :0]
        table[:, 0] = owners
        filled = np.ones(size, dtype=np.int64)
        pending = np.arange(size) if wanted > 1 else np.arange(0)
        step = 1
        while pending.size and step < size:
            candidates = owners[(pending + step) % size]
            fresh = ~(table[pending] == candidates[:, None]).any(axis=1)
            rows = pending[fresh]
            table[rows, filled[rows]] = candidates[fresh]
            filled[rows] += 1
            pending = pending[filled[pending] < wanted]
            step += 1
        return table

    # ---------------------------------------------------------------- build

    def _ensure_built(self) -> None:
        if not self._dirty:
            return
        node_list = sorted(self._weights)
        if len(node_list) > _MAX_NODES:
            raise ValueError(f"a ring holds at most {_MAX_NODES} nodes")
        self._names = [*node_list, None]
        self._dirty = False
        if not node_list:
            self._tokens, self._owner_ids = array("Q"), array("H")
            self._starts, self._direct, self._shift = array("I", [0, 0, 0]), array("H", [0, 0]), 63
            return
        counts = [round(self._vnodes * self._weights[n]) for n in node_list]
        raw = np.concatenate([np.frombuffer(node_tokens(n, c), dtype=np.uint64)
                              for n, c in zip(node_list, counts)])
        owner_ids = np.repeat(np.arange(len(node_list), dtype=np.uint16), counts)
        # Stable sort: equal tokens keep node-id order, whatever the order nodes were added in.
        order = np.argsort(raw, kind="stable")
        sorted_tokens = raw[order]
        size = len(sorted_tokens)
        # 2T..4T buckets over the top bits of a position: most buckets hold no token, so a
        # lookup there is one read of the direct table; the rest bisect one or two tokens.
        bits = min(32, (size - 1).bit_length() + 1)
        shift = 64 - bits
        per_bucket = np.bincount((sorted_tokens >> np.uint64(shift)).astype(np.int64),
                                 minlength=1 << bits)
        starts = np.concatenate(([0], np.cumsum(per_bucket)))
        # One extra owner slot: a position past the last token wraps to the first token.
        owner_ids = np.append(owner_ids[order], owner_ids[order[0]])
        unsplit = starts[1:] == starts[:-1]
        direct = np.where(unsplit, owner_ids[starts[:-1]], _SPLIT).astype(np.uint16)
        self._tokens = array("Q", sorted_tokens.astype("<u8").tobytes())
        self._owner_ids = array("H", owner_ids.astype("<u2").tobytes())
        self._starts = array("I", starts.astype("<u4").tobytes())
        self._direct = array("H", direct.astype("<u2").tobytes())
        self._shift = shift


def ring_changes(old: HashRing, new: HashRing, count: int,
                 gained_by: str | None = None) -> list[RangeChange]:
    """The ranges whose ``count``-node preference list differs between ``old`` and ``new``
    (``gained_by``: only those that node gains); see RingDiff.changes."""
    return RingDiff(old, new, count).changes(gained_by)


class RingDiff:
    """Every elementary range of two rings (each token of either bounds one) with its
    ``count``-node preference list in each, as numpy arrays of indices into ``names``
    (padded with ``len(names)``), computed once and queried in numpy: when many members
    change at once a million ranges change, and Python objects for each cost seconds and
    hundreds of MiB, while the few a node acts on are cheap."""

    def __init__(self, old: HashRing, new: HashRing, count: int) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self.same = old.vnodes == new.vnodes and old.weights == new.weights
        if self.same:
            return
        old._ensure_built()
        new._ensure_built()
        self.names = sorted(set(old.nodes) | set(new.nodes))
        self.none = len(self.names)
        width = min(count, len(self.names))
        old_tokens = np.frombuffer(old._tokens, dtype=np.uint64)
        new_tokens = np.frombuffer(new._tokens, dtype=np.uint64)
        bounds = np.concatenate([old_tokens, new_tokens])
        bounds.sort()   # both are sorted: cheaper than union1d's hashing
        self.bounds = bounds[np.append(True, bounds[1:] != bounds[:-1])]
        self.starts = np.roll(self.bounds, 1)
        self.old_lists = _lists_at(old, old_tokens, self.bounds, count, self.names, width)
        self.new_lists = _lists_at(new, new_tokens, self.bounds, count, self.names, width)

    def _index(self, node: str) -> int | None:
        return self.names.index(node) if node in self.names else None

    def _gains(self, node: int) -> np.ndarray:
        return (self.new_lists == node).any(axis=1) & ~(self.old_lists == node).any(axis=1)

    def _only_in(self, lists: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Per range and entry of ``lists``: a node missing from ``others``' list (in
        old_lists: it stops replicating the range; in new_lists: it starts)."""
        return (lists[:, :, None] != others[:, None, :]).all(axis=2) & (lists != self.none)

    def changes(self, gained_by: str | None = None) -> list[RangeChange]:
        """The ranges whose preference list differs, adjacent ones with the same change
        merged, sorted by ``end`` (``gained_by``: only those that node gains)."""
        if self.same:
            return []
        old_lists, new_lists = self.old_lists, self.new_lists
        differs = (old_lists != new_lists).any(axis=1)
        if gained_by is not None:
            node = self._index(gained_by)
            if node is None:
                return []
            differs &= self._gains(node)
        changed = np.nonzero(differs)[0]
        if changed.size == 0:
            return []
        # merge runs of adjacent ranges that change the same way
        same_as_previous = np.zeros(changed.size, dtype=bool)
        same_as_previous[1:] = (changed[1:] == changed[:-1] + 1) & (
            old_lists[changed[1:]] == old_lists[changed[:-1]]).all(axis=1) & (
            new_lists[changed[1:]] == new_lists[changed[:-1]]).all(axis=1)
        run_starts = np.nonzero(~same_as_previous)[0]
        run_ends = np.append(run_starts[1:], changed.size) - 1
        firsts, lasts = changed[run_starts], changed[run_ends]
        names, none = self.names, self.none
        node_tuples: dict[tuple[int, ...], tuple[str, ...]] = {}  # few distinct: share them

        def as_names(row: list[int]) -> tuple[str, ...]:
            key = tuple(row)
            found = node_tuples.get(key)
            if found is None:
                found = node_tuples[key] = tuple(names[i] for i in row if i != none)
            return found

        changes = [RangeChange(start, end, as_names(before), as_names(after))
                   for start, end, before, after in zip(
                       self.starts[firsts].tolist(), self.bounds[lasts].tolist(),
                       old_lists[firsts].tolist(), new_lists[firsts].tolist())]
        if len(changes) > 1:  # the first and last range may meet across position 0
            head, tail = changes[0], changes[-1]
            if (tail.end == head.start and tail.end != head.end
                    and (tail.old_nodes, tail.new_nodes) == (head.old_nodes, head.new_nodes)):
                changes[0] = RangeChange(tail.start, head.end, head.old_nodes, head.new_nodes)
                changes.pop()
        return changes

    def handed_over(self, node: str, to: Collection[str]) -> list[tuple[int, int]]:
        """Inclusive position intervals ``node`` replicates in the old ring but not in the
        new, whose new replicas (those not in the old list) are all in ``to``: what
        ``node`` may drop once they hold it."""
        me = None if self.same else self._index(node)
        if me is None:
            return []
        old_lists, new_lists = self.old_lists, self.new_lists
        receivers = np.array([self.names.index(n) for n in to if n in self.names],
                             dtype=np.int64)
        gainers = self._only_in(new_lists, old_lists)
        rows = ((old_lists == me).any(axis=1) & ~(new_lists == me).any(axis=1)
                & gainers.any(axis=1) & (~gainers | np.isin(new_lists, receivers)).all(axis=1))
        return self._intervals(rows)

    def gained_from(self, node: str, sources: Collection[str],
                    unless_lost_by: Collection[str] = ()) -> dict[str, list[tuple[int, int]]]:
        """Per node of ``sources``: the intervals ``node`` gains that it held in the old
        ring, leaving out ranges any node of ``unless_lost_by`` stops replicating."""
        me = None if self.same else self._index(node)
        if me is None:
            return {}
        rows = self._gains(me)
        excluded = np.array([self.names.index(n) for n in unless_lost_by if n in self.names],
                            dtype=np.int64)
        if excluded.size:
            losers = self._only_in(self.old_lists, self.new_lists)
            rows &= ~(losers & np.isin(self.old_lists, excluded)).any(axis=1)
        found = {}
        for source in sources:
            index = self._index(source)
            if index is not None:
                intervals = self._intervals(rows & (self.old_lists == index).any(axis=1))
                if intervals:
                    found[source] = intervals
        return found

    def _intervals(self, rows: np.ndarray) -> list[tuple[int, int]]:
        """The ranges where ``rows`` holds, adjacent ones merged, as sorted inclusive
        intervals."""
        chosen = np.nonzero(rows)[0]
        if chosen.size == 0:
            return []
        breaks = np.nonzero(np.diff(chosen) != 1)[0]
        firsts = chosen[np.append(0, breaks + 1)]
        lasts = chosen[np.append(breaks, chosen.size - 1)]
        intervals: list[tuple[int, int]] = []
        for start, end in zip(self.starts[firsts].tolist(), self.bounds[lasts].tolist()):
            intervals += RangeChange(start, end, (), ()).intervals()
        return sorted(intervals)


def _lists_at(ring: HashRing, tokens: np.ndarray, positions: np.ndarray, count: int,
              names: list[str], width: int) -> np.ndarray:
    """Preference lists of ``ring`` at ``positions``, as indices into ``names`` padded with
    ``len(names)`` to ``width`` columns."""
    none = len(names)
    lists = np.full((len(positions), width), none, dtype=np.int64)
    if len(tokens) == 0:
        return lists
    table = ring._preference_table(count)
    index = np.searchsorted(tokens, positions, side="left")
    index[index == len(tokens)] = 0
    remap = np.array([names.index(n) for n in ring._names[:-1]] + [none], dtype=np.int64)
    rows = table[index].astype(np.int64)
    rows[rows == _SPLIT] = len(remap) - 1
    lists[:, :rows.shape[1]] = remap[rows]
    return lists
