"""The ``zring`` command's arguments: the parser, and the NodeConfig that ``zring node``'s
arguments describe."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from zring import __version__
from zring.cli.commands import (
    _cmd_add_node,
    _cmd_delete,
    _cmd_get,
    _cmd_local_keys,
    _cmd_ping,
    _cmd_plan,
    _cmd_put,
    _cmd_rebalance,
    _cmd_remove_node,
    _cmd_repair,
    _cmd_ring,
    _cmd_stats,
    _cmd_status,
)
from zring.storage import ROCKS_DIR, STORE_FILE

if TYPE_CHECKING:
    from zring.config import NodeConfig

__all__ = ["build_parser", "default_gossip_address", "node_config_from_args"]

_FRAME_HEADROOM = 64 * 1024   # a request's fields besides its key and value
_LOG_LEVELS = ("debug", "info", "warning", "error")


def default_gossip_address(listen: str, offset: int | None = None) -> str:
    """``tcp://host:port`` -> ``tcp://host:(port + offset)`` (offset: the config default)."""
    if offset is None:
        from zring.config import DEFAULT_GOSSIP_PORT_OFFSET
        offset = DEFAULT_GOSSIP_PORT_OFFSET
    scheme, sep, rest = listen.partition("://")
    host, colon, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not colon or not host or not port.isdigit():
        raise ValueError(f"cannot derive a gossip endpoint from {listen!r}; pass --gossip")
    gossip_port = int(port) + offset
    if not 0 < gossip_port < 65536:
        raise ValueError(f"gossip port {gossip_port} is out of range; pass --gossip")
    return f"tcp://{host}:{gossip_port}"


def node_config_from_args(args: argparse.Namespace) -> NodeConfig:
    """The NodeConfig described by ``zring node`` arguments (ValueError if inconsistent)."""
    from zring.client import parse_seeds, seeds_from_env
    from zring.config import NodeConfig
    from zring.membership import MAX_RING_TOKENS
    from zring.protocol import MAX_FRAME_BYTES
    if args.memory == bool(args.data_dir):
        raise ValueError("give exactly one of --data-dir DIR and --memory")
    if args.memory and args.store:
        raise ValueError("--store chooses the store in --data-dir; --memory has none")
    seeds = parse_seeds(args.seeds) if args.seeds else seeds_from_env()
    gossip = args.gossip or default_gossip_address(args.listen)
    options = {name: getattr(args, name) for name in
               ("replicas", "write_quorum", "read_quorum", "vnodes", "weight", "fsync", "store",
                "fsync_period_s", "stream_batch_records", "stream_pulls_in_flight",
                "max_key_bytes", "max_value_bytes", "max_clock_offset_s")
               if getattr(args, name) is not None}
    config = NodeConfig(node_id=args.id, address=args.listen, gossip_address=gossip,
                        seeds=seeds, data_dir=None if args.memory else args.data_dir,
                        keys_dir=args.keys or os.environ.get("ZRING_KEYS_DIR") or None,
                        **options)
    if config.max_value_bytes + config.max_key_bytes + _FRAME_HEADROOM > MAX_FRAME_BYTES:
        raise ValueError(f"--max-value-bytes and --max-key-bytes must leave a request "
                         f"within the {MAX_FRAME_BYTES}-byte frame limit")
    if not 1 <= config.write_quorum <= config.replicas:
        raise ValueError(f"--write-quorum {config.write_quorum} must be between 1 and "
                         f"--replicas {config.replicas}")
    if not 1 <= config.read_quorum <= config.replicas:
        raise ValueError(f"--read-quorum {config.read_quorum} must be between 1 and "
                         f"--replicas {config.replicas}")
    if config.vnodes < 1 or not config.weight > 0:
        raise ValueError("--vnodes and --weight must be positive")
    if config.weight * config.vnodes > MAX_RING_TOKENS:
        raise ValueError(f"--weight {config.weight:g} times --vnodes {config.vnodes} is over "
                         f"the ring's {MAX_RING_TOKENS} tokens; lower --vnodes")
    return config


