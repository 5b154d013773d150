#!/usr/bin/env python3
"""Fault injection for the supervised zring cluster, through supervisord's XML-RPC interface.

    python tools/chaos.py kill node2        # SIGKILL: supervisord restarts it (autorestart)
    python tools/chaos.py stop node2        # TERM, then KILL after stopwaitsecs; stays stopped
    python tools/chaos.py start node4       # start (node4/node5 join the cluster)
    python tools/chaos.py pause node3       # SIGSTOP: alive to the kernel, silent to peers
    python tools/chaos.py resume node3      # SIGCONT
    python tools/chaos.py restart node1     # stop + start
    python tools/chaos.py status
    python tools/chaos.py kill --random     # any running node (start --random: a stopped one,
                                            # resume --random: a paused one)
    python tools/chaos.py kill --all        # every running node at once (a whole-cluster crash)
    python tools/chaos.py kill node1 node2  # several named nodes

The socket comes from the ``[supervisorctl] serverurl`` of ``--conf`` (default: the repo's
supervisord.conf), parsed by supervisor's own config reader, so ``%(here)s`` and
``%(ENV_X)s`` expand exactly as supervisorctl expands them.

The actions themselves live in ``zring.chaos`` (plain functions on the proxy that
``connect`` returns: ``kill(proxy, "node2")``, ``pick_random_running(proxy)``...), which
``zring.localcluster`` uses too; this script adds the repo's config as the default.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from zring import chaos as _chaos
except ImportError:  # run from a checkout whose zring is not installed in this Python
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zring import chaos as _chaos

from zring.chaos import (  # noqa: E402 - re-exported: this tool's names as before
    ACTIONS,
    ChaosError,
    is_paused,
    kill,
    make_proxy,
    pause,
    pick_random,
    pick_random_running,
    process_info,
    processes,
    read_serverurl,
    restart,
    resume,
    start,
    status_lines,
    stop,
)

__all__ = [
    "ChaosError", "DEFAULT_CONF", "read_serverurl", "make_proxy", "connect", "processes",
    "process_info", "is_paused", "kill", "stop", "start", "pause", "resume", "restart",
    "status_lines", "pick_random_running", "pick_random", "ACTIONS", "main",
]

DEFAULT_CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "supervisord.conf")


def connect(conf_path: str = DEFAULT_CONF):
    """``zring.chaos.connect`` on the repo's supervisord.conf by default."""
    return _chaos.connect(conf_path)


def main(argv: Sequence[str] | None = None) -> int:
    return _chaos.main(argv, default_conf=DEFAULT_CONF, prog="chaos.py")


if __name__ == "__main__":
    sys.exit(main())
