"""What every part of the node core shares: config, store, member table, counters, log, peer
calls and the loop cycle count; the shape of a part; the request checks they all apply."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from zring.config import NodeConfig
from zring.core.calls import Calls
from zring.core.effects import Effect
from zring.errors import InvalidRequest, NotMember, ZringError
from zring.membership import MemberStatus, MemberTable
from zring.protocol import MsgType
from zring.storage.base import Store

__all__ = ["Handler", "NodeContext", "OwnAcks", "Part"]

# (route, message, now) -> effects; a handler raises ZringError for a refusal
Handler = Callable[..., list[Effect]]
FULL_RANGE = (0, (1 << 64) - 1)


class OwnAcks:
    """Our own writes of this loop cycle, each with what undoes its acknowledgement should
    the cycle's commit fail (a full disk): a write counts only once it is on disk."""

    def __init__(self) -> None:
        self._entries: list[tuple[int, Callable[[float], list[Effect]]]] = []

    def add(self, ticks: int, revoke: Callable[[float], list[Effect]]) -> None:
        self._entries.append((ticks, revoke))

    def committed_before(self, ticks: int) -> None:
        """The cycles before ``ticks`` committed: their writes stand."""
        if self._entries:
            self._entries = [entry for entry in self._entries if entry[0] >= ticks]

    def revoke_from(self, cycle: int, now: float) -> list[Effect]:
        """The commit of ``cycle`` failed: undo its acknowledgements."""
        revoked = [revoke for made, revoke in self._entries if made >= cycle]
        self._entries = []
        effects: list[Effect] = []
        for revoke in revoked:
            effects += revoke(now)
        return effects


class NodeContext:
    """Shared by the parts; each part owns its own state besides."""

    def __init__(self, config: NodeConfig, store: Store, members: MemberTable,
                 log) -> None:
        self.config = config
        self.store = store
        self.members = members
        self.node_id = config.node_id
        self.stats: dict[str, int] = defaultdict(int)
        self.log = log
        self.calls = Calls(self._address_of, config.request_timeout_s, self.stats, log)
        self.own_acks = OwnAcks()
        self.ticks = 0          # loop cycles finished (the node core counts them)

    def _address_of(self, node_id: str) -> str | None:
        member = self.members.get(node_id)
        return None if member is None else member.address

    def up_peers(self, now: float) -> list[str]:
        """Peers not gone and not declared down."""
        return [m.node_id for m in self.members.peers()
                if m.status != MemberStatus.LEFT and self.members.is_up(m.node_id, now)]

    def check_serving(self) -> None:
        """A node that left (or was removed) holds no replicas: it must not pretend to."""
        if self.members.own.status == MemberStatus.LEFT:
            # ``left``: the node asked is the one gone (a client moves on to another)
            raise NotMember(f"{self.node_id} has left the cluster", left=self.node_id)

    def key_too_long(self, key: str) -> bool:
        """Over max_key_bytes in UTF-8 (a key of up to a quarter of it is never encoded)."""
        limit = self.config.max_key_bytes
        return len(key) * 4 > limit and len(key.encode("utf-8", "surrogatepass")) > limit

    def check_key(self, key: str) -> str:
        if self.key_too_long(key):
            size = len(key.encode("utf-8", "surrogatepass"))
            raise InvalidRequest(f"key of {size} bytes exceeds the limit of "
                                 f"{self.config.max_key_bytes}")
        return key

    def quorum_args(self, body: dict, quorum_name: str, default_quorum: int):
        """(n, quorum) of a request, checked; defaults from the config."""
        n = body.get("n") or self.config.replicas
        quorum = body.get(quorum_name) or min(default_quorum, n)
        if not 1 <= quorum <= n:
            raise InvalidRequest(f"{quorum_name}={quorum} must be between 1 and n={n}")
        if n > 64:
            raise InvalidRequest(f"n={n} exceeds 64 replicas")
        return n, quorum

    def failure(self, exc: Exception, request_type: str) -> ZringError:
        """The error a client gets for ``exc`` (call it in the ``except``): a ZringError as
        it is; anything else is a bug or an input no check foresaw, logged and counted, and
        the node keeps serving."""
        if isinstance(exc, ZringError):
            return exc
        self.stats["handler_errors"] += 1
        self.log.exception("request_failed", type=request_type)
        return ZringError(f"{self.node_id} failed on {request_type}: {type(exc).__name__}")


class Part:
    """One concern of the node: the requests it handles, its timers' work, its wake-up.
    Each part owns its state; the node core composes them."""

    handlers: dict[MsgType, Handler]

    def tick(self, now: float) -> list[Effect]:
        return []

    def next_deadline(self, now: float) -> float | None:
        """When ``tick`` has work next (``now``: the last tick's time)."""
        return None

    def shift_timers(self, step: float) -> None:
        """The wall clock stepped back by ``step``: each timer keeps the time it had left."""

    def commit_failed(self, cycle: int, now: float) -> None:
        """The group commit of loop cycle ``cycle`` failed: forget what it wrote."""
