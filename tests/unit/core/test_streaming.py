"""core/streaming.py: paged range pulls (join, takeover) and record pushes (leave,
rebalance), driven by hand: each request a stream sends is answered (or failed) by the test."""

from __future__ import annotations

from coresim import part_context

from zring.core.clocks import NodeClock
from zring.core.replica import Replica
from zring.core.streaming import RangePull, RecordPush, chunk_intervals, subtract_intervals
from zring.core.topology import Topology
from zring.hashing import key_position
from zring.protocol import Message, MsgType
from zring.storage import MemoryStore
from zring.storage.base import Record
from zring.versions import Version

FULL = (0, (1 << 64) - 1)
NOW = 1000.0


class Peers:
    """The ``call`` a stream is given: it keeps each request for the test to answer, and
    serves RANGE_PULL pages from each peer's store through a real replica part."""

    def __init__(self, **stores: MemoryStore) -> None:
        self.stores = stores
        self.sent: list[tuple[str, MsgType, dict, object]] = []   # not answered yet
        self.log: list[tuple[str, MsgType, dict]] = []            # every request
        self._replicas: dict[str, Replica] = {}

    def call(self, node_id, msg_type, body, on_reply, now):
        self.sent.append((node_id, msg_type, body, on_reply))
        self.log.append((node_id, msg_type, body))
        return []

    def take(self, node_id: str | None = None):
        """The oldest request not answered yet (to ``node_id``)."""
        index = next(i for i, s in enumerate(self.sent) if node_id in (None, s[0]))
        return self.sent.pop(index)

    def serve(self, request, now: float = NOW) -> list:
        """Answer a RANGE_PULL as the peer's replica part would."""
        node_id, msg_type, body, on_reply = request
        assert msg_type == MsgType.RANGE_PULL
        replica = self._replicas.get(node_id)
        if replica is None:
            ctx = part_context(node_id, peers=(), store=self.stores[node_id])
            replica = self._replicas[node_id] = Replica(ctx, NodeClock(ctx, now),
                                                        Topology(ctx, now), lambda t: True)
        [reply] = replica.handlers[MsgType.RANGE_PULL]((b"x",), Message(
            MsgType.RANGE_PULL, 1, body), now)
        return on_reply(node_id, reply.message, now)

    def serve_all(self, now: float = NOW, limit: int = 1000) -> int:
        served = 0
        while self.sent and served < limit:
            self.serve(self.take(), now)
            served += 1
        assert not self.sent, "the stream never ended"
        return served


def record(key: str, value=b"v", timestamp: int = 1 << 20, writer: str = "w") -> Record:
    return Record(key, value, Version(timestamp, writer), key_position(key))


def store_with(keys, **kwargs) -> MemoryStore:
    store = MemoryStore()
    store.put_many(record(k, **kwargs) for k in keys)
    return store


def contents(store: MemoryStore) -> dict:
    return {k: store.get(k) for k in store.keys(include_tombstones=True)}


def pull(peers: Peers, groups, store=None, **kwargs) -> RangePull:
    settings = dict(per_chunk=4, page_records=10, in_flight_per_source=1, retry_s=0.5)
    settings.update(kwargs)
    return RangePull("test", store if store is not None else MemoryStore(), groups,
                     call=peers.call, **settings)


def slices(count: int) -> list[tuple[int, int]]:
    width = (1 << 64) // count
    return [(i * width, (i + 1) * width - 1) for i in range(count)]


# ---------------------------------------------------------------- interval helpers


def test_subtract_intervals_keeps_what_no_cut_covers():
    assert subtract_intervals([(0, 99)], [(10, 19), (50, 200)]) == [(0, 9), (20, 49)]
    assert subtract_intervals([(0, 9), (20, 29)], [(5, 24)]) == [(0, 4), (25, 29)]
    assert subtract_intervals([(0, 9)], []) == [(0, 9)]
    assert subtract_intervals([(0, 9)], [(0, 9)]) == []