def _positive(number: type[int] | type[float], what: str) -> Callable[[str], float]:
    """An argparse type: ``number(text)``, refused unless it is above 0."""
    def parse(text: str) -> float:
        try:
            value = number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value
    return parse


_positive_float = _positive(float, "a number")
_positive_int = _positive(int, "an integer")


def build_parser() -> argparse.ArgumentParser:
    # --seeds and --timeout are accepted before or after the subcommand: the subcommands'
    # copies default to SUPPRESS so that they never overwrite a value given before.
    def connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
        default = argparse.SUPPRESS if suppress else None
        parser.add_argument("--seeds", default=default, metavar="A,B,C",
                            help="comma-separated node endpoints (default: $ZRING_SEEDS, "
                                 "else tcp://127.0.0.1:7001..7003)")
        parser.add_argument("--timeout", type=_positive_float, default=default,
                            metavar="SECONDS",
                            help="wait this long for each reply before trying the next seed "
                                 "(default 5)")
        parser.add_argument("--key", dest="key_file", default=default, metavar="FILE",
                            help="for a cluster with security on: this client's "
                                 ".key_secret file (default: $ZRING_KEY_FILE)")
        parser.add_argument("--server-key", default=default, metavar="FILE",
                            help="the cluster's public cluster.key (default: "
                                 "$ZRING_SERVER_KEY_FILE, else the one in --key's key "
                                 "directory)")

    parser = argparse.ArgumentParser(prog="zring", description=(
        "A replicated key-value cluster on a consistent-hash ring, over ZeroMQ."))
    parser.add_argument("--version", action="version", version=f"zring {__version__}")
    connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def client_command(name: str, handler: Callable, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        connection_options(sub, suppress=True)
        sub.set_defaults(handler=handler)
        return sub

    node = commands.add_parser("node", help="run a node (in the foreground)",
                               description="Run a node in the foreground until SIGTERM.")
    node.set_defaults(handler=None)
    node.add_argument("--id", required=True, help="node id, unique in the cluster")
    node.add_argument("--listen", required=True, metavar="ENDPOINT",
                      help="ROUTER endpoint for clients and peers, e.g. tcp://127.0.0.1:7001")
    node.add_argument("--gossip", metavar="ENDPOINT",
                      help="PUB endpoint for gossip (default: --listen port + 1000)")
    node.add_argument("--seeds", default=argparse.SUPPRESS, metavar="A,B,C",
                      help="seed ROUTER endpoints (default: $ZRING_SEEDS, else "
                           "tcp://127.0.0.1:7001..7003); a node listed here starts as a "
                           "normal member, any other joins")
    store = node.add_mutually_exclusive_group(required=True)
    store.add_argument("--data-dir", metavar="DIR",
                       help="directory of the node's store (see --store)")
    store.add_argument("--memory", action="store_true",
                       help="keep data in memory only (tests; lost on exit)")
    node.add_argument("--store", choices=("rocksdb", "sqlite"),
                      help="the store in --data-dir: rocksdb (default; DIR/zring.rocks, a "
                           "RocksDB directory) or sqlite (DIR/zring.db); `zring migrate` "
                           "converts a SQLite store")
    node.add_argument("--replicas", type=_positive_int, help="N (default 3)")
    node.add_argument("--write-quorum", type=_positive_int, help="W (default 2)")
    node.add_argument("--read-quorum", type=_positive_int, help="R (default 2)")
    node.add_argument("--vnodes", type=_positive_int, help="virtual nodes per unit of weight")
    node.add_argument("--weight", type=_positive_float, help="share of the ring (default 1.0)")
    node.add_argument("--fsync", choices=("always", "periodic"),
                      help="always: fsync before acknowledging (group commit); periodic "
                           "(default): fsync every --fsync-period seconds")
    node.add_argument("--fsync-period", dest="fsync_period_s", type=_positive_float,
                      help="seconds between fsyncs with --fsync periodic (default 1)")
    node.add_argument("--max-key-bytes", type=_positive_int,
                      help="longest key accepted, in UTF-8 bytes (default 4096)")
    node.add_argument("--max-value-bytes", type=_positive_int,
                      help="largest value accepted (default 4 MiB)")
    node.add_argument("--max-clock-offset", dest="max_clock_offset_s", type=_positive_float,
                      metavar="SECONDS",
                      help="the most a node's or client's clock may be off from another's "
                           "(default 0.5); a node further off coordinates no writes")
    node.add_argument("--keys", metavar="DIR",
                      help="turn CurveZMQ security on with this `zring keygen` directory "
                           "(default: $ZRING_KEYS_DIR; unset: security off)")
    node.add_argument("--stream-batch-records", type=_positive_int,
                      help="records per page when ranges stream (default 2000)")
    node.add_argument("--stream-pulls-in-flight", type=_positive_int,
                      help="pages requested ahead from each source while ranges stream "
                           "(default 4): fewer leaves more of the sources to clients")
    node.add_argument("--log-level", choices=_LOG_LEVELS, default="info")
    node.add_argument("--log-format", choices=("json", "console"), default="json")

    put = client_command("put", _cmd_put, "write a value")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--w", type=_positive_int, help="acks to wait for (default: cluster W)")
    put.add_argument("--replicas", type=_positive_int, help="N for this key (default: cluster N)")

    get = client_command("get", _cmd_get, "read a value (exit 1 if not found)")
    get.add_argument("key")
    get.add_argument("--r", type=_positive_int, help="replicas to read (default: cluster R)")
    get.add_argument("--replicas", type=_positive_int, help="N for this key (default: cluster N)")

    delete = client_command("delete", _cmd_delete, "delete a key")
    delete.add_argument("key")
    delete.add_argument("--w", type=_positive_int, help="acks to wait for (default: cluster W)")
    delete.add_argument("--replicas", type=_positive_int,
                        help="N for this key (default: cluster N)")

    status = client_command("status", _cmd_status, "members, state, keys and ownership")
    status.add_argument("--all", action="store_true", help="also show members that left")

    client_command("ring", _cmd_ring, "the ring: parameters and each node's share")

    add = client_command("add-node", _cmd_add_node,
                         "admit a running node; wait until it has streamed its ranges")
    add.add_argument("node_id")
    add.add_argument("address", help="its ROUTER endpoint, e.g. tcp://127.0.0.1:7004")
    add.add_argument("--no-wait", action="store_true", help="return once it is joining")
    add.add_argument("--wait-timeout", type=_positive_float, default=120.0, metavar="SECONDS",
                     help="give up waiting after this long (default 120)")

    remove = client_command("remove-node", _cmd_remove_node,
                            "decommission a node: it hands its ranges over, then leaves")
    remove.add_argument("node_id")
    remove.add_argument("--force", action="store_true",
                        help="remove at once without handing data over (for a dead node)")
    remove.add_argument("--no-wait", action="store_true", help="return once it is leaving")
    remove.add_argument("--wait-timeout", type=_positive_float, default=120.0,
                        metavar="SECONDS", help="give up waiting after this long (default 120)")

    plan = client_command("plan", _cmd_plan,
                          "dry run of adding or removing a node: what each node would send "
                          "and receive, and the balance after")
    plan.add_argument("action", choices=("add", "remove"))
    plan.add_argument("node_id")
    plan.add_argument("--weight", type=_positive_float,
                      help="the added node's weight (default 1)")
    plan.add_argument("--wait-timeout", type=_positive_float, default=120.0,
                      metavar="SECONDS", help="give up after this long (default 120)")

    rebalance = client_command("rebalance", _cmd_rebalance,
                               "move every record to the nodes that should hold it")
    rebalance.add_argument("--wait-timeout", type=_positive_float, default=600.0,
                           metavar="SECONDS", help="give up after this long (default 600)")

    repair = client_command("repair", _cmd_repair,
                            "anti-entropy now: replicas compare hash trees and exchange the "
                            "records that differ")
    repair.add_argument("--wait-timeout", type=_positive_float, default=600.0,
                        metavar="SECONDS", help="give up after this long (default 600)")

    local = client_command("local-keys", _cmd_local_keys, "keys stored on one node")
    local.add_argument("node_id")
    local.add_argument("--limit", type=_positive_int, help="at most this many keys")

    client_command("ping", _cmd_ping, "ask one node who it is")
    stats = client_command("stats", _cmd_stats, "one node's counters (rejected frames, "
                                                "refused connections, forbidden requests...)")
    stats.add_argument("node_id")

    keygen = commands.add_parser("keygen", help="make CurveZMQ keypairs (security)",
                                 description=(
        "Write the cluster keypair (once) and a keypair for each named node, client and "
        "admin into DIR, every file mode 0600. Give a node `--keys DIR` (or "
        "$ZRING_KEYS_DIR) to turn security on: it then admits only the public keys in "
        "DIR/nodes, DIR/clients and DIR/admin. A client needs DIR/cluster.key and its own "
        ".key_secret (--key FILE or $ZRING_KEY_FILE); adding or removing nodes, "
        "rebalancing and repairing need an admin key."))
    keygen.set_defaults(handler=None)
    keygen.add_argument("--dir", required=True, metavar="DIR", help="the key directory")
    keygen.add_argument("--nodes", default="", metavar="A,B,C", help="node ids")
    keygen.add_argument("--clients", default="", metavar="A,B", help="client names")
    keygen.add_argument("--admins", default="", metavar="A,B", help="admin names")
    keygen.add_argument("--force", action="store_true",
                        help="replace existing keypairs (their holders are locked out)")

    check_help = "verify a stopped node's store (offline; exit 1 if damaged)"
    check = commands.add_parser("check", help=check_help, description=(
        f"Verify a stopped node's store, DIR/{ROCKS_DIR} (RocksDB) or DIR/{STORE_FILE} "
        "(SQLite): every block or page and index, the storage format, each record and the "
        "kept counts. With --rebuild, a damaged or unreadable store is moved aside (a SQLite "
        f"file with its -wal/-shm files) to {ROCKS_DIR} or {STORE_FILE}.damaged-<UTC time>, "
        "never deleted; the node then starts empty, as a "
        "new node with the same id, and `zring repair` brings its data back from its "
        "replicas. Stop the node first: a store in use is reported as locked."))
    check.set_defaults(handler=None)
    check.add_argument("--data-dir", required=True, metavar="DIR",
                       help="the node's data directory (as given to `zring node`)")
    check.add_argument("--rebuild", action="store_true",
                       help="if the store is damaged, move it aside so that the node starts "
                            "empty (then run `zring repair`); a healthy store is left alone")
    migrate = commands.add_parser(
        "migrate", help="convert a stopped node's SQLite store to RocksDB (offline)",
        description=(
            f"Convert a stopped node's SQLite store, DIR/{STORE_FILE}, to a RocksDB store, "
            f"DIR/{ROCKS_DIR}: the copy is written beside it, made durable and verified "
            "against it (every record, hint and blob, and the counts), and only then put in "
            f"place; the SQLite store is kept as {STORE_FILE}.migrated-<UTC time> until you "
            "delete it. Stop the node first: a store in use is refused. Then start the node "
            "with --store rocksdb. An interrupted run leaves the SQLite store in use; run it "
            "again to finish."))
    migrate.set_defaults(handler=None)
    migrate.add_argument("--data-dir", required=True, metavar="DIR",
                         help="the node's data directory (as given to `zring node`)")
    return parser
