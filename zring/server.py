"""The one ZMQ poll loop of a node: sockets in, NodeCore, effects out.

Sockets: a ROUTER for requests (clients and peers), a PUB for gossip, one DEALER per peer
address for our own requests (identity = our node id, so the peer's ROUTER answers back on
it), and one SUB connected to every member's PUB. Nothing here blocks: the poll timeout is
the core's nearest deadline, and every send is non-blocking (a full or unconnected queue
drops the message; the core's deadline then answers for it).

With security on (``config.keys_dir``), the ROUTER and the PUB are CurveZMQ servers whose
clients pyzmq's ZAP handler checks against the allowed keys, every DEALER and the SUB
connect with the node's own key, and each request reaches the core with its sender's
``"role:name"``. A monitor on each server socket reports every refused handshake, which is
logged and counted here.

The loop waits on the sockets' ZMQ_FD notification descriptors with ``select.poll`` rather
than ``zmq_poll``, which asks every socket for its events (two system calls each) before
and after each wait. A ZMQ_FD is edge-triggered: it signals that a socket's events may have
changed, and any operation on the socket can consume that signal. So the loop keeps the set
of sockets known to hold input, and after every cycle asks each socket it used (the ROUTER
it answered on, the DEALERs it sent on) whether input arrived meanwhile.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import secrets
import select
import signal
import time
from collections.abc import Callable

import structlog
import zmq
from zmq.utils.monitor import parse_monitor_message

from zring.config import NodeConfig
from zring.core.batching import coalesce_sends
from zring.core.effects import Publish, Reply, Send, Shutdown, Subscribe, Unsubscribe
from zring.core.node import NodeCore
from zring.errors import InvalidRequest, StorageError
from zring.log import FailureStreak
from zring.protocol import MAX_FRAME_BYTES, encode
from zring.security import (
    HANDSHAKE_FAILURES,
    KeyAuthenticator,
    NodeKeys,
    refusal_reason,
    user_ids,
)
from zring.storage import MemoryStore, open_store

__all__ = ["NodeServer", "run_node"]

log = structlog.get_logger("zring.server")

_HWM = 10_000
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)   # plain ints: IntFlag math is slower
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
_MAX_ROUTE_FRAMES = 4   # identity, optional delimiter, request: longer ones get an error
_GOSSIP_TOPIC = b""
_CONNECT_GRACE_S = 1.0    # how long a new peer connection may take before sends to it drop
_PARKED_RETRY_S = 0.005


class NodeServer:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        if config.fsync not in ("always", "periodic"):
            raise ValueError(f"fsync must be 'always' or 'periodic', not {config.fsync!r}")
        if config.data_dir:
            os.makedirs(config.data_dir, exist_ok=True)
            self.store = open_store(config.data_dir, config.store, fsync=config.fsync)
        else:
            self.store = MemoryStore()
        self.context = zmq.Context.instance()
        self.keys = NodeKeys.load(config.keys_dir, config.node_id) if config.keys_dir else None
        self.auth: KeyAuthenticator | None = None
        if self.keys is not None:   # the ZAP handler answers before any socket binds
            self.auth = KeyAuthenticator(self.context, self.keys.allowed, ("router", "gossip"),
                                         config.node_id)
            self.auth.start()
        self.router = self._socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted peer reclaims its id
        self.pub = self._socket(zmq.PUB)
        self.sub = self._socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, _GOSSIP_TOPIC)
        if self.keys is not None:
            self.keys.serve(self.router, "router")
            self.keys.serve(self.pub, "gossip")
            self.keys.own.connect(self.sub)
        self.router.bind(config.address)
        self.pub.bind(config.gossip_address)
        self.dealers: dict[str, zmq.Socket] = {}
        self.dealer_created_at: dict[str, float] = {}
        # Requests to a peer whose connection is still being set up (IMMEDIATE refuses
        # them until it is): retried each cycle for a moment rather than dropped.
        self.parked: list[tuple[str, bytes, float]] = []
        self.poller = select.poll()
        self.socket_by_fd: dict[int, zmq.Socket] = {}
        # what each polled socket's messages go to (one message's frames -> effects), and
        # whether they are read as bytes (False: as zmq.Frames, for their User-Id)
        self.take: dict[zmq.Socket, tuple[Callable[[list], list], bool]] = {}
        self.readable: set[zmq.Socket] = set()   # input known to wait: no sleep before it
        self.used: set[zmq.Socket] = set()       # sent on this cycle: check before sleeping
        self._watch(self.router, self._take_request, copy=self.keys is None)
        self._watch(self.sub, self._take_gossip)
        self.monitors: list[zmq.Socket] = []
        if self.keys is not None:
            for name, sock in (("router", self.router), ("gossip", self.pub)):
                monitor = sock.get_monitor_socket(HANDSHAKE_FAILURES)
                self.monitors.append(monitor)
                self._watch(monitor, functools.partial(self._take_refusal, name))
        self.core = NodeCore(config, self.store, time.time())
        self.running = True
        self.reload_requested = False   # SIGHUP: read the allowed keys again
        self.allowed_users = user_ids(self.keys.allowed) if self.keys else frozenset()
        self.log = log.bind(node_id=config.node_id)
        self.sync_failures = FailureStreak(self.log, "sync")
        # a signal's handler runs between byte codes: this pipe (``signal.set_wakeup_fd``)
        # ends the wait it arrived in, or a SIGTERM would wait for the poll's timeout
        self.wakeup_fd, self.wakeup_write_fd = os.pipe()
        for fd in (self.wakeup_fd, self.wakeup_write_fd):
            os.set_blocking(fd, False)
        self.poller.register(self.wakeup_fd, select.POLLIN)

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, _HWM)
        sock.setsockopt(zmq.RCVHWM, _HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        return sock

    def _dealer(self, address: str) -> zmq.Socket:
        dealer = self.dealers.get(address)
        if dealer is None:
            dealer = self._socket(zmq.DEALER)
            # unguessable: ROUTER_HANDOVER gives an identity's route to whoever connects
            # with it last, so a guessed one would steal our replies
            dealer.setsockopt_string(zmq.IDENTITY, f"{self.config.node_id}:{os.getpid()}:"
                                                   f"{secrets.token_hex(8)}")
            # Queue only on a live connection: a request to a dead peer fails at once (its
            # deadline answers for it) instead of piling up in memory until it returns.
            dealer.setsockopt(zmq.IMMEDIATE, 1)
            if self.keys is not None:
                self.keys.own.connect(dealer)
            dealer.connect(address)
            self.dealer_created_at[address] = time.monotonic()
            self.dealers[address] = dealer
            self._watch(dealer, functools.partial(self._take_reply, address))
        return dealer

    def _watch(self, sock: zmq.Socket, take: Callable[[list], list], copy: bool = True) -> None:
        """Poll ``sock``; its messages go to ``take``."""
        self.take[sock] = (take, copy)
        fd = sock.getsockopt(zmq.FD)
        self.socket_by_fd[fd] = sock
        self.poller.register(fd, select.POLLIN)
        self.used.add(sock)   # input may be waiting already: ask it before the first sleep

    def _wait(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s`` unless input is known to wait; add every socket whose
        events say input arrived to ``readable``."""
        for sock in self.used:
            if sock.get(_EVENTS) & _POLLIN:
                self.readable.add(sock)
        self.used.clear()
        # rounded up: waking a little before a deadline would only spin until it
        timeout_ms = 0 if self.readable or timeout_s <= 0 else min(
            math.ceil(timeout_s * 1000), 1000)
        for fd, _ in self.poller.poll(timeout_ms):
            sock = self.socket_by_fd.get(fd)
            if sock is None:   # the signal pipe: empty it (the handler has run)
                try:
                    os.read(fd, 512)
                except BlockingIOError:
                    pass
                continue
            # asking for its events takes the socket's pending commands (clears the fd)
            if sock not in self.readable and sock.get(_EVENTS) & _POLLIN:
                self.readable.add(sock)

    # ------------------------------------------------------------------ loop

    def serve(self) -> None:
        self._perform(self._committed(lambda effects: effects.extend(
            self.core.start(time.time()))))
        self.log.info("node_listening", address=self.config.address,
                      gossip=self.config.gossip_address, fsync=self.config.fsync,
                      security="curve" if self.keys is not None else "off",
                      allowed_keys=len(self.keys.allowed) if self.keys is not None else 0)
        periodic = self.config.fsync == "periodic"
        next_sync_at = time.monotonic() + self.config.fsync_period_s
        while self.running:
            if self.reload_requested:
                self.reload_requested = False
                self._reload_keys()
            deadline = self.core.next_deadline() - time.time()
            if self.parked:
                deadline = min(deadline, _PARKED_RETRY_S)
            if periodic:
                deadline = min(deadline, next_sync_at - time.monotonic())
            self._wait(deadline)
            ready, self.readable = self.readable, set()

            def cycle(effects: list, ready=ready) -> None:
                for sock in ready:
                    if self._drain(sock, effects):   # the rest waits for the next cycle
                        self.readable.add(sock)
                effects += self.core.tick(time.time())
            self._perform(self._committed(cycle))
            if self.parked:
                self._retry_parked()
            if periodic and time.monotonic() >= next_sync_at:
                self._sync()
                next_sync_at = time.monotonic() + self.config.fsync_period_s
        # a batch's own reads and writes queued for the next cycle are done before leaving
        self._perform(self._committed(lambda effects: effects.extend(
            self.core.finish_own_work(time.time()))))

    def _committed(self, cycle: Callable[[list], None]) -> list:
        """Run ``cycle`` (it appends effects) in one group commit, and the effects to
        perform: replies leave only after the commit. If the commit fails (a full disk),
        the core turns what it acknowledged into errors, and the node serves on."""
        effects: list = []
        try:
            with self.store.group_commit():
                cycle(effects)
        except StorageError as exc:
            effects = self.core.commit_failed(effects, exc, time.time())
        return effects

    def _sync(self) -> None:
        """Sync the store (fsync periodic). A store that refuses syncs (a full disk) fails
        every period: logged once, then a count every few seconds, then its recovery."""
        now = time.monotonic()
        try:
            self.store.sync()
        except StorageError as exc:   # the data stays committed; the next period retries
            self.core.count("syncs_failed")
            self.sync_failures.failed(now, error=str(exc))
            return
        self.sync_failures.recovered(now)

    def _drain(self, sock: zmq.Socket, effects: list, budget: int = 1000) -> bool:
        """Read ``sock``'s messages into ``effects``, called when its events said input
        waits, until they say none does (asking is cheaper than a recv that raises Again);
        True: the budget ran out first."""
        take, copy = self.take[sock]
        for n in range(budget):
            if n and not sock.get(_EVENTS) & _POLLIN:
                return False
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return False
            effects += take(frames)
        return True

    def _take_request(self, frames: list) -> list:
        if len(frames) > _MAX_ROUTE_FRAMES:
            identity = frames[0] if self.keys is None else frames[0].bytes
            return self.core.refuse_multipart(identity, len(frames))
        if self.keys is None:
            return self.core.handle_frame(tuple(frames[:-1]), frames[-1], time.time())
        last = frames[-1]   # zmq.Frames: the ZAP handler's User-Id rides on them
        try:
            user_id = last.get("User-Id")
        except zmq.ZMQError:   # no ZAP metadata: nothing this node admitted
            user_id = None
        if user_id not in self.allowed_users:   # admitted, then removed by a reload
            user_id = f"revoked:{user_id}"
        return self.core.handle_frame(tuple(f.bytes for f in frames[:-1]), last.bytes,
                                      time.time(), user_id)

    def _reload_keys(self) -> None:
        """The allowed keys again from the key directory (SIGHUP): new handshakes and every
        request check against them; a removed key's open connection is refused requests."""
        if self.keys is None or self.auth is None:
            self.log.warning("keys_not_reloaded", reason="security is off")
            return
        try:
            keys = NodeKeys.load(self.config.keys_dir, self.config.node_id)
        except InvalidRequest as exc:
            self.log.warning("keys_not_reloaded", reason=exc.message)
            return
        if (keys.server_secret, keys.own) != (self.keys.server_secret, self.keys.own):
            self.log.warning("keys_changed_need_restart",
                             reason="the cluster keypair or this node's own key changed")
        self.keys = dataclasses.replace(self.keys, allowed=keys.allowed)
        self.auth.allowed = dict(keys.allowed)
        self.allowed_users = user_ids(keys.allowed)
        self.log.info("keys_reloaded", allowed_keys=len(keys.allowed))

    def _take_refusal(self, socket_name: str, frames: list[bytes]) -> list:
        event = parse_monitor_message(frames)
        self.core.count("refused_connections")
        self.log.warning("connection_refused", socket=socket_name,
                         reason=refusal_reason(event["event"], event["value"]))
        return []

    def _take_gossip(self, frames: list[bytes]) -> list:
        if len(frames) != 1:
            self.core.count("bad_gossip")
            return []
        return self.core.handle_gossip(frames[0], time.time())

    def _take_reply(self, address: str, frames: list[bytes]) -> list:
        if len(frames) != 1:
            self.core.count("bad_replies")
            return []
        return self.core.handle_reply(address, frames[0], time.time())

    # ------------------------------------------------------------------ effects

    def _perform(self, effects) -> None:
        # a cycle's replica reads and writes to one peer leave as one BATCH frame
        for effect in coalesce_sends(effects):
            kind = type(effect)
            try:
                if kind is Reply:
                    self._reply(effect.route, encode(effect.message))
                elif kind is Send:
                    self._send(effect.address, encode(effect.message))
                elif kind is Publish:
                    self.pub.send(encode(effect.message), zmq.NOBLOCK)
                elif kind is Subscribe:
                    self.used.add(self.sub)
                    self.sub.connect(effect.gossip_address)
                elif kind is Unsubscribe:
                    self.used.add(self.sub)
                    self.sub.disconnect(effect.gossip_address)
                elif kind is Shutdown:
                    self.log.info("node_stopping", reason=effect.reason)
                    self.running = False
            except zmq.Again:
                self.core.count("sends_dropped")
            except zmq.ZMQError as exc:
                self.log.warning("effect_failed", effect=kind.__name__, error=str(exc))

    def _reply(self, route: tuple[bytes, ...], frame: bytes) -> None:
        # send_multipart without its per-frame type checks and IntFlag arithmetic; a ROUTER
        # takes a message whole once its first frame is accepted (or raises Again on it)
        router = self.router
        self.used.add(router)
        for part in route:
            router.send(part, _SNDMORE_NOBLOCK)
        router.send(frame, _NOBLOCK)

    def _send(self, address: str, frame: bytes) -> None:
        dealer = self._dealer(address)
        self.used.add(dealer)
        try:
            dealer.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            if time.monotonic() - self.dealer_created_at[address] < _CONNECT_GRACE_S:
                self.parked.append((address, frame, time.monotonic() + _CONNECT_GRACE_S))
            else:
                raise  # an established peer that is gone: the request's deadline answers

    def _retry_parked(self) -> None:
        parked, self.parked = self.parked, []
        now = time.monotonic()
        for address, frame, expires_at in parked:
            self.used.add(self.dealers[address])
            try:
                self.dealers[address].send(frame, zmq.NOBLOCK)
            except zmq.Again:
                if now < expires_at:
                    self.parked.append((address, frame, expires_at))
                else:
                    self.core.count("sends_dropped")

    def close(self) -> None:
        self._sync()
        for sock in (self.router, self.pub):
            if self.keys is not None:
                sock.disable_monitor()
        for sock in [self.router, self.pub, self.sub, *self.dealers.values(), *self.monitors]:
            sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()
        self.store.close()
        for fd in (self.wakeup_fd, self.wakeup_write_fd):
            os.close(fd)


def run_node(config: NodeConfig) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # a reload during start-up: no effect
    server = NodeServer(config)

    def stop(signum, frame):  # SIGTERM from supervisord: finish the current loop and exit
        server.running = False

    def reload(signum, frame):
        server.reload_requested = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    signal.set_wakeup_fd(server.wakeup_write_fd, warn_on_full_buffer=False)
    try:
        server.serve()
    finally:
        signal.set_wakeup_fd(-1)   # before its pipe is closed
        server.close()
    return 0
