"""The ``zring`` command: run a node, or talk to a cluster.

    zring node --id node1 --listen tcp://127.0.0.1:7001 --data-dir var/node1
    zring put KEY VALUE            zring get KEY            zring delete KEY
    zring status                   zring ring               zring local-keys NODE_ID
    zring add-node NODE_ID ADDRESS zring remove-node NODE_ID [--force]
    zring rebalance                zring repair             zring ping
    zring check --data-dir var/node1 [--rebuild]   (offline: verify a stopped node's store)
    zring migrate --data-dir var/node1   (offline: convert a stopped node's SQLite store to RocksDB)

Client commands find the cluster through ``--seeds`` (comma-separated ROUTER endpoints),
else ``$ZRING_SEEDS``, else the local supervisord cluster (127.0.0.1:7001..7003).

Exit codes: 0 success; 1 a zring error (printed as ``error: ...``), a key not found or a
damaged store (``zring check``); 2 bad arguments; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from zring.cli.commands import (
    _cmd_check,
    _cmd_keygen,
    _cmd_migrate,
    _cmd_node,
    _store_error_message,  # noqa: F401 - the tests check its hint
)
from zring.cli.formatting import (
    TransferBar,
    format_bytes,
    format_plan,
    format_ring,
    format_status,
    state_code,
)
from zring.cli.parser import build_parser, default_gossip_address, node_config_from_args
from zring.errors import ZringError
from zring.storage import STORE_FILE  # a node's store in its --data-dir
from zring.storage.check import move_store_aside

if TYPE_CHECKING:
    from zring.client import Client

__all__ = ["STORE_FILE", "TransferBar", "build_parser", "default_gossip_address", "format_bytes",
           "format_plan", "format_ring", "format_status", "main", "move_store_aside",
           "node_config_from_args", "state_code"]


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
        if args.command == "migrate":
            return _cmd_migrate(args)
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
