"""CurveZMQ security: keys, who may connect, and what each may ask (the zguide's Ironhouse).

Every node serves (its ROUTER and its PUB) with the one cluster keypair, so a client or a
peer needs a single server public key for the whole cluster however membership changes, as
TLS clients trust one CA rather than each server. Every node, client and operator connects
with a keypair of its own, and a node's ZAP handler admits only the public keys in its key
directory, each under a role: peer messages need a node key; adding or removing a node,
rebalancing, repairing and planning need an admin key.

The key directory (``zring keygen``)::

    cluster.key   cluster.key_secret        the servers' keypair (the secret: nodes only)
    nodes/<node id>.key(_secret)            one per node
    clients/<name>.key(_secret)             one per client application
    admin/<name>.key(_secret)               operators

The public ``.key`` files under nodes/, clients/ and admin/ are the allow-list. A node needs
``cluster.key_secret``, its own ``nodes/<id>.key_secret`` and the public keys; a client only
``cluster.key`` and its own secret file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from zring.errors import InvalidRequest

__all__ = ["ROLE_DIRS", "CLUSTER_KEY", "keygen", "ClientKeys", "NodeKeys", "KeyAuthenticator",
           "user_id", "user_ids",
           "HANDSHAKE_FAILURES", "refusal_reason"]

log = structlog.get_logger("zring.security")

CLUSTER_KEY = "cluster"
ROLE_DIRS = {"node": "nodes", "client": "clients", "admin": "admin"}
# a handshake the server refused, as its socket's monitor reports it (not NO_DETAIL: that
# is a connection lost mid-handshake, which also follows each refusal)
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
_PROTOCOL_REASONS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "no CURVE key (plain-text connection)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "handshake not sealed for the cluster key",
}


def refusal_reason(event: int, value: int) -> str:
    """What a HANDSHAKE_FAILED_* monitor event means, for the log."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"key not allowed (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _PROTOCOL_REASONS.get(value, f"protocol error {value:#x}")
    return f"handshake failed (event {event:#x}, value {value})"


# ------------------------------------------------------------------ key files


def keygen(keys_dir: str | os.PathLike, *, nodes: Iterable[str] = (),
           clients: Iterable[str] = (), admins: Iterable[str] = (),
           force: bool = False) -> list[Path]:
    """Write the cluster keypair (unless present) and one keypair per name, every file mode
    0600 in directories of mode 0700; the files written. An existing keypair is kept
    unless ``force``: replacing a key locks its holder out. The cluster keypair is replaced
    only by ``force`` with no names (every node and client must then get the new one)."""
    root = Path(keys_dir)
    wanted = [(root, CLUSTER_KEY)]
    for role, names in (("node", nodes), ("client", clients), ("admin", admins)):
        for name in names:
            if not name or "/" in name or name.startswith("."):
                raise InvalidRequest(f"not a usable key name: {name!r}")
            wanted.append((root / ROLE_DIRS[role], name))
    if (root / f"{CLUSTER_KEY}.key").exists() and (len(wanted) > 1 or not force):
        wanted.pop(0)   # one cluster keypair, made once
    if not force:
        for directory, name in wanted:
            if (directory / f"{name}.key").exists():
                raise InvalidRequest(f"{directory / name}.key exists (use --force to "
                                     "replace it)")
    written = []
    old_umask = os.umask(0o077)   # the files are private from their first byte
    try:
        for directory, name in wanted:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for path in (directory / f"{name}.key", directory / f"{name}.key_secret"):
                path.unlink(missing_ok=True)   # an old file would keep its old mode
            paths = zmq.auth.create_certificates(str(directory), name)
            for path in map(Path, paths):
                path.chmod(0o600)
                written.append(path)
    finally:
        os.umask(old_umask)
    return written


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read the key file {path}: {exc}") from None


def _load_secret(path: Path) -> tuple[bytes, bytes]:
    public, secret = _load_certificate(path)
    if not secret:
        raise InvalidRequest(f"{path} holds no secret key")
    return public, secret


def _load_public(path: Path) -> bytes:
    return _load_certificate(path)[0]


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What one connecting end needs: its own keypair and the cluster's public key."""

    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes

    @classmethod
    def load(cls, key_file: str | os.PathLike,
             server_key_file: str | os.PathLike | None = None) -> ClientKeys:
        """``key_file``: a ``.key_secret`` file; ``server_key_file``: the cluster's
        ``cluster.key`` (default: the one in the key directory ``key_file`` sits in)."""
        key_path = Path(key_file)
        if server_key_file is None:
            server_key_file = key_path.resolve().parent.parent / f"{CLUSTER_KEY}.key"
        public, secret = _load_secret(key_path)
        return cls(public, secret, _load_public(Path(server_key_file)))

    def connect(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the cluster (before it connects)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """A node's keys: the cluster keypair it serves with, its own keypair it connects to
    peers with, and the allowed public keys with their ``"role:name"``. Keys are z85 text
    (as in the key files), which libzmq's CURVE options take as well as raw bytes."""

    server_public: bytes
    server_secret: bytes = field(repr=False)
    own: ClientKeys
    allowed: Mapping[bytes, str]

    @classmethod
    def load(cls, keys_dir: str | os.PathLike, node_id: str) -> NodeKeys:
        root = Path(keys_dir)
        server_public, server_secret = _load_secret(root / f"{CLUSTER_KEY}.key_secret")
        public, secret = _load_secret(root / ROLE_DIRS["node"] / f"{node_id}.key_secret")
        allowed: dict[bytes, str] = {}
        for role, subdir in ROLE_DIRS.items():
            directory = root / subdir
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.key")):
                allowed[_load_public(path)] = f"{role}:{path.stem}"
        if public not in allowed:
            raise InvalidRequest(f"{node_id}'s own public key is not in {root}")
        return cls(server_public, server_secret, ClientKeys(public, secret, server_public),
                   allowed)

    def serve(self, sock: zmq.Socket, domain: str) -> None:
        """Make ``sock`` a CURVE server whose clients the ZAP handler checks (before bind)."""
        sock.curve_server = True
        sock.curve_publickey = self.server_public
        sock.curve_secretkey = self.server_secret
        sock.zap_domain = domain.encode()


class KeyAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler (on its own thread, so a handshake never waits for the node's
    loop), admitting exactly the allowed keys; a message's ``User-Id`` is the holder's
    ``"role:name"``."""

    def __init__(self, context: zmq.Context, allowed: Mapping[bytes, str],
                 domains: Iterable[str], node_id: str) -> None:
        super().__init__(context)
        self.allowed = dict(allowed)
        self.domains = list(domains)
        self._log = log.bind(node_id=node_id)

    def start(self) -> None:
        super().start()
        for domain in self.domains:   # pyzmq matches the domain exactly
            self.configure_curve_callback(domain, self)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """The credentials provider pyzmq asks for each CURVE handshake."""
        if z85_key in self.allowed:   # one read of the dict a reload swaps whole
            return True
        self._log.warning("curve_key_refused", socket=domain,
                          key=z85_key.decode("ascii", "replace"))
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        """``"role:name:<key prefix>"``: revoking or replacing a key revokes its id. A key
        a reload removed since ``callback`` admitted it gets an id nothing permits (an
        exception here would end pyzmq's ZAP thread)."""
        z85_key = z85.encode(client_public_key)
        return user_id(z85_key, self.allowed.get(z85_key, "revoked:?"))


def user_id(z85_key: bytes, holder: str) -> str:
    """The User-Id of a key's messages: its holder's ``"role:name"`` and the key's start."""
    return f"{holder}:{z85_key[:8].decode('ascii')}"


def user_ids(allowed: Mapping[bytes, str]) -> frozenset[str]:
    """Every User-Id the allowed keys' messages carry."""
    return frozenset(user_id(key, holder) for key, holder in allowed.items())
