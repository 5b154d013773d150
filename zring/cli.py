"""The ``zring`` command: run a node, or talk to a cluster.

    zring node --id node1 --listen tcp://127.0.0.1:7001 --data-dir var/node1
    zring put KEY VALUE            zring get KEY            zring delete KEY
    zring status                   zring ring               zring local-keys NODE_ID
    zring add-node NODE_ID ADDRESS zring remove-node NODE_ID [--force]
    zring rebalance                zring repair             zring ping
    zring check --data-dir var/node1 [--rebuild]   (offline: verify a stopped node's store)

Client commands find the cluster through ``--seeds`` (comma-separated ROUTER endpoints),
else ``$ZRING_SEEDS``, else the local supervisord cluster (127.0.0.1:7001..7003).

Exit codes: 0 success; 1 a zring error (printed as ``error: ...``), a key not found or a
damaged store (``zring check``); 2 bad arguments; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from zring import __version__
from zring.errors import StorageError, ZringError

if TYPE_CHECKING:
    from zring.client import Client, ClusterStatus, MemberInfo, RingState
    from zring.config import NodeConfig
    from zring.storage import Store

__all__ = ["STORE_FILE", "TransferBar", "build_parser", "default_gossip_address", "format_plan",
           "format_ring",
           "format_status", "main", "move_store_aside", "node_config_from_args", "state_code"]

from zring.storage import STORE_FILE  # noqa: E402 - a node's store in its --data-dir

_STORE_COMPANIONS = ("-wal", "-shm")  # SQLite's files beside it: they belong to it
_DAMAGE_REASONS = ("damaged", "foreign")  # StorageError reasons that --rebuild may cure

_FRAME_HEADROOM = 64 * 1024   # a request's fields besides its key and value
_LOG_LEVELS = ("debug", "info", "warning", "error")
_STATE_LETTERS = {"normal": "N", "joining": "J", "leaving": "L", "left": "X"}


# ------------------------------------------------------------------ pure helpers


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
    seeds = parse_seeds(args.seeds) if args.seeds else seeds_from_env()
    gossip = args.gossip or default_gossip_address(args.listen)
    options = {name: getattr(args, name) for name in
               ("replicas", "write_quorum", "read_quorum", "vnodes", "weight", "fsync",
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


def state_code(liveness: str, status: str) -> str:
    """Two letters as in ``nodetool status``: Up/Suspect/Down, then Normal/Joining/Leaving
    (X: left)."""
    return _LIVENESS_LETTERS.get(liveness, "?") + _STATE_LETTERS.get(status, "?")


_LIVENESS_LETTERS = {"up": "U", "suspect": "S", "down": "D"}


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(str(cell)) for cell in column)
              for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_status(status: ClusterStatus, *, show_left: bool = False) -> str:
    """A ``nodetool status``-like table of the members, then any transfers in flight.
    "Ring" is the start of the ring version each member routes by: during a change they
    differ until every member switched."""
    members = [m for m in status.members if show_left or m.status != "left"]
    rows = [(state_code(m.liveness, m.status), m.node_id, m.address, str(m.keys_count),
             format_bytes(m.bytes).replace(" ", ""), str(m.hints), f"{m.ownership * 100:.1f}%",
             f"{m.weight:g}", f"{m.ring_version:016x}"[:8], format_clock(m)) for m in members]
    lines = ["Status=Up/Suspect/Down", "|/ State=Normal/Leaving/Joining" +
             ("/X=left" if show_left else "")]
    lines += _table(("--", "Node", "Address", "Keys", "Data", "Hints", "Owns", "Weight", "Ring",
                     "Clock"), rows, right=frozenset({3, 4, 5, 6}))
    stale = [m.node_id for m in members if m.figures != "exact" and m.liveness == "up"]
    if stale:
        lines.append(f"(keys, data and hints of {', '.join(stale)} as last gossiped: no "
                     "answer in time)")
    off = [m for m in members if m.clock_ok is False]
    for member in off:
        lines.append(f"{member.node_id}'s clock is {member.clock_offset_s:+.3f} s from its "
                     "peers': it coordinates no writes until it is fixed (NTP)")
    transfers = [(m.node_id, m.transfer) for m in members if m.transfer is not None]
    if transfers:
        lines += ["", "Transfers in flight:"]
        lines += _table(("Node", "Kind", "Keys", "Bytes", "Done"), [
            (node_id, t.kind, _of(t.keys_done, t.keys_total, f"{t.keys_done:,}",
                                  f"{t.keys_total:,}"),
             _of(t.bytes_done, t.bytes_total, format_bytes(t.bytes_done),
                 format_bytes(t.bytes_total)),
             f"{100 * t.keys_done / t.keys_total:.0f}%" if t.keys_total > 0 else "?")
            for node_id, t in transfers], right=frozenset({2, 3, 4}))
    hidden = len(status.members) - len(members)
    if hidden:
        lines.append(f"({hidden} left member{'s' if hidden > 1 else ''} hidden; --all shows "
                     "them)")
    if status.answered_by:
        lines.append(f"as seen by {status.answered_by}, ring fingerprint "
                     f"{status.fingerprint:016x}")
    return "\n".join(lines)


def format_clock(member) -> str:
    """The member's clock offset (from its peers', as it measured them; "off": past the
    maximum offset, so it coordinates no writes)."""
    if member.clock_offset_s is None:
        return "?"
    mark = "off " if member.clock_ok is False else ""
    return f"{mark}{member.clock_offset_s * 1000:+.0f}ms"


def _of(done: int, total: int, done_text: str, total_text: str) -> str:
    return f"{done_text} / {total_text}" if total >= 0 else f"{done_text} / ?"


def format_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def format_plan(plan: dict) -> str:
    """``zring plan``'s table: what each node holds, sends and receives, and the balance."""
    verb = "add" if plan["action"] == "add" else "remove"
    lines = [f"Plan: {verb} {plan['node_id']} (N={plan['replicas']}); nothing has moved", ""]

    def cell(records: int, size: int) -> str:
        return f"{records:,} ({format_bytes(size)})" if records else "0"

    rows = [(r["node_id"], cell(r["records_before"], r["bytes_before"]),
             cell(r["send_records"], r["send_bytes"]),
             cell(r["receive_records"], r["receive_bytes"]),
             cell(r["records_after"], r["bytes_after"])) for r in plan["nodes"]]
    lines += _table(("Node", "Holds now", "Sends", "Receives", "Holds after"), rows,
                    right=frozenset({1, 2, 3, 4}))
    moved, optimal = plan["moved_records"], plan["optimal_records"]
    ratio = f" = {moved / optimal:.3f}x the optimum of {optimal:,}" if optimal else ""
    lines += ["", f"moves {moved:,} records, {format_bytes(plan['moved_bytes'])}{ratio}",
              f"balance (peak/mean records per node): {plan['balance_before']:.3f} now, "
              f"{plan['balance_after']:.3f} after"]
    return "\n".join(lines)


