"""What a node core asks its shell to do: the only way a core touches the outside world."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zring.errors import ZringError
from zring.protocol import Message, MsgType

__all__ = ["Effect", "Reply", "Send", "Publish", "Subscribe", "Unsubscribe", "Shutdown", "error",
           "error_entry", "ok", "reply_as", "Slot", "answer"]


@dataclass(slots=True)
class Reply:
    """Answer a request that arrived on the ROUTER, through its routing envelope.
    ``only_reads``: it tells what the store held and acknowledges nothing written, so it
    stands even if its loop cycle's commit fails (a full disk); other replies then become
    errors."""

    route: tuple[bytes, ...]
    message: Message
    only_reads: bool = False


@dataclass(slots=True)
class Send:
    """Send a request to the ROUTER at ``address`` (through that peer's DEALER)."""

    address: str
    message: Message


@dataclass(slots=True)
class Publish:
    """Publish a gossip message on the node's PUB socket."""

    message: Message


@dataclass(slots=True)
class Subscribe:
    """Receive gossip from the PUB socket at ``gossip_address``."""

    gossip_address: str


@dataclass(slots=True)
class Unsubscribe:
    gossip_address: str


@dataclass(slots=True)
class Shutdown:
    """The node has left the cluster and should exit cleanly."""

    reason: str


Effect = Reply | Send | Publish | Subscribe | Unsubscribe | Shutdown


def error(request_id: int, exc: ZringError) -> Message:
    """The ERROR reply carrying ``exc`` (its details, the request id aside)."""
    body = {"code": exc.code, "message": exc.message or str(exc)}
    if exc.details:
        body["details"] = {k: v for k, v in exc.details.items() if k != "request_id"}
    return Message(MsgType.ERROR, request_id, body)


def error_entry(exc: ZringError) -> dict:
    """One key's error in a batch's results (a conflict's held version, and whether every
    replica refused it, with it)."""
    entry = {"error": exc.code, "message": exc.message or str(exc)}
    for name in ("held", "all_refused"):
        if name in exc.details:
            entry[name] = exc.details[name]
    return entry


def reply_as(reply: Message, request_id: int) -> Message:
    """A peer's reply relayed to our own requester."""
    return Message(reply.type, request_id, reply.body)


def ok(route, request_id: int, body: dict, only_reads: bool = False) -> Reply:
    """An OK reply to the request ``request_id`` that came by ``route``."""
    return Reply(route, Message(MsgType.OK, request_id, body), only_reads)


@dataclass(slots=True)
class Slot:
    """The route of one key of a client batch (MGET/MPUT) that takes the single-key path:
    its answer fills the key's result instead of leaving as a reply."""

    deliver: Callable[[Message, bool], list[Effect]]   # (answer, only_reads) -> effects


def answer(route, message: Message, only_reads: bool = False) -> list[Effect]:
    """Answer a request that came by ``route``: a reply, or a batch key's result."""
    if route.__class__ is Slot:
        return route.deliver(message, only_reads)
    return [Reply(route, message, only_reads)]
