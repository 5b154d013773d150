"""What a node core asks its shell to do: the only way a core touches the outside world."""

from __future__ import annotations

from dataclasses import dataclass

from zring.protocol import Message

__all__ = ["Effect", "Reply", "Send", "Publish", "Subscribe", "Unsubscribe", "Shutdown"]


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
