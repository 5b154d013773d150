"""Batches: many requests in one frame, both from clients (MGET/MPUT) and between peers.

Peer requests that a node answers at once (replica reads and writes, hints) and that one poll
cycle sends to the same peer leave as one BATCH frame; the peer answers with one BATCH of the
replies, each still carrying its own request id. Under load that turns one frame, one wakeup
and one transaction per key into one per peer per cycle.
"""

from __future__ import annotations

import msgpack

from zring.core.effects import Effect, Send
from zring.protocol import MAX_FRAME_BYTES, Message, MsgType, cut, message_to_wire

__all__ = ["BATCHABLE", "BATCH_MAX_BYTES", "MAX_BATCH_KEYS", "encoded_size",
           "coalesce_sends"]

# Requests whose handler replies in the same call: safe to answer as one BATCH reply.
BATCHABLE = frozenset({MsgType.REPLICA_WRITE, MsgType.REPLICA_READ, MsgType.HINT_WRITE,
                       MsgType.REPLICA_READ_MANY})
MAX_BATCH_KEYS = 10_000     # keys in one MGET/MPUT, and messages in one BATCH
BATCH_MAX_BYTES = MAX_FRAME_BYTES // 4   # a BATCH (or its reply) is cut past this size


def coalesce_sends(effects: list[Effect]) -> list[Effect]:
    """Merge the batchable Sends to each address into one BATCH Send (order kept per peer)."""
    by_address: dict[str, list[int]] = {}
    for index, effect in enumerate(effects):
        if effect.__class__ is Send and effect.message.type in BATCHABLE:
            by_address.setdefault(effect.address, []).append(index)
    if all(len(indexes) < 2 for indexes in by_address.values()):
        return effects
    merged: list[Effect] = []
    first_of: dict[int, Send] = {}
    skip: set[int] = set()
    for address, indexes in by_address.items():
        if len(indexes) < 2:
            continue
        for chunk in _chunks(indexes, effects):
            wires = [message_to_wire(effects[i].message) for i in chunk]
            first_of[chunk[0]] = Send(address, Message(MsgType.BATCH, 0, {"messages": wires}))
            skip.update(chunk[1:])
    for index, effect in enumerate(effects):
        if index in first_of:
            merged.append(first_of[index])
        elif index not in skip:
            merged.append(effect)
    return merged


def _chunks(indexes: list[int], effects: list[Effect]) -> list[list[int]]:
    return cut(indexes, lambda i: encoded_size(effects[i].message.body), MAX_BATCH_KEYS,
               BATCH_MAX_BYTES)


def encoded_size(body: object) -> int:
    """The encoded size of a message body (msgpack's C packer: cheaper than walking it)."""
    return len(msgpack.packb(body, use_bin_type=True))