def test_chunk_intervals_sorts_dedups_and_cuts():
    chunks = chunk_intervals([(30, 39), (0, 9), (10, 19), (0, 9), (20, 29)], 2)
    assert chunks == [[(0, 9), (10, 19)], [(20, 29), (30, 39)]]
    assert chunk_intervals([], 4) == []


# ---------------------------------------------------------------- RangePull


def test_a_pull_pages_through_its_source_each_page_after_the_last():
    keys = [f"k{i}" for i in range(45)]
    peers = Peers(b=store_with(keys))
    stream = pull(peers, [("b", (), [FULL])])
    assert stream.pump(NOW) == [] and len(peers.sent) == 1   # one page in flight at a time
    first = peers.sent[0][2]
    assert first["after"] is None and first["limit"] == 10
    pages = peers.serve_all()
    afters = [body["after"] for _, _, body in peers.log]
    assert afters[0] is None and afters[1:] == sorted(afters[1:]) and len(set(afters)) == pages
    assert pages == 5   # 45 records, 10 a page: four full pages and the rest
    assert stream.done and stream.records_received == 45
    assert contents(stream.store) == contents(peers.stores["b"])


def test_a_failed_page_is_retried_from_the_same_cursor_after_retry_s():
    peers = Peers(b=store_with([f"k{i}" for i in range(30)]))
    stream = pull(peers, [("b", (), [FULL])])
    stream.pump(NOW)
    peers.serve(peers.take())                      # page 1 arrives
    node, _, body, on_reply = peers.take()         # page 2 is lost
    assert body["after"] is not None
    assert on_reply(node, None, NOW) == [] and not peers.sent
    assert stream.failing("b") and stream.next_retry_at() == NOW + 0.5
    assert stream.pump(NOW + 0.4) == [] and not peers.sent    # not before its time
    stream.pump(NOW + 0.5)
    retried = peers.sent[0][2]
    assert retried["after"] == body["after"] and retried["intervals"] == body["intervals"]
    peers.serve_all(NOW + 0.5)
    assert not stream.failing("b") and stream.done and stream.records_received == 30


def test_a_malformed_page_stores_nothing_and_is_asked_again():
    peers = Peers(b=store_with(["a", "b"]))
    stream = pull(peers, [("b", (), [FULL])])
    stream.pump(NOW)
    node, _, body, on_reply = peers.take()
    on_reply(node, Message(MsgType.OK, 1, {"records": [["a"]], "more": False, "last": 5}), NOW)
    assert stream.store.count() == 0 and not stream.done and stream.failing("b")
    stream.pump(NOW + 1)
    assert peers.sent[0][2]["after"] == body["after"]
    peers.serve_all(NOW + 1)
    assert stream.done and stream.store.count() == 2


def test_a_gone_source_is_rerouted_to_every_fallback_and_each_copy_must_finish():
    older, newer = record("x", b"old", 1 << 20), record("x", b"new", 2 << 20)
    c, d = MemoryStore(), MemoryStore()
    c.put_many([older, record("only-c")])
    d.put_many([newer, record("only-d")])
    peers = Peers(b=MemoryStore(), c=c, d=d)
    stream = pull(peers, [("b", ("c", "d"), slices(8))], per_chunk=4)
    assert stream.chunks == 2
    stream.pump(NOW)
    in_flight = peers.take("b")          # chunk 0 is out; chunk 1 waits in b's queue
    assert stream.reroute("b") == 1      # the queued chunk moves at once
    assert sorted(s[0] for s in peers.sent) == [] and set(stream.pending_sources()) >= {"c", "d"}
    in_flight[3]("b", None, NOW)         # the chunk in flight fails: it follows
    stream.pump(NOW)
    assert {s[0] for s in peers.sent} == {"c", "d"}
    assert all(s[0] != "b" for s in peers.sent)
    peers.serve_all()
    assert stream.done
    assert {k: r.value for k, r in contents(stream.store).items()} == {
        "x": b"new", "only-c": b"v", "only-d": b"v"}   # any one fallback may lack a write


