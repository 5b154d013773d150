"""Quorum accounting, pure: what replicas answered and whether a read or write is done
(riak_kv's put_core/get_core under the coordinator), and the shapes of replicas' answers
(a read's answer and its records' are zring.protocol's: the client core counts reads too)."""

from __future__ import annotations

from dataclasses import dataclass, field

from zring.protocol import Message, MsgType
from zring.storage.base import Record

__all__ = ["Quorum", "batch_write_outcome", "quorum_in_each", "write_outcome",
           "write_quorum_state"]


@dataclass(slots=True)
class Quorum:
    """A client write or read this node coordinates."""

    route: tuple[bytes, ...]
    request_id: int
    kind: MsgType
    key: str
    needed: int
    counted: list[str]                      # nodes whose answers count towards the quorum
    record: Record | None = None            # the write, for PUT/DELETE
    replicas: list[str] = field(default_factory=list)  # the key's preference list
    # for writes during a ring change: the preference lists of every ring some node may be
    # routing by (current, previous, future); the write needs ``needed`` acks in each
    sets: list[list[str]] = field(default_factory=list)
    hinted_for: dict[str, str] = field(default_factory=dict)  # stand-in -> replica it covers
    acks: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    replies: dict[str, Record | None] = field(default_factory=dict)
    answered: bool = False
    spares: list[str] = field(default_factory=list)  # reads: live replicas not asked yet
    newer: list | None = None   # writes: the newest version a refusing replica holds
    refused: int = 0            # writes: replicas that refused it for a newer version
    # reads whose replicas disagreed: the newest record, written back to a write quorum
    # (replicas known to hold it) before the answer, so no later read returns an older one
    newest: Record | None = None
    holders: set[str] = field(default_factory=set)
    writing_back: int = 0       # write-backs not answered yet
    wrote_own: bool = False     # our own copy was written back


def write_quorum_state(op: Quorum) -> tuple[bool, bool]:
    """(every replica set has its quorum of acks, every set can still get it)."""
    if len(op.sets) == 1 and not op.hinted_for:  # the common case: no change under way
        return (len(op.acks) >= op.needed,
                len(op.counted) - len(op.failed) >= op.needed)
    cover = op.hinted_for
    acked = {cover.get(x, x) for x in op.acks}
    open_ = {cover.get(x, x) for x in op.counted if x not in op.failed}
    done = possible = True
    for replicas in op.sets:
        needed = min(op.needed, len(replicas))
        if sum(1 for x in replicas if x in acked) < needed:
            done = False
        if sum(1 for x in replicas if x in open_) < needed:
            possible = False
    return done, possible


def quorum_in_each(sets: list[list[str]], holders: set[str], needed: int) -> bool:
    """``holders`` make a quorum of ``needed`` (at most the set's size) in every set."""
    return all(sum(1 for x in replicas if x in holders) >= min(needed, len(replicas))
               for replicas in sets)


def write_outcome(reply: Message | None) -> tuple[bool, list | None]:
    """(taken, the newer version it was refused for) from a replica's answer to one
    record of a client write."""
    if reply is None or reply.type != MsgType.OK:
        return False, None
    newer = reply.body.get("newer")
    if not newer:
        return True, None
    refusal = newer[0]
    if not is_refusal(refusal):
        return False, None
    return False, [refusal[1], refusal[2]]


def batch_write_outcome(reply: Message | None, count: int) -> tuple[bool, dict[int, list]]:
    """(answered, position -> newer version held) from a replica's answer to ``count``
    records of client writes."""
    if reply is None or reply.type != MsgType.OK:
        return False, {}
    refused: dict[int, list] = {}
    for item in reply.body.get("newer") or ():
        if not is_refusal(item) or not 0 <= item[0] < count:
            return False, {}
        refused[item[0]] = [item[1], item[2]]
    return True, refused


def is_refusal(item: object) -> bool:
    """``[index, timestamp, writer]``: a replica refused the record at ``index``."""
    return (item.__class__ is list and len(item) == 3 and type(item[0]) is int
            and type(item[1]) is int and 0 <= item[1] < 1 << 63 and item[2].__class__ is str)
