"""Fault injection for nodes run by supervisord, through its XML-RPC interface.

The library half of ``tools/chaos.py`` (the user's command-line tool) and what
``zring.localcluster`` drives its clusters' faults with, so the installed package needs no
source checkout:

    proxy = connect("/path/to/supervisord.conf")
    kill(proxy, "node2")                    # SIGKILL: supervisord restarts it (autorestart)
    pause(proxy, "node3"); resume(proxy, "node3")
    pick_random_running(proxy)

    python -m zring.chaos kill node2 --conf /path/to/supervisord.conf

The socket comes from the ``[supervisorctl] serverurl`` of the config, parsed by supervisor's
own config reader, so ``%(here)s`` and ``%(ENV_X)s`` expand exactly as supervisorctl expands
them. Every action is a plain function on the proxy that ``connect`` returns (supervisord's
``supervisor.*`` namespace), so tests and tools can drive it without the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
import xmlrpc.client
from collections.abc import Callable, Sequence

__all__ = [
    "ChaosError", "read_serverurl", "make_proxy", "connect", "processes",
    "process_info", "is_paused", "kill", "stop", "start", "pause", "resume", "restart",
    "status_lines", "pick_random_running", "pick_random", "ACTIONS", "main",
]

# supervisor.xmlrpc.Faults codes (copied: the fake proxies of the tests raise them too)
_BAD_NAME = 10
_NOT_RUNNING = 70
_ALREADY_STARTED = 60
_SPAWN_ERROR = 50
_ABNORMAL_TERMINATION = 40
_BAD_SIGNAL = 90


class ChaosError(Exception):
    """An action could not be carried out; the message is meant for a person."""


# ---------------------------------------------------------------------- connecting

def _supervisor_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ChaosError(f"the supervisor package is not installed for {sys.executable}; run "
                         "this with the Python of zring's environment (e.g. "
                         ".venv/bin/python tools/chaos.py ...)") from None


def read_serverurl(conf_path: str) -> str:
    """The ``[supervisorctl] serverurl`` of a supervisord config, expanded like supervisorctl."""
    ClientOptions = _supervisor_module("supervisor.options").ClientOptions

    if not os.path.isfile(conf_path):
        raise ChaosError(f"no supervisord config at {conf_path}")
    try:
        section = ClientOptions().read_config(conf_path)
    except ValueError as exc:
        raise ChaosError(f"cannot read {conf_path}: {exc}") from None
    return section.serverurl


def make_proxy(serverurl: str) -> xmlrpc.client.ServerProxy:
    """An XML-RPC proxy on supervisord's ``unix://`` (or ``http://``) serverurl."""
    SupervisorTransport = _supervisor_module("supervisor.xmlrpc").SupervisorTransport

    # ServerProxy wants an http URL; the transport ignores it and uses serverurl instead.
    return xmlrpc.client.ServerProxy("http://127.0.0.1",
                                     transport=SupervisorTransport(None, None, serverurl))


def connect(conf_path: str):
    """supervisord's ``supervisor.*`` XML-RPC namespace for ``conf_path`` (``proxy.getState()``,
    ``proxy.getAllProcessInfo()``...); ChaosError if supervisord isn't running."""
    serverurl = read_serverurl(conf_path)
    proxy = make_proxy(serverurl).supervisor
    try:
        state = proxy.getState()
    except (OSError, xmlrpc.client.ProtocolError) as exc:
        where = serverurl[len("unix://"):] if serverurl.startswith("unix://") else serverurl
        raise ChaosError(f"supervisord is not running (cannot reach {where}: {exc}); "
                         f"start it with: supervisord -c {conf_path}") from None
    if state.get("statename") != "RUNNING":
        raise ChaosError(f"supervisord is {state.get('statename', '?')}, not RUNNING")
    return proxy


# ---------------------------------------------------------------------- process facts

def processes(proxy) -> list[dict]:
    """supervisord's process info dicts, sorted by name."""
    return sorted(_rpc(proxy.getAllProcessInfo), key=lambda info: info["name"])


def process_info(proxy, name: str) -> dict:
    return _rpc(proxy.getProcessInfo, name, name=name)