def test_a_chunk_without_fallbacks_waits_for_its_source():
    peers = Peers(b=store_with(["k"]))
    stream = pull(peers, [("b", (), [FULL])])
    assert stream.reroute("b") == 0
    stream.pump(NOW)
    assert [s[0] for s in peers.sent] == ["b"]
    peers.serve_all()
    assert stream.done


def test_a_dropped_source_counts_as_finished():
    peers = Peers(b=MemoryStore())
    stream = pull(peers, [("b", (), slices(8))], per_chunk=4)
    stream.pump(NOW)
    node, _, _, on_reply = peers.take()
    assert stream.drop_source("b") == 1      # the queued chunk is abandoned
    on_reply(node, None, NOW)                # the one in flight fails: abandoned too
    assert stream.done and not peers.sent and stream.pending_sources() == []


def test_a_pull_resumed_from_its_progress_skips_what_it_has():
    keys = [f"k{i}" for i in range(200)]
    peers = Peers(b=store_with(keys))
    first = pull(peers, [("b", (), slices(8))], per_chunk=4, page_records=15)
    assert first.chunks == 2
    first.pump(NOW)
    while first.progress()["done"] == []:        # chunk 0 to its end
        peers.serve(peers.take())
    peers.serve(peers.take())                    # and one page of chunk 1
    progress = first.progress()
    assert progress["done"] == [0] and set(progress["cursors"]) == {1}
    first.cancelled = True                       # the node crashed: what is in flight is lost
    peers.sent.clear()
    cursor = progress["cursors"][1]
    resumed = pull(peers, [("b", (), slices(8))], store=first.store, resume=progress,
                   per_chunk=4, page_records=15)
    assert resumed.resumed == 1 and resumed.records_received == progress["records"]
    resumed.pump(NOW)
    body = peers.sent[0][2]
    assert body["after"] == cursor               # chunk 1 from its cursor, chunk 0 skipped
    assert all(high > cursor for _, high in body["intervals"])
    peers.serve_all()
    assert resumed.done and sorted(resumed.store.keys()) == sorted(keys)
    pulled_again = [b for _, _, b in peers.log[-5:] if b["after"] is None]
    assert resumed.records_received == len(keys) and not pulled_again


def test_a_cancelled_pull_sends_nothing_and_ignores_late_pages():
    peers = Peers(b=store_with(["k"]))
    stream = pull(peers, [("b", (), [FULL])])
    stream.pump(NOW)
    stream.cancelled = True
    assert peers.serve(peers.take()) == [] and stream.store.count() == 0
    assert stream.pump(NOW) == [] and not peers.sent and not stream.done


# ---------------------------------------------------------------- RecordPush


