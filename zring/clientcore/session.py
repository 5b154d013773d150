"""The state both clients share and the rules of sending over it, as command steps.

:class:`Session` holds the seeds, the retry policy, the routing table, the write stamps and
the request ids. Its generators are the parts every command is made of: Lazy Pirate over
one request or many at once (:meth:`Session._send`), fetching the ring, a batch cut into
frames and merged back, a stamped write and waiting for a member's status. The clocks are
the transport's (``monotonic`` seconds, ``wall_ms`` milliseconds), passed in.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from zring.clientcore.batches import cut_indexes, merge
from zring.clientcore.direct import direct_read, direct_write
from zring.clientcore.options import Seeds, client_options
from zring.clientcore.requests import Exchange, Gossip, Request, Sleep, Steps
from zring.clientcore.results import (
    ClusterStatus,
    MemberInfo,
    MembershipResult,
    RingState,
    unwrap,
)
from zring.clientcore.retry import Retry
from zring.clientcore.routing import RoutingTable
from zring.clientcore.stamps import CONFLICT_RETRIES, WriteStamps
from zring.errors import NotMember, Timeout, Unavailable, VersionConflict, ZringError
from zring.protocol import Message, MsgType

if TYPE_CHECKING:
    from zring.security import ClientKeys

__all__ = ["RING_FETCH_SOURCES", "RING_FETCH_TIMEOUT_S", "WAIT_POLL_S", "Session"]

WAIT_POLL_S = 0.1          # add_node / remove_node: pause between status polls
RING_FETCH_SOURCES = 3     # nodes asked for the ring, one after another, before giving up
RING_FETCH_TIMEOUT_S = 1.0  # each of them waited for at most this (or the client's timeout)


class Session:
    """What a client is, apart from its sockets and clocks."""

    # the transport's clocks: monotonic seconds and wall-clock milliseconds
    _monotonic: Callable[[], float]
    _wall_ms: Callable[[], int]

    def __init__(self, seeds: str | Sequence[str] | None = None, timeout: float = 5.0,
                 retries: int = 3, *, token_aware: bool = True,
                 keys: ClientKeys | None = None) -> None:
        """``seeds``: ROUTER endpoints (a list or a comma-separated str; default
        ``$ZRING_SEEDS``, else 127.0.0.1:7001..7003). ``timeout``: seconds to wait for each
        reply. ``retries``: how many times a silent request is resent, each time to the next
        endpoint. ``token_aware``: each key's request to one of its replicas (else through
        the seeds). ``keys``: for a cluster with security on, this client's CurveZMQ keys
        (``ClientKeys.load(key_file)``; None: a plain connection, which such a cluster
        refuses)."""
        self.seeds, self.timeout, retries = client_options(seeds, timeout, retries)
        self.retry = Retry(retries)
        self.token_aware = token_aware
        self.keys = keys
        self._seeds = Seeds(self.seeds, random.randrange(len(self.seeds)))  # spread clients
        self._routes = RoutingTable()
        self._stamps = WriteStamps()
        self._ids = itertools.count(random.getrandbits(32) + 1)
        self._setup()

    def _setup(self) -> None:
        """The transport's own state (its sockets, none open yet)."""

    @property
    def retries(self) -> int:
        return self.retry.retries

    # -------------------------------------------------------------- sending

    def _send(self, requests: list[Request], timeout: float | None = None,
              retry: Retry | None = None) -> Steps:
        """Lazy Pirate over ``requests`` at once: each goes to its endpoint; the silent ones
        are resent, after the backoff, to their next endpoint while tries remain. Once all
        ended, the first one's error (in order) is raised, a Timeout if it was silent
        throughout; else every request has its ``body``."""
        timeout = self.timeout if timeout is None else timeout
        retry = retry or self.retry
        pending, attempt = requests, 0
        while True:
            now = self._monotonic()
            for request in pending:
                request.endpoint = endpoint = self._where(request, attempt, now)
                request.tried.append(endpoint)
            replies = yield Exchange(pending, timeout)
            now, may_retry = self._monotonic(), attempt < retry.retries
            if len(pending) == 1:   # most sends: no list of the ones left to build
                if self._ended(pending[0], *replies, may_retry, now):
                    break
            else:
                # a loop, not a comprehension: that would make self, now and may_retry
                # cells, three more objects kept alive by every request in flight
                left = []
                for request, reply in zip(pending, replies, strict=True):
                    if not self._ended(request, reply, may_retry, now):
                        left.append(request)
                if not left:
                    break
                pending = left
            if not may_retry:
                break
            attempt += 1
            yield Sleep(retry.delay(attempt))
        for request in requests:
            if request.error is not None:
                raise request.error
            if request.body is None:
                raise request.timed_out(timeout)

    def _where(self, request: Request, attempt: int, now: float) -> str:
        """The endpoint of ``request``'s try number ``attempt``."""
        if not attempt:   # the node it is meant for, else its key's owner, else the seed
            if request.first:
                return request.first
            seed, key = self._seeds.current, request.key
            return seed if key is None else self._routes.owner_endpoint(key, seed, now)
        if request.key is None:   # the seeds
            return self._seeds.current
        if request.order is None:   # worked out after the owner was marked silent: past it
            request.order = self._routes.endpoints_for(request.key,
                                                       self._seeds.from_current(), now)
        return request.order[(attempt - 1) % len(request.order)]

    def _ended(self, request: Request, reply: Message | ZringError | None, may_retry: bool,
               now: float) -> bool:
        """Note the outcome of ``request``'s try; False: try it again."""
        endpoint = request.endpoint
        if reply is None:
            request.unanswered = True
            self._seeds.move_off(endpoint)
            if request.key is not None:
                self._routes.silent(endpoint, now)
            return False
        try:
            if isinstance(reply, ZringError):
                raise reply
            if request.key is None:
                try:
                    request.body = unwrap(reply, request.type)
                except NotMember as exc:
                    if "left" not in exc.details or not may_retry:
                        raise
                    self._seeds.move_off(endpoint)   # a seed that left: the next one
                    return False
            else:
                request.body = self._routes.unwrap(endpoint, reply, request.type,
                                                   may_retry=may_retry, now=now)
        except ZringError as exc:
            request.error = exc
        return request.body is not None or request.error is not None

    def _request(self, msg_type: MsgType, body: dict, key: str | None = None) -> Request:
        """A request for ``key``: routed to its replicas when the ring is known (after the
        steps of :meth:`_routing_steps`, if any were due)."""
        routed = key is not None and self.token_aware and self._routes.routing is not None
        return Request(msg_type, next(self._ids), body, key if routed else None)

    def _call(self, msg_type: MsgType, body: dict, key: str | None = None, *,
              timeout: float | None = None, retries: int | None = None,
              convert: Callable[[dict], Any] | None = None, observe: bool = False) -> Steps:
        """One request (Lazy Pirate); its reply body, made a result by ``convert`` if given
        (here rather than in one more generator around this one), its record version
        observed by the write stamps if ``observe``."""
        if key is not None and (steps := self._routing_steps()) is not None:
            yield from steps
        request = self._request(msg_type, body, key)
        yield from self._send([request], timeout,
                              None if retries is None else self.retry.with_retries(retries))
        if observe:
            self._stamps.observe_body(request.body)
        return request.body if convert is None else convert(request.body)

    def _call_at(self, endpoint: str, msg_type: MsgType, body: dict,
                 timeout: float | None = None) -> Steps:
        """One request to one node, sent once; its reply body."""
        request = Request(msg_type, next(self._ids), body, first=endpoint)
        yield from self._send([request], timeout, self.retry.with_retries(0))
        return request.body

    # -------------------------------------------------------------- routing

    def _routed(self) -> Steps:
        """Whether to route by the ring: token-aware and a ring known (fetched on first
        use, refetched when gossip or a reply says it is stale, at most every 0.5 s)."""
        if (steps := self._routing_steps()) is not None:
            yield from steps
        return self.token_aware and self._routes.routing is not None

    def _routing_steps(self) -> Steps | None:
        """The steps due before a routed request (reading gossip, fetching the ring), or
        None: most requests take none, and cost no generator for them."""
        if not self.token_aware:
            return None
        now = self._monotonic()
        due = self._routes.due(now)
        return None if due is None else self._refresh(*due, now)

    def _refresh(self, gossip: bool, fetch: bool, now: float) -> Steps:
        if gossip:
            yield Gossip([])
        if fetch:
            yield from self._fetch_ring(now)

    def _fetch_ring(self, now: float) -> Steps:
        routes = self._routes
        for endpoint in routes.ring_sources(self.seeds, now)[:RING_FETCH_SOURCES]:
            request = Request(MsgType.RING_STATE, next(self._ids), {}, first=endpoint)
            request.tried.append(endpoint)
            try:
                [reply] = yield Exchange([request], min(self.timeout, RING_FETCH_TIMEOUT_S))
                state = None if reply is None else \
                    RingState.from_body(unwrap(reply, MsgType.RING_STATE))
            except ZringError:
                state = None
            if state is None:   # silent or failing: the next one
                routes.silent(endpoint, self._monotonic())
                continue
            yield Gossip(routes.update(state, self._monotonic()))
            return

    # -------------------------------------------------------------- writes and batches

    def _write(self, msg_type: MsgType, body: dict, result: Callable[[dict], Any]) -> Steps:
        """A PUT or DELETE (its reply body made a ``result``), stamped once for all its
        resends. Refused for a newer version
        held, it is stamped again above it and resent only if no replica took it and no
        copy went unanswered (see WriteStamps); otherwise VersionConflict is raised."""
        stamps = self._stamps
        body["writer"] = stamps.writer
        for attempt in range(CONFLICT_RETRIES + 1):
            body["ts"] = stamps.next(self._wall_ms())
            if (steps := self._routing_steps()) is not None:
                yield from steps
            unanswered = False
            if self.token_aware:   # coordinated here while the ring is settled
                try:
                    reply, unanswered = yield from direct_write(
                        self._routes, self._ids, self.timeout, body, self._monotonic())
                except VersionConflict as exc:
                    if not stamps.stamp_again(exc, attempt, False):
                        raise
                    continue
                if reply is not None:
                    stamps.observe_body(reply)
                    return result(reply)
            request = self._request(msg_type, body, body["key"])
            request.unanswered = unanswered
            try:
                yield from self._send([request])
            except VersionConflict as exc:
                if not stamps.stamp_again(exc, attempt, request.unanswered):
                    raise
                continue
            stamps.observe_body(request.body)
            return result(request.body)
        raise AssertionError("unreachable")

    def _read(self, body: dict, result: Callable[[dict], Any]) -> Steps:
        """A GET (its reply body made a ``result``): coordinated here over the key's
        replicas while the ring is settled and r > 1 (see direct_read), else by a node."""
        if self.token_aware:
            if (steps := self._routing_steps()) is not None:
                yield from steps
            reply = yield from direct_read(self._routes, self._ids, self.timeout, body,
                                           self._monotonic())
            if reply is not None:
                self._stamps.observe_body(reply)
                return result(reply)
        return (yield from self._call(MsgType.GET, body, body["key"], convert=result,
                                      observe=True))

    def _batch(self, msg_type: MsgType, keys: list[str], sizes: list[int],
               make_body: Callable[[list[int]], dict], field: str) -> Steps:
        """Group ``keys`` by where they go, cut each group into frames (``sizes``: each
        key's bytes), send them all at once (Lazy Pirate), and return the per-key results
        in key order with the indexes of keys whose frame went unanswered somewhere."""
        routed = yield from self._routed()
        seed = self._seeds.current
        groups = self._routes.group(keys, seed, self._monotonic()) if routed else \
            ({seed: list(range(len(keys)))} if keys else {})
        cuts = [(endpoint, chunk) for endpoint, indexes in groups.items()
                for chunk in cut_indexes(indexes, sizes)]
        chunks = [chunk for _, chunk in cuts]
        requests = [Request(msg_type, next(self._ids), make_body(chunk),
                            keys[chunk[0]] if routed else None, endpoint)
                    for endpoint, chunk in cuts]
        if requests:
            yield from self._send(requests)
        entries = merge(len(keys), chunks, [r.body for r in requests], msg_type.name, field)
        if routed:
            for entry in entries:
                if isinstance(entry, dict) and "error" not in entry:
                    self._routes.note_reply(entry)
        unsure = {i for chunk, r in zip(chunks, requests, strict=True) if r.unanswered
                  for i in chunk}
        return entries, unsure

    # -------------------------------------------------------------- membership

    def _member(self, node_id: str) -> Steps:
        status = ClusterStatus.from_body((yield from self._call(MsgType.CLUSTER_STATUS, {})))
        member = status.member(node_id)
        if member is None or member.status == "left":
            raise NotMember(f"{node_id} is not a member of the cluster")
        return member, status

    def _wait_for_status(self, node_id: str, wanted: str, deadline: float,
                         endpoints: list[str],
                         progress: Callable[[MemberInfo], None] | None = None,
                         subject: str | None = None) -> Steps:
        """Poll the members at ``endpoints`` until one shows ``node_id`` as ``wanted``,
        staying with the first that answers (a silent or failing one is skipped until the
        deadline). ``subject``, the node's own endpoint, is polled for its live progress,
        but its own word is not enough that the others see it as ``wanted``."""
        if not endpoints:
            raise Unavailable(f"no other node to ask whether {node_id} is {wanted}")
        last_seen, last_error = "unknown", None
        index = 0
        while (remaining := deadline - self._monotonic()) > 0:
            endpoint = endpoints[index % len(endpoints)]
            try:
                body = yield from self._call_at(endpoint, MsgType.CLUSTER_STATUS, {},
                                                timeout=min(self.timeout, remaining))
            except (Timeout, Unavailable) as exc:
                last_error = exc
                index += 1
                continue
            member = ClusterStatus.from_body(body).member(node_id)
            last_seen = member.status if member else "unknown"
            if progress is not None and member is not None:
                progress(member)
            if last_seen == wanted:
                if endpoint != subject or len(endpoints) == 1:
                    return MembershipResult(node_id, wanted)
                index += 1  # confirm with another member at once
                continue
            yield Sleep(max(0.0, min(WAIT_POLL_S, deadline - self._monotonic())))
        detail = f" (last error: {last_error})" if last_seen == "unknown" and last_error else ""
        raise Timeout(f"{node_id} is still {last_seen}, not {wanted}, after waiting"
                      f"{detail}", node_id=node_id, status=last_seen)

    # -------------------------------------------------------------- probes (read-only)

    @property
    def seed(self) -> str:
        """The seed endpoint that requests about the cluster (and requests not routed by
        the ring) go to now. A client starts at a random seed, stays with it while it
        answers, and moves to the next when it goes silent or leaves."""
        return self._seeds.current

    @property
    def writer(self) -> str:
        """The writer id this client stamps its writes with (the ``writer`` of their
        versions, unique to each client)."""
        return self._stamps.writer

    @property
    def ring_fingerprint(self) -> int | None:
        """The fingerprint of the ring this client routes keys by (as ``ring_state()`` and
        ``cluster_status()`` report it); None until a token-aware client has fetched one."""
        routing = self._routes.routing
        return None if routing is None else routing.fingerprint

    @property
    def ring_stale(self) -> bool:
        """Whether the ring this client routes by may be out of date (gossip or a reply
        named another ring, a node went silent, or gossip was closed): it is refetched
        before the next routed request, at most every half second."""
        return self._routes.stale
