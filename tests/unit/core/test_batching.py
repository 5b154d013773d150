"""core/batching.py: sends to one peer coalesced into BATCH frames, each deliverable."""

from __future__ import annotations

from zring.core.batching import coalesce_sends
from zring.core.effects import Publish, Send
from zring.protocol import Message, MsgType, encode


def test_coalesce_merges_batchable_sends_per_peer_and_keeps_the_rest_in_place():
    write = Message(MsgType.REPLICA_WRITE, 1, {"records": []})
    read = Message(MsgType.REPLICA_READ, 2, {"key": "k"})
    pull = Message(MsgType.RANGE_PULL, 3, {"intervals": [], "limit": 1})
    gossip = Publish(Message(MsgType.GOSSIP, 0, {"sender": "a", "members": []}))
    effects = [Send("a", write), gossip, Send("b", read), Send("a", read), Send("a", pull)]
    merged = coalesce_sends(effects)
    assert [type(e).__name__ for e in merged] == ["Send", "Publish", "Send", "Send"]
    batch = merged[0]
    assert batch.address == "a" and batch.message.type == MsgType.BATCH
    assert [w[1] for w in batch.message.body["messages"]] == [1, 2]
    assert merged[2].message is read and merged[3].message is pull  # alone: left as is


def test_coalesce_leaves_single_sends_untouched():
    effects = [Send("a", Message(MsgType.REPLICA_READ, 1, {"key": "k"})),
               Send("b", Message(MsgType.REPLICA_READ, 2, {"key": "k"}))]
    assert coalesce_sends(effects) is effects


def test_coalescing_cuts_batches_by_size_so_every_frame_is_deliverable():
    from zring.protocol import MAX_FRAME_BYTES
    value = b"x" * (4 * 1024 * 1024)
    sends = [Send("tcp://peer", Message(MsgType.REPLICA_WRITE, i,
                                        {"records": [[f"k{i}", value, 1, "n1"]]}))
             for i in range(17)]
    batches = coalesce_sends(sends)
    assert len(batches) >= 2
    assert all(len(encode(b.message)) < MAX_FRAME_BYTES for b in batches)
    assert sum(len(b.message.body["messages"]) if b.message.type == MsgType.BATCH else 1
               for b in batches) == 17
