"""The client API, once for both clients (as redis-py's command layer).

Each public method checks its arguments at once (a bad one raises InvalidRequest before
anything is sent), builds the command's steps and hands them to the transport's ``_run``:
:class:`zring.client.Client` runs them blocking and returns the result;
:class:`zring.aio.AsyncClient` returns an awaitable of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from zring.clientcore import results
from zring.clientcore.batches import entry_bytes
from zring.clientcore.direct import direct_mget, direct_mput
from zring.clientcore.options import (
    check_count,
    check_key,
    check_keys,
    check_text,
    check_value,
    check_weight,
    mput_pairs,
)
from zring.clientcore.requests import Steps
from zring.clientcore.results import (  # the types the methods return
    ClusterStatus,
    DeleteResult,
    GetResult,
    MembershipResult,
    PutResult,
    RingState,
)
from zring.clientcore.session import Session
from zring.clientcore.stamps import CONFLICT_RETRIES, restampable
from zring.errors import InvalidRequest, Unavailable
from zring.protocol import MsgType

if TYPE_CHECKING:
    from zring.ring import HashRing

__all__ = ["Commands", "Progress"]

# bound once: a bound method made per call would be one more object kept by each request
_get_result, _put_result = GetResult.from_body, PutResult.from_body
_delete_result = DeleteResult.from_body

Progress = Callable[[results.MemberInfo], None]   # called with a joining or leaving member


class Commands(Session):
    """The requests a client makes; ``_run`` (the transport's) carries them out."""

    _ring_cache: tuple[int, HashRing] | None = None   # get_nodes' ring, by fingerprint

    def _run(self, steps: Steps) -> Any:
        raise NotImplementedError

    # -------------------------------------------------------------- data

    def put(self, key: str, value: bytes | str, *, replicas: int | None = None,
            w: int | None = None) -> PutResult:
        """Write ``value``; succeeds once ``w`` of the ``replicas`` replicas stored it."""
        return self._run(self._write(MsgType.PUT, {
            "key": check_key(key), "value": check_value(value),
            "n": check_count(replicas, "replicas"), "w": check_count(w, "w")}, _put_result))

    def get(self, key: str, *, r: int | None = None, replicas: int | None = None) -> GetResult:
        """Read the newest value among ``r`` replicas (``found`` is False if there is none)."""
        body = {"key": check_key(key), "n": check_count(replicas, "replicas"),
                "r": check_count(r, "r")}
        return self._run(self._read(body, _get_result))

    def delete(self, key: str, *, w: int | None = None,
               replicas: int | None = None) -> DeleteResult:
        """Write a tombstone for ``key`` (deleting a missing key succeeds too)."""
        return self._run(self._write(MsgType.DELETE, {
            "key": check_key(key), "n": check_count(replicas, "replicas"),
            "w": check_count(w, "w")}, _delete_result))

    def mget(self, keys: Iterable[str], *, r: int | None = None) -> list[GetResult]:
        """Read many keys: one MGET per replica node (up to 1,000 keys a frame), all in
        flight at once. Results in key order; the first key that failed raises its error
        (``details``: ``key`` and ``index``) once every key has answered."""
        return self._run(self._mget(check_keys(keys), check_count(r, "r")))

    def mput(self, items: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str]], *,
             w: int | None = None) -> list[PutResult]:
        """Write many keys as :meth:`mget` reads them; each key needs its own W acks.
        Results in item order; a key that failed raises its error (the others stand)."""
        pairs = [(check_key(k), check_value(v)) for k, v in mput_pairs(items)]
        return self._run(self._mput(pairs, check_count(w, "w")))

    # -------------------------------------------------------------- ring and cluster

    def ring_state(self) -> RingState:
        return self._run(self._call(MsgType.RING_STATE, {}, convert=RingState.from_body))

    def cluster_status(self) -> ClusterStatus:
        return self._run(self._call(MsgType.CLUSTER_STATUS, {},
                                    convert=ClusterStatus.from_body))

    def ping(self) -> dict:
        return self._run(self._call(MsgType.PING, {}))

    def node_stats(self, node_id: str) -> dict[str, int]:
        """``node_id``'s counters since it started: rejected frames, refused connections,
        forbidden requests, overloads, dropped sends..."""
        return self._run(self._at_member(check_text(node_id, "node id"), MsgType.STATS, {},
                                         lambda body: dict(body["counters"])))

    def get_node(self, key: str) -> str:
        """The node that owns ``key`` (its first replica), from the cluster's current ring."""
        return self._run(self._converted(self._get_nodes(check_key(key), 1),
                                         lambda nodes: nodes[0]))

    def get_nodes(self, key: str, count: int | None = None) -> list[str]:
        """The key's preference list: ``count`` (default: the cluster's N) distinct nodes."""
        return self._run(self._get_nodes(check_key(key), check_count(count, "count")))

    def local_keys(self, node_id: str, *, limit: int | None = None) -> list[str]:
        """Keys stored on ``node_id`` itself (asked directly, not through a coordinator)."""
        body = {"limit": check_count(limit, "limit")}
        return self._run(self._at_member(check_text(node_id, "node id"), MsgType.LOCAL_KEYS,
                                         body, lambda reply: list(reply["keys"])))

    # -------------------------------------------------------------- membership

    def plan(self, action: str, node_id: str, *, weight: float | None = None,
             timeout: float = 120) -> dict:
        """A dry run of ``add`` or ``remove`` of ``node_id``: per node the records and bytes
        it holds, would send and would receive, and the balance (peak/mean records per
        node) before and after. Nothing moves."""
        if action not in ("add", "remove"):
            raise InvalidRequest(f"plan action must be add or remove, not {action!r}")
        body = {"action": action, "node_id": check_text(node_id, "node id")}
        if check_weight(weight) is not None:
            body["weight"] = weight
        return self._run(self._call(MsgType.PLAN, body, timeout=timeout, retries=0))

    def add_node(self, node_id: str, address: str, *, wait: bool = True,
                 timeout: float = 120,
                 progress: Progress | None = None) -> MembershipResult:
        """Admit the running node at ``address``; with ``wait``, return once it is normal
        (it has streamed its ranges) or raise Timeout after ``timeout`` seconds.
        ``progress`` is called with the joining member at each poll (its ``transfer``)."""
        return self._run(self._add_node(check_text(node_id, "node id"),
                                        check_text(address, "address"), wait, timeout,
                                        progress))

    def remove_node(self, node_id: str, *, graceful: bool = True, wait: bool = True,
                    timeout: float = 120,
                    progress: Progress | None = None) -> MembershipResult:
        """Decommission ``node_id``: gracefully (it hands its ranges over, then leaves) or,
        with ``graceful=False``, at once (for a dead node; its replicas are rebuilt by the
        others). With ``wait``, return once the other nodes see it as left."""
        return self._run(self._remove_node(check_text(node_id, "node id"), bool(graceful),
                                           wait, timeout, progress))

    def rebalance(self, timeout: float = 600) -> dict:
        """Move every record to the nodes that should hold it (all nodes, in parallel); sent
        once, never retried: it is a long operation."""
        return self._run(self._call(MsgType.REBALANCE, {}, timeout=timeout, retries=0))

    def repair(self, timeout: float = 600) -> dict:
        """Anti-entropy now: every pair of replicas compares hash trees and exchanges the
        records that differ. Returns the summed figures (sessions, segments_differing,
        records_pulled, records_pushed, bytes_exchanged). Sent once, never retried."""
        return self._run(self._call(MsgType.REPAIR, {}, timeout=timeout, retries=0))

    # -------------------------------------------------------------- the steps

    @staticmethod
    def _converted(steps: Steps, convert: Callable[[Any], Any]) -> Steps:
        return convert((yield from steps))

    def _mget(self, keys: list[str], r: int | None) -> Steps:
        sizes = [entry_bytes(key) for key in keys]
        entries = None
        if self.token_aware:   # read from the replicas here while the ring is settled
            if (steps := self._routing_steps()) is not None:
                yield from steps
            entries = yield from direct_mget(self._routes, self._ids, self.timeout, keys,
                                             sizes, r, self._monotonic())
        if entries is None:
            rest, entries = list(range(len(keys))), [None] * len(keys)
        else:   # those whose replicas disagreed or failed: a node reads them
            rest = [index for index, entry in enumerate(entries) if entry is None]
        if rest:
            got, _ = yield from self._batch(
                MsgType.MGET, [keys[i] for i in rest], [sizes[i] for i in rest],
                lambda chunk: {"keys": [keys[rest[i]] for i in chunk], "r": r, "n": None},
                "keys")
            for index, entry in zip(rest, got, strict=True):
                entries[index] = entry
        got = results.batch_results(entries, keys, GetResult.from_body)
        for entry in entries:
            self._stamps.observe_body(entry)
        return got

    def _mput(self, pairs: list[tuple[str, bytes | str]], w: int | None) -> Steps:
        stamps, wall_ms = self._stamps, self._wall_ms
        items = [[key, value, stamps.next(wall_ms())] for key, value in pairs]
        keys = [key for key, _ in pairs]
        sizes = [entry_bytes(key, value) for key, value in pairs]

        def frames(indexes: list[int]) -> Steps:
            return self._batch(MsgType.MPUT, [keys[i] for i in indexes],
                               [sizes[i] for i in indexes],
                               lambda chunk: {"items": [items[indexes[i]] for i in chunk],
                                              "w": w, "n": None, "writer": stamps.writer},
                               "items")
        direct = None
        if self.token_aware:   # written to the replicas here while the ring is settled
            if (steps := self._routing_steps()) is not None:
                yield from steps
            direct = yield from direct_mput(self._routes, self._ids, self.timeout, keys,
                                            items, sizes, w, stamps.writer, self._monotonic())
        if direct is None:
            entries, uncertain = yield from frames(list(range(len(items))))
        else:   # those short of W stored: a node finishes them, with their stamps
            entries, uncertain = direct
            rest = [index for index, entry in enumerate(entries) if entry is None]
            if rest:
                got, unsure = yield from frames(rest)
                for index, entry in zip(rest, got, strict=True):
                    entries[index] = entry
                uncertain.update(rest[i] for i in unsure)
        for _ in range(CONFLICT_RETRIES):
            for entry in entries:
                if isinstance(entry, dict):
                    stamps.observe_conflict(entry.get("held"))
            again = restampable(entries, uncertain)
            if not again:
                break
            for index in again:   # applied nowhere: stamped again above what is held
                items[index][2] = stamps.next(wall_ms())
            retried, unsure = yield from frames(again)
            for index, entry in zip(again, retried, strict=True):
                entries[index] = entry
            uncertain.update(again[i] for i in unsure)
        put = results.batch_results(entries, keys, PutResult.from_body)
        for entry in entries:
            stamps.observe_body(entry)
        return put

    def _get_nodes(self, key: str, count: int | None) -> Steps:
        state = RingState.from_body((yield from self._call(MsgType.RING_STATE, {})))
        cached = self._ring_cache
        if cached is None or cached[0] != state.fingerprint:   # rebuilt when it changes
            cached = self._ring_cache = (state.fingerprint, state.hash_ring())
        nodes = cached[1].get_nodes(key, state.replicas if count is None else count)
        if not nodes:
            raise Unavailable("the ring has no nodes")
        return nodes

    def _at_member(self, node_id: str, msg_type: MsgType, body: dict,
                   convert: Callable[[dict], Any]) -> Steps:
        member, _ = yield from self._member(node_id)
        return convert((yield from self._call_at(member.address, msg_type, body)))

    def _add_node(self, node_id: str, address: str, wait: bool, timeout: float,
                  progress: Progress | None) -> Steps:
        deadline = self._monotonic() + timeout
        reply = yield from self._call(MsgType.ADD_NODE, {"node_id": node_id,
                                                         "address": address})
        if not wait:
            return MembershipResult(reply.get("node_id", node_id), reply.get("status", ""))
        # the joiner itself first: its own status carries its transfer live (the others'
        # copy comes by gossip, up to a gossip interval late)
        endpoints = [address] + [s for s in self.seeds if s != address]
        return (yield from self._wait_for_status(node_id, "normal", deadline, endpoints,
                                                 progress, subject=address))

    def _remove_node(self, node_id: str, graceful: bool, wait: bool, timeout: float,
                     progress: Progress | None) -> Steps:
        deadline = self._monotonic() + timeout
        leaving, status = yield from self._member(node_id)
        reply = yield from self._call(MsgType.REMOVE_NODE, {"node_id": node_id,
                                                            "graceful": graceful})
        self._seeds.move_off(leaving.address)  # it is about to exit: ask someone else
        if not wait:
            return MembershipResult(reply.get("node_id", node_id), reply.get("status", ""))
        others = [s for s in self.seeds if s != leaving.address]
        others += [m.address for m in status.members
                   if m.node_id != node_id and m.status != "left" and m.address not in others]
        if progress is not None and graceful:
            others = [leaving.address, *others]  # live progress while it hands data over
        return (yield from self._wait_for_status(node_id, "left", deadline, others, progress,
                                                 subject=leaving.address))
