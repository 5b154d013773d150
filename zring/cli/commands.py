"""The ``zring`` subcommands: each takes the parsed arguments (and, for the client commands,
a connected Client), does one thing and prints what came of it; the exit code is returned."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from zring.cli.formatting import TransferBar, format_plan, format_ring, format_status
from zring.errors import StorageError, ZringError
from zring.storage import store_path
from zring.storage.check import is_damage

if TYPE_CHECKING:
    from zring.client import Client
    from zring.config import NodeConfig


def _print_value(value: bytes | str) -> None:
    if isinstance(value, str):
        print(value)
        return
    sys.stdout.flush()
    sys.stdout.buffer.write(value + (b"" if value.endswith(b"\n") else b"\n"))
    sys.stdout.buffer.flush()


def _cmd_node(config: NodeConfig, args: argparse.Namespace) -> int:
    import zmq

    from zring.log import configure_logging
    from zring.server import run_node
    configure_logging(args.log_level, args.log_format)
    try:
        return run_node(config)
    except zmq.ZMQError as exc:  # typically: the address is already in use
        raise ZringError(f"node {config.node_id} cannot start on {config.address} / "
                         f"{config.gossip_address}: {exc}") from None
    except StorageError as exc:
        raise ZringError(_store_error_message(exc, config.data_dir, config.store)) from None


def _store_error_message(exc: StorageError, data_dir: str | None, kind: str = "sqlite") -> str:
    """One line: what is wrong with the store (of ``kind``), naming its file, and what to do
    about it."""
    message = exc.message or str(exc)
    if not data_dir:
        return message
    path = store_path(data_dir, kind)
    if str(exc.details.get("path", path)) not in message:
        message = f"store {path}: {message}"
    if not is_damage(exc):
        return message  # locked, another format, I/O: a rebuild would not be the cure
    return (f"{message}; run `zring check --data-dir {shlex.quote(data_dir)}` (and --rebuild "
            "to start it empty and repair it from its replicas)")


def _cmd_check(args: argparse.Namespace) -> int:
    from zring.storage.check import check_store, move_store_aside
    try:
        found = check_store(args.data_dir)
    except StorageError as exc:  # locked, another format: not known to be damaged
        raise _not_rebuilt(exc, args.rebuild) from None
    if found.healthy:
        print(found.summary)
        if args.rebuild:
            print("nothing to rebuild: the store is healthy (--rebuild only moves a damaged "
                  "store aside)")
        return 0
    print(f"damaged: {found.path}")
    for problem in found.problems:
        print(f"  {problem}")
    quoted = shlex.quote(args.data_dir)
    if not args.rebuild:
        print(f"to start this node empty and repair it from its replicas: stop it, run "
              f"`zring check --data-dir {quoted} --rebuild`, start it, then run `zring repair`")
        return 1
    for source, target in move_store_aside(found.path):
        print(f"moved {source} -> {target}")
    print(f"""next:
  1. start the node as before (e.g. zring node ... --data-dir {quoted}). It comes back
     EMPTY, as a new node with the same id: its saved membership was in the same file.
  2. once it is up, run `zring repair`: it gets its data back from its replicas.
  3. keep the moved-aside files until the node is repaired; nothing was deleted.""")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from zring.storage.migrate import migrate_to_rocksdb
    done = migrate_to_rocksdb(args.data_dir, progress=lambda text: print(text, file=sys.stderr))
    stats = done.stats
    print(f"migrated {done.source} -> {done.target}: {stats.keys} keys, {stats.tombstones} "
          f"tombstones, {stats.bytes:,} bytes, {stats.hints} hints, {len(done.meta)} named "
          f"blobs, verified ({done.seconds:.1f} s)")
    print(f"the SQLite store is kept as {done.backup}: delete it once the node runs well on "
          f"RocksDB")
    print(f"start the node with --store rocksdb (and --data-dir {shlex.quote(args.data_dir)})")
    return 0


def _not_rebuilt(exc: StorageError, rebuild: bool) -> ZringError:
    """The error for a store that cannot be checked for a reason other than damage."""
    message = exc.message or str(exc)
    if rebuild:
        message += ("; --rebuild moves only a damaged store aside, and this one is not known "
                    "to be damaged")
    return ZringError(message)


def _cmd_put(client: Client, args: argparse.Namespace) -> int:
    result = client.put(args.key, args.value, w=args.w, replicas=args.replicas)
    print(f"OK: stored on {', '.join(result.stored_on)} "
          f"(replicas: {', '.join(result.replicated_to)})")
    return 0


def _cmd_get(client: Client, args: argparse.Namespace) -> int:
    result = client.get(args.key, r=args.r, replicas=args.replicas)
    if not result.found:
        print(f"not found: {args.key}", file=sys.stderr)
        return 1
    _print_value(result.value)
    return 0


def _cmd_delete(client: Client, args: argparse.Namespace) -> int:
    result = client.delete(args.key, w=args.w, replicas=args.replicas)
    print(f"OK: deleted on {', '.join(result.stored_on)} "
          f"(replicas: {', '.join(result.replicated_to)})")
    return 0


def _cmd_status(client: Client, args: argparse.Namespace) -> int:
    print(format_status(client.cluster_status(), show_left=args.all))
    return 0


def _cmd_ring(client: Client, args: argparse.Namespace) -> int:
    print(format_ring(client.ring_state()))
    return 0


def _cmd_add_node(client: Client, args: argparse.Namespace) -> int:
    if not args.no_wait:
        print(f"adding {args.node_id}; waiting until it has streamed its ranges...",
              file=sys.stderr)
    bar = TransferBar()
    try:
        result = client.add_node(args.node_id, args.address, wait=not args.no_wait,
                                 timeout=args.wait_timeout, progress=bar)
    finally:
        bar.close()
    print(f"{result.node_id}: {result.status}")
    return 0


def _cmd_remove_node(client: Client, args: argparse.Namespace) -> int:
    if not args.no_wait:
        print(f"removing {args.node_id}; waiting until it has left...", file=sys.stderr)
    bar = TransferBar()
    try:
        result = client.remove_node(args.node_id, graceful=not args.force,
                                    wait=not args.no_wait, timeout=args.wait_timeout,
                                    progress=bar)
    finally:
        bar.close()
    print(f"{result.node_id}: {result.status}")
    return 0


def _cmd_plan(client: Client, args: argparse.Namespace) -> int:
    print(format_plan(client.plan(args.action, args.node_id, weight=args.weight,
                                  timeout=args.wait_timeout)))
    return 0


def _cmd_rebalance(client: Client, args: argparse.Namespace) -> int:
    result = client.rebalance(timeout=args.wait_timeout)
    details = ", ".join(f"{k}={v}" for k, v in sorted(result.items()))
    print("OK: rebalanced" + (f" ({details})" if details else ""))
    return 0


def _cmd_repair(client: Client, args: argparse.Namespace) -> int:
    result = client.repair(timeout=args.wait_timeout)
    print(f"OK: repaired {result.get('sessions', 0)} replica pairs: "
          f"{result.get('segments_differing', 0)} of their hash-tree leaves differed; "
          f"{result.get('records_pulled', 0) + result.get('records_pushed', 0)} records and "
          f"{result.get('bytes_exchanged', 0):,} bytes exchanged")
    return 0


def _cmd_local_keys(client: Client, args: argparse.Namespace) -> int:
    for key in client.local_keys(args.node_id, limit=args.limit):
        print(key)
    return 0


def _cmd_stats(client: Client, args: argparse.Namespace) -> int:
    for name, value in sorted(client.node_stats(args.node_id).items()):
        print(f"{name} {value}")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from zring.security import keygen

    def names(text: str) -> list[str]:
        return [n.strip() for n in text.split(",") if n.strip()]
    written = keygen(args.dir, nodes=names(args.nodes), clients=names(args.clients),
                     admins=names(args.admins), force=args.force)
    for path in written:
        print(path)
    return 0


def _cmd_ping(client: Client, args: argparse.Namespace) -> int:
    reply = client.ping()
    print(f"{reply.get('node_id', '?')}: {reply.get('status', '?')}")
    return 0