class TransferBar:
    """A live progress bar (tqdm: keys, rate, ETA; bytes alongside) for a joining or leaving
    member, fed with the member's reported transfer at each poll."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.started = time.monotonic()

    def __call__(self, member: MemberInfo) -> None:
        transfer = member.transfer
        if transfer is None:
            return
        total = transfer.keys_total if transfer.keys_total >= 0 else None
        if self.bar is None:
            from tqdm import tqdm  # only the commands that wait on a transfer need it
            self.bar = tqdm(total=total, unit="keys", unit_scale=True, file=self.stream,
                            desc=f"{member.node_id} {transfer.kind}", dynamic_ncols=True,
                            mininterval=0.2, initial=transfer.keys_done)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(transfer.keys_done - self.bar.n)
        rate = transfer.bytes_done / max(time.monotonic() - self.started, 1e-3)
        size = format_bytes(transfer.bytes_done)
        if transfer.bytes_total >= 0:
            size += f"/{format_bytes(transfer.bytes_total)}"
        self.bar.set_postfix_str(f"{size}, {format_bytes(rate)}/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            if self.bar.total:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def format_ring(state: RingState) -> str:
    """The ring's parameters and each owning node's share of it."""
    ownership = {m.node_id: m.ownership for m in state.members}
    lines = [f"nodes        {len(state.nodes)}",
             f"vnodes       {state.vnodes}",
             f"replicas     N={state.replicas} W={state.write_quorum} R={state.read_quorum}",
             f"fingerprint  {state.fingerprint:016x}", ""]
    rows = [(n.node_id, n.address, f"{n.weight:g}", str(round(state.vnodes * n.weight)),
             f"{ownership.get(n.node_id, 0.0) * 100:.2f}%") for n in state.nodes]
    lines += _table(("Node", "Address", "Weight", "Tokens", "Owns (primary)"), rows,
                    right=frozenset({3, 4}))
    return "\n".join(lines)


def _print_value(value: bytes | str) -> None:
    if isinstance(value, str):
        print(value)
        return
    sys.stdout.flush()
    sys.stdout.buffer.write(value + (b"" if value.endswith(b"\n") else b"\n"))
    sys.stdout.buffer.flush()


# ------------------------------------------------------------------ commands


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
        raise ZringError(_store_error_message(exc, config.data_dir)) from None


def _store_error_message(exc: StorageError, data_dir: str | None) -> str:
    """One line: what is wrong with the store, naming its file, and what to do about it."""
    message = exc.message or str(exc)
    if not data_dir:
        return message
    path = os.path.join(data_dir, STORE_FILE)
    if str(exc.details.get("path", path)) not in message:
        message = f"store {path}: {message}"
    if exc.details.get("reason") not in _DAMAGE_REASONS:
        return message  # locked, another format, I/O: a rebuild would not be the cure
    return (f"{message}; run `zring check --data-dir {shlex.quote(data_dir)}` (and --rebuild "
            "to start it empty and repair it from its replicas)")


def _cmd_check(args: argparse.Namespace) -> int:
    from zring.storage import SQLiteStore
    data_dir = args.data_dir
    path = os.path.join(data_dir, STORE_FILE)
    companions = [path + suffix for suffix in _STORE_COMPANIONS if os.path.lexists(path + suffix)]
    if not os.path.isfile(path) and not companions:
        raise ZringError(f"no store at {path}: is --data-dir right? (a node creates its store "
                         "when it first starts)")
    summary = ""
    if not os.path.isfile(path):
        problems = [f"the database file is missing but {', '.join(companions)} remain"]
    else:
        try:
            store = SQLiteStore(path)
        except StorageError as exc:
            if exc.details.get("reason") not in _DAMAGE_REASONS:
                raise _not_rebuilt(exc, args.rebuild) from None
            problems = [exc.message]
        else:
            problems, summary = _check_open_store(store, path)
    if not problems:
        print(summary)
        if args.rebuild:
            print("nothing to rebuild: the store is healthy (--rebuild only moves a damaged "
                  "store aside)")
        return 0
    print(f"damaged: {path}")
    for problem in problems:
        print(f"  {problem}")
    quoted = shlex.quote(data_dir)
    if not args.rebuild:
        print(f"to start this node empty and repair it from its replicas: stop it, run "
              f"`zring check --data-dir {quoted} --rebuild`, start it, then run `zring repair`")
        return 1
    moved = move_store_aside(path)
    for source, target in moved:
        print(f"moved {source} -> {target}")
    print(f"""next:
  1. start the node as before (e.g. zring node ... --data-dir {quoted}). It comes back
     EMPTY, as a new node with the same id: its saved membership was in the same file.
  2. once it is up, run `zring repair`: it gets its data back from its replicas.
  3. keep the moved-aside files until the node is repaired; nothing was deleted.""")
    return 0


def _check_open_store(store: Store, path: str) -> tuple[list[str], str]:
    """(problems, summary line) of an open store; closes it."""
    problems: list[str] = []
    summary = ""
    try:
        problems = store.check()
        if not problems:
            keys = store.count()
            tombstones = store.count(include_tombstones=True) - keys
            found = store.get_meta("format") or b"?"
            summary = (f"ok: {path}, {keys} keys, {tombstones} tombstones, "
                       f"format {found.decode(errors='replace')}")
    except StorageError as exc:
        if exc.details.get("reason") not in _DAMAGE_REASONS:
            raise
        problems = [exc.message]
    finally:
        try:
            store.close()
        except StorageError as exc:  # a damaged file can fail its last checkpoint too
            problems.append(exc.message)
    return problems, summary


def _not_rebuilt(exc: StorageError, rebuild: bool) -> ZringError:
    """The error for a store that cannot be checked for a reason other than damage."""
    message = exc.message or str(exc)
    if rebuild:
        message += ("; --rebuild moves only a damaged store aside, and this one is not known "
                    "to be damaged")
    return ZringError(message)


def move_store_aside(path: str) -> list[tuple[str, str]]:
    """Rename the store at ``path`` and its -wal/-shm files to ``PATH.damaged-<UTC time>``
    (never deleting anything); returns the (from, to) pairs. The companions go first: a
    write-ahead log left beside the new, empty store could be replayed into it."""
    from datetime import datetime, timezone
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{path}.damaged-{stamp}"
    attempt = 1
    while any(os.path.lexists(base + suffix) for suffix in ("", *_STORE_COMPANIONS)):
        attempt += 1
        base = f"{path}.damaged-{stamp}-{attempt}"
    moved: list[tuple[str, str]] = []
    for suffix in (*_STORE_COMPANIONS, ""):
        source, target = path + suffix, base + suffix
        if not os.path.lexists(source):
            continue
        try:
            os.rename(source, target)
        except OSError as exc:
            done = "; ".join(f"{a} -> {b}" for a, b in moved) or "nothing"
            raise ZringError(f"cannot move {source} aside: {exc} (moved so far: {done})"
                             ) from None
        moved.append((source, target))
    _fsync_directory(os.path.dirname(os.path.abspath(path)))
    return moved


def _fsync_directory(directory: str) -> None:
    """Make renames in ``directory`` durable (best effort: not every platform can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


# ------------------------------------------------------------------ parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text!r}")
    return value


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
    store.add_argument("--data-dir", metavar="DIR", help="directory of the SQLite store")
    store.add_argument("--memory", action="store_true",
                       help="keep data in memory only (tests; lost on exit)")
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
        f"Verify a stopped node's store, DIR/{STORE_FILE}: every page and index of the "
        "SQLite file, the storage format, and each record. With --rebuild, a damaged or "
        "unreadable store is moved aside (with its -wal/-shm files) to "
        f"{STORE_FILE}.damaged-<UTC time>, never deleted; the node then starts empty, as a "
        "new node with the same id, and `zring repair` brings its data back from its "
        "replicas. Stop the node first: a store in use is reported as locked."))
    check.set_defaults(handler=None)
    check.add_argument("--data-dir", required=True, metavar="DIR",
                       help="the node's data directory (as given to `zring node`)")
    check.add_argument("--rebuild", action="store_true",
                       help="if the store is damaged, move it aside so that the node starts "
                            "empty (then run `zring repair`); a healthy store is left alone")
    return parser


def _client_from_args(args: argparse.Namespace) -> Client:
    from zring.client import Client, parse_seeds, seeds_from_env
    from zring.security import ClientKeys
    seeds = parse_seeds(args.seeds) if args.seeds else seeds_from_env()
    key_file = args.key_file or os.environ.get("ZRING_KEY_FILE")
    keys = None
    if key_file:
        keys = ClientKeys.load(key_file, args.server_key
                               or os.environ.get("ZRING_SERVER_KEY_FILE") or None)
    return Client(seeds, timeout=args.timeout or 5.0, keys=keys)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "keygen":
            return _cmd_keygen(args)
        if args.command == "node":
            try:
                config = node_config_from_args(args)
            except ValueError as exc:
                parser.error(str(exc))  # exits 2 with the usage line
            return _cmd_node(config, args)
        with _client_from_args(args) as client:
            return args.handler(client, args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except ZringError as exc:
        print(f"error: {exc.message or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `zring local-keys n1 | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