def is_paused(pid: int) -> bool:
    """True if the process is stopped by a signal (state T in /proc/PID/stat)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    # the state follows the parenthesised command name, which may itself contain spaces
    return stat[stat.rfind(")") + 2:][:1] in ("T", "t")


def _running(info: dict) -> bool:
    return info["statename"] == "RUNNING"


# ---------------------------------------------------------------------- actions

def kill(proxy, name: str) -> str:
    info = _require_running(proxy, name)
    _rpc(proxy.signalProcess, name, "KILL", name=name)
    return (f"killed {name} (pid {info['pid']}) with SIGKILL; supervisord restarts it "
            f"(autorestart=unexpected)")


def stop(proxy, name: str) -> str:
    info = process_info(proxy, name)
    if not _running(info) and info["statename"] not in ("STARTING", "BACKOFF"):
        return f"{name} is already {info['statename'].lower()}"
    prefix = ""
    if _running(info) and is_paused(info["pid"]):
        # a stopped process can't act on TERM: resume it so it shuts down cleanly
        _rpc(proxy.signalProcess, name, "CONT", name=name)
        prefix = "resumed paused process, "
    _rpc(proxy.stopProcess, name, True, name=name)
    was = f"was pid {info['pid']}" if info["pid"] else f"was {info['statename'].lower()}"
    return f"stopped {name} ({prefix}{was})"


def start(proxy, name: str) -> str:
    info = process_info(proxy, name)
    if _running(info):
        return f"{name} is already running (pid {info['pid']})"
    _rpc(proxy.startProcess, name, True, name=name)
    after = process_info(proxy, name)
    return f"started {name} (pid {after['pid']})"


def pause(proxy, name: str) -> str:
    info = _require_running(proxy, name)
    if is_paused(info["pid"]):
        return f"{name} (pid {info['pid']}) is already paused"
    _rpc(proxy.signalProcess, name, "STOP", name=name)
    return f"paused {name} (pid {info['pid']}) with SIGSTOP; resume it with: resume {name}"


def resume(proxy, name: str) -> str:
    info = _require_running(proxy, name)
    _rpc(proxy.signalProcess, name, "CONT", name=name)
    return f"resumed {name} (pid {info['pid']}) with SIGCONT"


def restart(proxy, name: str) -> str:
    stopped = stop(proxy, name)
    started = start(proxy, name)
    return f"restarted {name}: {stopped}; {started}"


def status_lines(proxy) -> list[str]:
    lines = []
    for info in processes(proxy):
        state = info["statename"]
        if _running(info) and is_paused(info["pid"]):
            state = "PAUSED"
        lines.append(f"{info['name']:<8} {state:<9} {info.get('description', '')}")
    return lines


ACTIONS: dict[str, Callable[[object, str], str]] = {
    "kill": kill, "stop": stop, "start": start, "pause": pause, "resume": resume,
    "restart": restart,
}


# ---------------------------------------------------------------------- random picks

def pick_random_running(proxy, rng: random.Random | None = None,
                        include_paused: bool = False) -> str:
    """A random RUNNING process (by default not a paused one); ChaosError if there is none."""
    names = [info["name"] for info in processes(proxy) if _running(info)
             and (include_paused or not is_paused(info["pid"]))]
    if not names:
        raise ChaosError("no running node to pick")
    return (rng or random).choice(names)


def pick_random(proxy, action: str, rng: random.Random | None = None) -> str:
    """A random process that ``action`` makes sense on."""
    rng = rng or random
    infos = processes(proxy)
    if action == "start":
        names = [i["name"] for i in infos if i["statename"] in ("STOPPED", "EXITED", "FATAL")]
        what = "stopped"
    elif action == "resume":
        names = [i["name"] for i in infos if _running(i) and is_paused(i["pid"])]
        what = "paused"
    else:
        return pick_random_running(proxy, rng)
    if not names:
        raise ChaosError(f"no {what} node to pick")
    return rng.choice(names)


# ---------------------------------------------------------------------- helpers

def _require_running(proxy, name: str) -> dict:
    info = process_info(proxy, name)
    if not _running(info):
        raise ChaosError(f"{name} is not running (state {info['statename']})")
    return info


def _rpc(method, *args, name: str | None = None):
    try:
        return method(*args)
    except xmlrpc.client.Fault as fault:
        raise ChaosError(_fault_message(fault, name)) from None
    except OSError as exc:
        raise ChaosError(f"lost the connection to supervisord: {exc}") from None


def _fault_message(fault: xmlrpc.client.Fault, name: str | None) -> str:
    code = fault.faultCode
    if code == _BAD_NAME:
        return f"unknown node {name!r} (not a program in the supervisord config)"
    if code == _NOT_RUNNING:
        return f"{name} is not running"
    if code == _ALREADY_STARTED:
        return f"{name} is already started"
    if code in (_SPAWN_ERROR, _ABNORMAL_TERMINATION):
        return (f"{name} failed to start ({fault.faultString}); see its log under var/log/")
    if code == _BAD_SIGNAL:
        return f"bad signal for {name}: {fault.faultString}"
    return f"supervisord refused: {fault.faultString} (fault {code})"


# ---------------------------------------------------------------------- CLI

def build_parser(default_conf: str | None = None,
                 prog: str = "python -m zring.chaos") -> argparse.ArgumentParser:
    """The CLI's arguments; without ``default_conf``, ``--conf`` is required."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Fault injection for zring nodes run by supervisord.")
    parser.add_argument("action", choices=[*ACTIONS, "status"])
    parser.add_argument("names", nargs="*", metavar="name", help="program name, e.g. node2")
    parser.add_argument("--random", action="store_true",
                        help="pick a node at random (a running one; stopped for start, "
                             "paused for resume)")
    parser.add_argument("--all", action="store_true",
                        help="every running node (every stopped one for start)")
    parser.add_argument("--conf", default=default_conf, required=default_conf is None,
                        help="supervisord config"
                             + (" (default: %(default)s)" if default_conf else ""))
    return parser


def main(argv: Sequence[str] | None = None, default_conf: str | None = None,
         prog: str = "python -m zring.chaos") -> int:
    parser = build_parser(default_conf, prog)
    args = parser.parse_args(argv)
    chosen = sum((bool(args.names), args.random, args.all))
    if args.action != "status" and chosen != 1:
        parser.error(f"{args.action} needs node names, --random or --all (one of them)")
    if args.action == "status" and chosen:
        parser.error("status takes no node name")
    try:
        proxy = connect(args.conf)
        if args.action == "status":
            for line in status_lines(proxy):
                print(line)
            return 0
        if args.random:
            names = [pick_random(proxy, args.action)]
        elif args.all:
            wanted = (lambda info: not _running(info)) if args.action == "start" else _running
            names = [info["name"] for info in processes(proxy) if wanted(info)]
            if not names:
                raise ChaosError(f"no node to {args.action}")
        else:
            names = args.names
        for name in names:
            print(ACTIONS[args.action](proxy, name), flush=True)
        return 0
    except ChaosError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
