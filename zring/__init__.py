"""zring: a replicated key-value cluster on a consistent-hash ring, over ZeroMQ.

    from zring import Client
    with Client() as client:              # seeds from $ZRING_SEEDS, else 127.0.0.1:7001..7003
        client.put("k", b"v")
        client.get("k").value

``import zring`` stays light: the errors load at once; the clients (pyzmq) and the ring
(numpy) load on first use of their names. ``AsyncClient`` is the asyncio client (zring.aio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zring.errors import (
    ClockSkew,
    Forbidden,
    InvalidRequest,
    MembershipConflict,
    NotMember,
    ProtocolError,
    StorageError,
    Timeout,
    Unavailable,
    VersionConflict,
    ZringError,
)

__version__ = "0.1.0"

_LAZY = {
    "AsyncClient": "zring.aio",
    "Client": "zring.client",
    "PutResult": "zring.clientcore.results",
    "GetResult": "zring.clientcore.results",
    "DeleteResult": "zring.clientcore.results",
    "RingState": "zring.clientcore.results",
    "RingNode": "zring.clientcore.results",
    "ClusterStatus": "zring.clientcore.results",
    "MemberInfo": "zring.clientcore.results",
    "MembershipResult": "zring.clientcore.results",
    "HashRing": "zring.ring",
    "ClientKeys": "zring.security",
}

__all__ = [
    "AsyncClient", "Client", "ClientKeys", "ClockSkew", "ClusterStatus", "DeleteResult",
    "Forbidden",
    "GetResult", "HashRing",
    "InvalidRequest", "MemberInfo", "MembershipConflict", "MembershipResult", "NotMember",
    "ProtocolError", "PutResult", "RingNode", "RingState", "StorageError", "Timeout",
    "Unavailable", "VersionConflict", "ZringError", "__version__",
]

if TYPE_CHECKING:
    from zring.aio import AsyncClient
    from zring.client import Client
    from zring.clientcore.results import (
        ClusterStatus,
        DeleteResult,
        GetResult,
        MemberInfo,
        MembershipResult,
        PutResult,
        RingNode,
        RingState,
    )
    from zring.ring import HashRing
    from zring.security import ClientKeys


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'zring' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