class Acks:
    """The ``call`` a push is given: REPLICA_WRITE requests kept until the test answers."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list, object]] = []

    def call(self, node_id, msg_type, body, on_reply, now):
        assert msg_type == MsgType.REPLICA_WRITE
        self.sent.append((node_id, [w[0] for w in body["records"]], on_reply))
        return []

    def answer(self, node_id: str, ok: bool = True, now: float = NOW) -> list[str]:
        """Answer the oldest write to ``node_id``; returns the keys it carried."""
        index = next(i for i, s in enumerate(self.sent) if s[0] == node_id)
        _, keys, on_reply = self.sent.pop(index)
        on_reply(node_id, Message(MsgType.OK, 1, {}) if ok else None, now)
        return keys


def push(acks: Acks, store, route=lambda r: ["b", "c"], drop=lambda r: True,
         **kwargs) -> RecordPush:
    settings = dict(page_records=10, retry_s=0.5, pages_in_flight=2)
    settings.update(kwargs)
    return RecordPush("test", store, route, drop, call=acks.call, **settings)


def by_position(store) -> list[Record]:
    return store.scan_range(*FULL, limit=10_000)


def test_a_push_sends_pages_to_every_target_and_drops_a_page_once_all_acked():
    store = store_with([f"k{i}" for i in range(30)])
    ordered = by_position(store)
    acks = Acks()
    stream = push(acks, store)
    stream.pump(NOW)
    assert [s[0] for s in acks.sent] == ["b", "c", "b", "c"]   # two pages in flight
    first_page = acks.answer("b")
    assert first_page == [r.key for r in ordered[:10]]
    assert stream.progress()["after"] is None and store.count() == 30   # c has not acked
    acks.answer("c")
    assert stream.progress() == {"after": ordered[9].position, "records": 10,
                                 "bytes": stream.bytes_done}
    assert store.count() == 20 and stream.records_dropped == 10
    assert [s[0] for s in acks.sent] == ["b", "c", "b", "c"]   # the third page went out
    while acks.sent:
        acks.answer(acks.sent[0][0])
    assert stream.done and store.count() == 0 and stream.records_sent == 60


def test_pages_complete_in_order():
    store = store_with([f"k{i}" for i in range(20)])
    acks = Acks()
    stream = push(acks, store, route=lambda r: ["b"])
    stream.pump(NOW)
    _, second_keys, on_second = acks.sent.pop(1)
    on_second("b", Message(MsgType.OK, 1, {}), NOW)     # page 2 acked first
    assert stream.progress()["after"] is None and store.count() == 20
    acks.answer("b")                                    # then page 1: both complete
    assert stream.progress()["records"] == 20 and store.count() == 0


def test_a_push_drops_only_records_unchanged_since_it_read_them():
    store = store_with(["a", "b", "c"])
    acks = Acks()
    stream = push(acks, store, route=lambda r: ["t"])
    stream.pump(NOW)
    store.put(record("b", b"newer", 2 << 20))           # a write while the page travels
    acks.answer("t")
    assert sorted(store.keys()) == ["b"] and store.get("b").value == b"newer"
    assert stream.records_dropped == 2


def test_a_push_keeps_what_drop_does_not_approve_and_skips_records_without_targets():
    store = store_with([f"k{i}" for i in range(6)])
    acks = Acks()
    stream = push(acks, store, route=lambda r: ["t"] if r.key < "k3" else [],
                  drop=lambda r: r.key == "k0")
    stream.pump(NOW)
    assert sorted(acks.sent[0][1]) == ["k0", "k1", "k2"]
    acks.answer("t")
    assert stream.done and sorted(store.keys()) == [f"k{i}" for i in range(1, 6)]


def test_a_failed_ack_is_resent_after_retry_s_to_that_target_only():
    store = store_with([f"k{i}" for i in range(5)])
    acks = Acks()
    stream = push(acks, store)
    stream.pump(NOW)
    acks.answer("b")
    keys = acks.answer("c", ok=False)
    assert stream.next_retry_at() == NOW + 0.5 and not stream.done
    assert stream.pump(NOW + 0.4) == [] and not acks.sent
    stream.pump(NOW + 0.5)
    assert [(s[0], s[1]) for s in acks.sent] == [("c", keys)]
    acks.answer("c")
    assert stream.done and store.count() == 0


def test_a_push_resumed_from_its_progress_starts_after_it():
    store = store_with([f"k{i}" for i in range(25)])
    ordered = by_position(store)
    acks = Acks()
    first = push(acks, store, route=lambda r: ["t"], drop=lambda r: False)
    first.pump(NOW)
    acks.answer("t")
    progress = first.progress()
    assert progress["after"] == ordered[9].position and progress["records"] == 10
    acks.sent.clear()                                   # the node crashed
    resumed = push(acks, store, route=lambda r: ["t"], drop=lambda r: False,
                   resume=progress)
    resumed.pump(NOW)
    sent = [k for _, keys, _ in acks.sent for k in keys]
    assert sent == [r.key for r in ordered[10:]]
    while acks.sent:
        acks.answer("t")
    assert resumed.done and resumed.progress()["records"] == 25


def test_a_cancelled_push_ignores_late_acks():
    store = store_with(["a"])
    acks = Acks()
    stream = push(acks, store)
    stream.pump(NOW)
    stream.cancelled = True
    acks.answer("b")
    acks.answer("c")
    assert store.count() == 1 and stream.records_sent == 0 and stream.pump(NOW) == []
