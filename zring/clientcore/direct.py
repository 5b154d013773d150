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

from zring.clientcore.batches import cut_indexes
from zring.clientcore.requests import Exchange, Request, Steps
from zring.errors import NotCoordinated, ProtocolError, VersionConflict, ZringError
from zring.protocol import (
    Message,
    MsgType,
    is_read_wire,
    newest_of,
    record_from_wire,
    record_to_wire,
    wire_read_body,
    write_body,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from zring.clientcore.routing import Routing, RoutingTable

__all__ = ["direct_mget", "direct_mput", "direct_read", "direct_write", "replica_endpoints"]


def _settled(routes: RoutingTable) -> Routing | None:
    """The ring the client may coordinate quorums over: known, fresh and settled."""
    routing = routes.routing
    if routing is None or routes.stale or not routing.settled:
        return None
    return routing


def replica_endpoints(routes: RoutingTable, key: str, n: int | None,
                      now: float) -> tuple[Routing, list[str], list[str]] | None:
    """(routing, the key's replica ids, their endpoints) if the client may coordinate the
    key's quorum itself now: a ring known, fresh and settled, and each of the ``n``
    replicas up as far as the client can tell. None: a node coordinates."""
    routing = _settled(routes)
    if routing is None:
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
        return write_body([body["ts"], body["writer"]], stored, nodes), False
    if refused == n:
        raise _refused_everywhere(body["key"], newer)
    _note_failures(routes, exchange, replies, now)
    unanswered = not exchange.ended_early(replies) and None in replies
    return None, unanswered


def _refused_everywhere(key: str, held: list | None) -> VersionConflict:
    """Every replica refused a write for the newer version ``held``: it was applied nowhere
    (the client may stamp it again above that version)."""
    return VersionConflict(
        f"replicas of {key!r} hold a newer version {held} than this write's, from a "
        "concurrent write or a clock ahead of this client's: no replica took it; put again "
        "to write over it", held=held, acked=[], all_refused=True)


def direct_read(routes: RoutingTable, ids: Iterator[int], timeout: float, body: dict,
                now: float) -> Steps:
    """Coordinate a GET ``body`` (``key``, ``n``, ``r``) over the key's replicas; returns
    the reply body a node would give, or None when a node must coordinate it (r=1
    included: the replica a token-aware GET goes to answers from its own copy, one hop
    already)."""
    key = body["key"]
    routing = _settled(routes)
    if routing is None or (body.get("r") or routing.read_quorum) < 2:
        return None
    found = replica_endpoints(routes, key, body.get("n"), now)
    if found is None:
        return None
    routing, nodes, endpoints = found
    n = len(nodes)
    r = body.get("r") or min(routing.read_quorum, n)
    if not 1 < r <= n:
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
    newest = newest_of(records)
    asked = nodes[:r]
    if newest is not None and any(r is None or r.version != newest.version for r in records):
        holders = {node for node, record in zip(asked, records, strict=True)
                   if record is not None and record.version == newest.version}
        held = yield from _write_back(routes, ids, timeout, routing, newest, nodes, endpoints,
                                      holders, now)
        if not held:
            return None
    return wire_read_body(None if newest is None else record_to_wire(newest), asked)


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


def direct_mget(routes: RoutingTable, ids: Iterator[int], timeout: float, keys: list[str],
                sizes: list[int], r: int | None, now: float) -> Steps:
    """Coordinate an MGET of ``keys`` over their replicas: each key read from R of them,
    keys sharing those R replicas in one DIRECT_READ_MANY per replica (frames cut as a
    batch's). Returns each key's reply entry as a node would give it, None for the keys a
    node must read (their replicas disagree: a node writes the newest back first; a
    replica failed, was silent, refused, or seems down), or None for the whole batch when
    the ring is not settled or r is 1 (a node coordinates it: one hop already)."""
    routing = _settled(routes)
    if routing is None or not keys:
        return None
    n = routing.replicas
    r = r or min(routing.read_quorum, n)
    if not 1 < r <= n:
        return None
    groups = _replica_groups(routes, routing, keys, n, r, now)
    if groups is None:
        return None
    fingerprint = routing.fingerprint
    chunks = _frames(ids, routing, groups, sizes, MsgType.DIRECT_READ_MANY, lambda chunk: {
        "keys": [keys[i] for i in chunk], "ring": fingerprint, "n": n})
    exchange = Exchange([request for *_, requests in chunks for request in requests],
                        timeout)
    replies = _outcome((yield exchange))
    entries: list[dict | None] = [None] * len(keys)
    failed = False
    at = 0
    for chosen, chunk, requests in chunks:
        answers = replies[at:at + len(requests)]
        at += len(requests)
        if any(reply is None or reply.type != MsgType.OK for reply in answers):
            failed = True
            continue
        columns = [reply.body.get("records") for reply in answers]
        if any(not isinstance(c, list) or len(c) != len(chunk) for c in columns):
            raise ProtocolError("a replica answered a batch read with another count of keys")
        served = list(chosen)
        for position, index in enumerate(chunk):
            entries[index] = _agreed(keys[index], [c[position] for c in columns], served)
    if failed:
        _note_failures(routes, exchange, replies, now)
    return entries


def _frames(ids: Iterator[int], routing: Routing, groups: dict[tuple[str, ...], list[int]],
            sizes: list[int], msg_type: MsgType, body_of: Callable[[list[int]], dict]
            ) -> list[tuple[tuple[str, ...], list[int], list[Request]]]:
    """Each group's keys cut into frames (as a batch's), each frame one request to each of
    the group's nodes: (nodes, key indexes, requests)."""
    chunks = []
    for nodes, indexes in groups.items():
        endpoints = [routing.addresses[node] for node in nodes]
        for chunk in cut_indexes(indexes, sizes):
            chunks.append((nodes, chunk, _requests(ids, msg_type, body_of(chunk), endpoints)))
    return chunks


def _replica_groups(routes: RoutingTable, routing: Routing, keys: list[str], n: int, r: int,
                    now: float) -> dict[tuple[str, ...], list[int]] | None:
    """Key indexes by the R replicas each is read from: the first R of its replicas in this
    client's own order of nodes (so keys sharing replicas share frames, and clients spread
    their reads); None if a replica of some key seems down (a node coordinates then)."""
    preferred = [routing.node_of[e] for e in routing.preferred if e in routing.node_of]
    rank = {node: position for position, node in enumerate(preferred)}
    addresses = routing.addresses
    if len(addresses) <= n:   # every node holds every key: one group
        nodes = [node for node in preferred if node in routing.ring]
        if len(nodes) < r or any(routes.avoided(addresses[x], now) for x in nodes):
            return None
        return {tuple(nodes[:r]): list(range(len(keys)))}
    groups: dict[tuple[str, ...], list[int]] = {}
    usable: dict[str, bool] = {}
    get_nodes = routing.ring.get_nodes
    for index, key in enumerate(keys):
        nodes = get_nodes(key, n)
        for node in nodes:
            up = usable.get(node)
            if up is None:
                endpoint = addresses.get(node)
                up = usable[node] = endpoint is not None and not routes.avoided(endpoint, now)
            if not up:
                return None
        if len(nodes) < n:
            return None
        chosen = tuple(sorted(nodes, key=rank.__getitem__)[:r])
        groups.setdefault(chosen, []).append(index)
    return groups


def _agreed(key: str, wires: list, served_by: list[str]) -> dict | None:
    """A key's read entry if its replicas' copies agree (the same version, or none has
    it); None if they differ (a node reads it, writing the newest back first)."""
    first = wires[0]
    for wire in wires:
        if wire is not None and not is_read_wire(wire, key):
            raise ProtocolError(f"a replica answered a batch read of {key!r} with junk")
        if (wire is None) != (first is None) or (
                wire is not None and (wire[2] != first[2] or wire[3] != first[3])):
            return None
    return wire_read_body(first, served_by)


def direct_mput(routes: RoutingTable, ids: Iterator[int], timeout: float, keys: list[str],
                items: list[list], sizes: list[int], w: int | None, writer: str,
                now: float) -> Steps:
    """Coordinate an MPUT of stamped ``items`` ([key, value, ts]) over their replicas: keys
    sharing a preference list go in one DIRECT_WRITE_MANY to each of its N replicas. Returns
    (each key's reply entry as a node would give it, or None for the keys a node must
    finish with their stamps; the indexes of keys whose copies went unanswered), or None
    for the whole batch when the ring is not settled or a replica seems down."""
    routing = _settled(routes)
    if routing is None or not keys:
        return None
    n = routing.replicas
    w = w or min(routing.write_quorum, n)
    if not 1 <= w <= n:
        return None
    groups = _replica_groups(routes, routing, keys, n, n, now)
    if groups is None:
        return None
    fingerprint = routing.fingerprint
    chunks = _frames(ids, routing, groups, sizes, MsgType.DIRECT_WRITE_MANY, lambda chunk: {
        "items": [items[i] for i in chunk], "writer": writer, "ring": fingerprint, "n": n})
    requests = [request for *_, requests in chunks for request in requests]
    # one frame per replica (the usual batch): done once W replicas answered (each key's
    # refusals, if any, then go to a node); more frames: every reply is waited for
    exchange = Exchange(requests, timeout, quorum=w if len(chunks) == 1 else None)
    replies = _outcome((yield exchange))
    early = exchange.ended_early(replies)
    entries: list[dict | None] = [None] * len(keys)
    uncertain: set[int] = set()
    at = 0
    for nodes, chunk, chunk_requests in chunks:
        answers = replies[at:at + len(chunk_requests)]
        at += len(chunk_requests)
        stored: list[list[str]] = [[] for _ in chunk]
        refused: list[list] = [[] for _ in chunk]
        for node, reply in zip(nodes, answers, strict=True):
            if reply is None or reply.type != MsgType.OK:
                continue
            newer = {}
            for row in reply.body.get("newer") or ():
                if isinstance(row, list) and len(row) == 3 and type(row[0]) is int:
                    newer[row[0]] = row[1:]
            for position in range(len(chunk)):
                held = newer.get(position)
                if held is None:
                    stored[position].append(node)
                else:
                    refused[position].append(held)
        silent = not early and None in answers
        for position, index in enumerate(chunk):
            if len(stored[position]) >= w:
                entries[index] = write_body([items[index][2], writer], stored[position],
                                            nodes)
            elif len(refused[position]) == n:
                held = max(refused[position])
                entries[index] = {"error": VersionConflict.code, "held": held,
                                  "all_refused": True, "message": _refused_everywhere(
                                      keys[index], held).message}
            elif silent:
                uncertain.add(index)
    if any(entry is None for entry in entries):
        _note_failures(routes, exchange, replies, now)
    return entries, uncertain
