"""One error root; every error that crosses the wire is a code and a message.

Errors the caller caused (``InvalidRequest``) are split from errors of the cluster or a peer
(``Unavailable``, ``Timeout``, ``ProtocolError``), as in h11.
"""

from __future__ import annotations

__all__ = [
    "ZringError", "ProtocolError", "InvalidRequest", "Unavailable", "Timeout", "NotMember",
    "MembershipConflict", "StorageError", "Forbidden", "VersionConflict", "ClockSkew",
    "error_from_code",
]


class ZringError(Exception):
    """Root of every zring error."""

    code = "error"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ProtocolError(ZringError):
    """A frame that could not be decoded or does not match its schema."""

    code = "protocol"


class InvalidRequest(ZringError):
    """The request is well-formed but not allowed: wrong types, too large, bad quorum."""

    code = "invalid"


class Unavailable(ZringError):
    """Too few replicas answered to meet the requested quorum."""

    code = "unavailable"


class Timeout(ZringError):
    """No answer from any node before the client's deadline."""

    code = "timeout"


class NotMember(ZringError):
    """The named node is not a member of the cluster."""

    code = "not_member"


class MembershipConflict(ZringError):
    """A membership change was refused because another one is in progress."""

    code = "conflict"


class Forbidden(ZringError):
    """With security on: the caller's key does not allow this request (an admin or peer
    request from a client key)."""

    code = "forbidden"


class VersionConflict(ZringError):
    """A write was refused by replicas that hold a newer version of the key (``held``:
    ``[timestamp, writer]``). The clients retry it at once with a later timestamp, so a
    write acknowledged after another always carries the newer version, whatever the clocks.
    It may have been applied on some replicas (it is then superseded by the retry)."""

    code = "version_conflict"


class ClockSkew(ZringError):
    """A clock is further off than ``max_clock_offset_s``: the node's own (measured against
    its peers': it stops coordinating writes until fixed), or the request's timestamp
    (the client's clock is ahead of the node's). ``offset_s`` names the offset."""

    code = "clock_skew"


class NotCoordinated(ZringError):
    """A node will not take a client-coordinated read or write of a key now (a ring change
    is under way, the client's ring is not the node's, the node is not one of the key's
    replicas, or it is starting): a node must coordinate it."""

    code = "not_coordinated"


class StorageError(ZringError):
    """The node's store failed or is unreadable."""

    code = "storage"


_BY_CODE = {cls.code: cls for cls in (ZringError, ProtocolError, InvalidRequest, Unavailable,
                                       Timeout, NotMember, MembershipConflict, StorageError,
                                       Forbidden, VersionConflict, ClockSkew,
                                       NotCoordinated)}


def error_from_code(code: str, message: str, details: dict | None = None) -> ZringError:
    """The exception a client raises for an error reply."""
    return _BY_CODE.get(code, ZringError)(message, **(details or {}))
