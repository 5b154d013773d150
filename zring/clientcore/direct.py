"""Client-coordinated quorums: a token-aware client reads and writes a key's replicas itself.

While the ring is settled (no member joining or leaving) and every replica of the key seems
up, the client is the key's coordinator, as in Dynamo's client-driven coordination: a write
goes to all N replicas at once, stamped by the client (``DIRECT_WRITE``), and is
acknowledged once W of them stored it; a read asks R replicas (``DIRECT_READ``) and returns
the newest version. Each replica takes such a request only if it is one of the key's
replicas on the ring the client names, settled, and ready; otherwise it answers
NotCoordinated.

The rules are the node coordinator's (``zring.core.coordinator``):

- a replica takes a write unless it holds a newer version, so a write acknowledged by W
  replicas is newer than every write acknowledged before it began (quorums intersect);
- a read whose replicas disagree writes the newest back until W replicas hold it, before it
  answers (blocking read repair: a later read cannot return an older value);
- anything short of that falls back to node coordination with the same stamp: a replica
  down, silent or refusing, a ring change, an error. Every replica refusing for a newer
  version held is a VersionConflict applied nowhere (the caller may stamp the write again).

Hints are the node coordinator's: a client that sees a replica down (its gossip silent, or
a request to it unanswered) lets a node coordinate, which keeps hints for it. A replica
that misses a client-coordinated write without the client noticing (its reply came after
the quorum) is brought up to date by read repair and anti-entropy repair.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zring.clientcore.requests import Exchange, Request, Steps
from zring.errors import NotCoordinated, ProtocolError, VersionConflict, ZringError
from zring.protocol import Message, MsgType, record_from_wire

if TYPE_CHECKING:
    from collections.abc import Iterator

    from zring.clientcore.routing import Routing, RoutingTable

__all__ = ["direct_read", "direct_write", "replica_endpoints"]


def replica_endpoints(routes: RoutingTable, key: str, n: int | None,
                      now: float) -> tuple[Routing, list[str], list[str]] | None:
    """(routing, the key's replica ids, their endpoints) if the client may coordinate the
    key's quorum itself now: a ring known, fresh and settled, and each of the ``n``
    replicas up as far as the client can tell. None: a node coordinates."""
    routing = routes.routing
    if routing is None or routes.stale or not routing.settled:
        return None
    nodes = routing.ring.get_nodes(key, n or routing.replicas)
    if len(nodes) < (n or routing.replicas):
        return None
    addresses = routing.addresses
    endpoints = []
    for node in nodes:
        endpoint = addresses.get(node)
        if endpoint is None or routes.avoided(endpoint, now):
            return None
        endpoints.append(endpoint)
    return routing, nodes, endpoints


def _outcome(replies: list) -> list[Message | None]:
    """A quorum exchange's replies; an error the transport met (the client was closed
    during the request) is raised."""
    for reply in replies:
        if isinstance(reply, ZringError):
            raise reply
    return replies


def _stored(reply: Message) -> bool:
    return reply.type == MsgType.OK and reply.body.get("stored") is True


def _requests(ids: Iterator[int], msg_type: MsgType, body: dict,
              endpoints: list[str]) -> list[Request]:
    requests = [Request(msg_type, next(ids), body, first=endpoint) for endpoint in endpoints]
    for request in requests:
        request.tried.append(request.endpoint)
    return requests


def _note_failures(routes: RoutingTable, exchange: Exchange, replies: list,
                   now: float) -> None:
    """What the failed replies say about the routing: a replica that refused to be
    coordinated by us means our ring may be stale; one silent until the timeout is
    avoided for a while (and gossip may say it is down)."""
    early = exchange.ended_early(replies)
    for request, reply in zip(exchange.requests, replies, strict=True):
        if reply is None:
            if not early:
                routes.silent(request.endpoint, now)
        elif reply.type == MsgType.ERROR and reply.body.get("code") == NotCoordinated.code:
            routes.stale = True


def direct_write(routes: RoutingTable, ids: Iterator[int], timeout: float, body: dict,
                 now: float) -> Steps:
    """Coordinate a stamped PUT or DELETE ``body`` (``key``, ``value`` (None: delete),
    ``ts``, ``writer``, ``n``, ``w``) over the key's replicas; returns (reply body, None)
    once W stored it, or (None, unanswered) when a node must coordinate it (``unanswered``:
    a copy went unanswered until the timeout, its fate unknown). Raises VersionConflict
    when every replica refused it for a newer version held (applied nowhere)."""
    found = replica_endpoints(routes, body["key"], body.get("n"), now)
    if found is None:
        return None, False
    routing, nodes, endpoints = found
    n = len(nodes)
    w = body.get("w") or min(routing.write_quorum, n)
    if not 1 <= w <= n:
        return None, False   # the node explains the error
    wire = {"key": body["key"], "value": body.get("value"), "ts": body["ts"],
            "writer": body["writer"], "ring": routing.fingerprint, "n": n}
    exchange = Exchange(_requests(ids, MsgType.DIRECT_WRITE, wire, endpoints), timeout,
                        quorum=w, accepts=_stored)
    replies = _outcome((yield exchange))
    stored, refused, newer = [], 0, None
    for node, reply in zip(nodes, replies, strict=True):
        if reply is None or reply.type != MsgType.OK:
            continue
        if reply.body.get("stored") is True:
            stored.append(node)
        else:
            refused += 1
            held = reply.body.get("newer")
            if isinstance(held, list) and (newer is None or held > newer):
                newer = held
    if len(stored) >= w:
        return {"version": [body["ts"], body["writer"]], "stored_on": stored,
                "replicated_to": nodes}, False
    if refused == n:
        raise VersionConflict(
            f"replicas of {body['key']!r} hold a newer version {newer} than this write's, "
            "from a concurrent write or a clock ahead of this client's: no replica took "
            "it; put again to write over it", held=newer, acked=[], all_refused=True)
    _note_failures(routes, exchange, replies, now)
    unanswered = not exchange.ended_early(replies) and None in replies
    return None, unanswered


def direct_read(routes: RoutingTable, ids: Iterator[int], timeout: float, body: dict,
                now: float) -> Steps:
    """Coordinate a GET ``body`` (``key``, ``n``, ``r``) over the key's replicas; returns
    the reply body a node would give, or None when a node must coordinate it."""
    key = body["key"]
    found = replica_endpoints(routes, key, body.get("n"), now)
    if found is None:
        return None
    routing, nodes, endpoints = found
    n = len(nodes)
    r = body.get("r") or min(routing.read_quorum, n)
    if not 1 <= r <= n:
        return None
    wire = {"key": key, "ring": routing.fingerprint, "n": n}
    exchange = Exchange(_requests(ids, MsgType.DIRECT_READ, wire, endpoints[:r]), timeout,
                        quorum=r)
    replies = _outcome((yield exchange))
    if any(reply is None or reply.type != MsgType.OK for reply in replies):
        _note_failures(routes, exchange, replies, now)
        return None
    records = []
    for reply in replies:
        record = reply.body.get("record")
        if record is not None:
            record = record_from_wire(record)
            if record.key != key:
                raise ProtocolError(f"a replica answered a read of {key!r} with another key")
        records.append(record)
    newest = max((r for r in records if r is not None), key=lambda r: r.version,
                 default=None)
    asked = nodes[:r]
    if newest is not None and any(r is None or r.version != newest.version for r in records):
        holders = {node for node, record in zip(asked, records, strict=True)
                   if record is not None and record.version == newest.version}
        held = yield from _write_back(routes, ids, timeout, routing, newest, nodes, endpoints,
                                      holders, now)
        if not held:
            return None
    return _read_body(newest, asked)


def _write_back(routes: RoutingTable, ids: Iterator[int], timeout: float, routing: Routing,
                newest, nodes: list[str], endpoints: list[str], holders: set[str],
                now: float) -> Steps:
    """Write ``newest`` back until a write quorum of the key's replicas holds it (blocking
    read repair); True once it does."""
    needed = min(routing.write_quorum, len(nodes)) - len(holders)
    if needed <= 0:
        return True
    targets = [endpoint for node, endpoint in zip(nodes, endpoints, strict=True)
               if node not in holders]
    wire = {"key": newest.key, "value": newest.value, "ts": newest.version.timestamp,
            "writer": newest.version.node_id, "ring": routing.fingerprint,
            "n": len(nodes), "cond": False}
    exchange = Exchange(_requests(ids, MsgType.DIRECT_WRITE, wire, targets), timeout,
                        quorum=needed, accepts=_stored)
    replies = _outcome((yield exchange))
    if sum(1 for reply in replies if reply is not None and _stored(reply)) >= needed:
        return True
    _note_failures(routes, exchange, replies, now)
    return False


def _read_body(newest, served_by: list[str]) -> dict:
    """As a node answers a read: the newest value and version (a tombstone: not found)."""
    if newest is None:
        return {"found": False, "value": None, "version": None, "served_by": served_by}
    version = [newest.version.timestamp, newest.version.node_id]
    found = newest.value is not None
    return {"found": found, "value": newest.value if found else None, "version": version,
            "served_by": served_by}

