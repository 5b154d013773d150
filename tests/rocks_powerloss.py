"""Power loss for a RocksDB store, below RocksDB (rocksdict does not expose its Env).

The store is written by a child process run with tests/fsyncshim.c preloaded (compiled by
``build_shim`` with gcc): the shim logs every open, write, truncate, fsync/fdatasync, close,
rename and unlink on the store's directory. Power is "lost" by SIGKILL (the child kills
itself after a chosen commit, or the shim kills it at a chosen event, in the middle of a
commit, a ``sync()`` or a memtable flush), then ``cut_power`` replays the log and rewrites
the directory to what a power loss would have left, on the POSIX model of durability:

- a file's bytes are durable up to its size at its last fsync/fdatasync; the rest is lost
  (the file is cut there; a file never synced is empty);
- a name (a created file, a rename, an unlink) is durable only once its directory was
  fsynced after it: names created since are gone, renames since are undone (the file that a
  rename replaced, or an unlink removed, comes back: the shim hard-linked it aside first);
- the directory as of its last fsync is what is left; a file the log never saw being created
  (RocksDB's info LOG, written through stdio) was never synced: dropped.

RocksDB writes its files append-only (it never rewrites a byte it wrote, and does not
recycle WAL files by default), so a file's synced state is its prefix; the replay checks
that (``Cut.violations``: a write or truncate below the synced size, or an O_TRUNC of a
synced file), since the model would be wrong otherwise. This is harsher than ext4 (which
also persists a new file's name when the file is fsynced) and gentler than a disk that
tears writes inside the synced prefix (which RocksDB's checksums would have to catch).

``python tests/rocks_powerloss.py SPEC`` is the child: it writes the commits of
tests/storeworkload.py to a RocksStore and prints ``A n`` as commit n returns, ``Y n`` as a
``sync()`` after it returns and ``F n`` as a flush after it returns.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHIM_SOURCE = HERE / "fsyncshim.c"


def build_shim(directory: Path) -> Path | None:
    """Compile the shim into ``directory``; None if there is no C compiler."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    library = directory / "fsyncshim.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(SHIM_SOURCE),
                    "-ldl"], check=True, capture_output=True, timeout=60)
    return library


@dataclass
class Child:
    """What the child said before it died."""

    acknowledged: int = 0           # the last commit that returned
    synced: int = 0                 # the last commit a returned sync() followed
    flushed: list[int] = field(default_factory=list)
    killed_by_shim: bool = False    # power lost at the shim's chosen event
    events: int = 0                 # events the shim logged


def run_child(shim: Path, store: Path, work: Path, *, always: bool, seed: int, commits: int,
              sync_every: int = 0, flush_every: int = 0, kill_after: int | None = None,
              kill_at: int | None = None, timeout_s: float = 60) -> Child:
    """Run the writer with the shim on ``store`` (an existing directory); ``work`` holds the
    log and the saved links. Power is lost after commit ``kill_after`` (SIGKILL by the
    child), at the shim's event ``kill_at``, or, with neither, after the last commit."""
    save = work / "saved"
    save.mkdir(parents=True, exist_ok=True)
    log = work / "events.log"
    spec = {"path": str(store), "always": always, "seed": seed, "commits": commits,
            "sync_every": sync_every, "flush_every": flush_every,
            "kill_after": commits if kill_after is None else kill_after}
    env = {**os.environ, "LD_PRELOAD": str(shim), "FSYNCSHIM_DIR": str(store),
           "FSYNCSHIM_LOG": str(log), "FSYNCSHIM_SAVE": str(save),
           "FSYNCSHIM_KILL_AT": "" if kill_at is None else str(kill_at),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    ran = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
                         capture_output=True, text=True, env=env, timeout=timeout_s)
    if ran.returncode != -signal.SIGKILL:
        raise AssertionError(f"the writer ended with {ran.returncode}, not by SIGKILL:\n"
                             f"{ran.stdout}\n{ran.stderr}")
    child = Child()
    for line in ran.stdout.splitlines():
        kind, number = line.split()
        if kind == "A":
            child.acknowledged = int(number)
        elif kind == "Y":
            child.synced = int(number)
        elif kind == "F":
            child.flushed.append(int(number))
    lines = log.read_text().splitlines() if log.exists() else []
    child.killed_by_shim = bool(lines) and lines[-1].startswith("!")
    child.events = len(lines) - child.killed_by_shim
    return child


class _Inode:
    """A file, followed through renames: where its bytes are now, and how many are synced."""

    def __init__(self, location: str, synced: int | None) -> None:
        self.location = location
        self.synced = synced


@dataclass
class Cut:
    """What ``cut_power`` left: file name -> bytes kept (of how many written)."""

    kept: dict[str, tuple[int, int]]
    dropped: list[str]                  # names that existed and are gone
    violations: list[str]               # writes the prefix model cannot represent


def snapshot(store: Path) -> dict[str, int]:
    """The files in ``store`` now (all durable: taken before the child starts)."""
    return {entry.name: entry.stat().st_size for entry in os.scandir(store) if entry.is_file()}


def cut_power(store: Path, work: Path, before: dict[str, int]) -> Cut:
    """Rewrite ``store`` to what a power loss would have left (the module docstring), from
    the files it held before the child (``snapshot``) and the shim's log in ``work``."""
    prefix = str(store) + "/"
    current: dict[str, _Inode] = {name: _Inode(prefix + name, size)
                                  for name, size in before.items()}
    durable = dict(current)
    fds: dict[int, _Inode | None] = {}    # None: the store directory itself
    violations: list[str] = []
    log = work / "events.log"
    for line in (log.read_text().splitlines() if log.exists() else []):
        kind, *fields = line.split(" ")
        if kind == "!":
            break
        if kind == "C":
            inode = _Inode(fields[1], None)
            current[_name(fields[1], prefix)] = inode
            fds[int(fields[0])] = inode
        elif kind == "O":
            fd, how, path = int(fields[0]), fields[1], fields[2]
            if how == "d":
                fds[fd] = None if path.rstrip("/") == str(store) else _Inode(path, None)
                continue
            name = _name(path, prefix)
            inode = current.get(name)
            if inode is None:   # made where the shim does not look (stdio): never synced
                inode = current[name] = _Inode(path, None)
            if how == "t" and inode.synced:
                violations.append(f"O_TRUNC of {name}, synced up to {inode.synced}")
            fds[fd] = inode
        elif kind in ("W", "T"):
            inode = fds.get(int(fields[0]))
            offset = int(fields[1])
            if inode is not None and inode.synced and offset < inode.synced:
                violations.append(f"{line}: below the synced size {inode.synced} of "
                                  f"{inode.location}")
        elif kind == "S":
            fd, size = int(fields[0]), int(fields[1])
            inode = fds.get(fd)
            if fd in fds and inode is None:     # the directory: its names as they are now
                durable = dict(current)
            elif inode is not None:
                inode.synced = max(inode.synced or 0, size)
        elif kind == "X":
            fds.pop(int(fields[0]), None)
        elif kind == "K":   # the file at a name about to go, linked aside (same bytes)
            inode = current.get(_name(fields[0], prefix))
            if inode is not None:
                inode.location = fields[1]
        elif kind == "R":
            source, target = _name(fields[0], prefix), _name(fields[1], prefix)
            inode = current.pop(source)
            if inode.location == fields[0]:
                inode.location = fields[1]
            current[target] = inode
        elif kind == "U":
            current.pop(_name(fields[0], prefix), None)
        else:
            raise AssertionError(f"unknown event {line!r}")
    kept: dict[str, tuple[int, int]] = {}
    contents: dict[str, bytes] = {}
    for name, inode in durable.items():
        with open(inode.location, "rb") as source:
            written = source.read()
        contents[name] = written[:inode.synced or 0]
        kept[name] = (len(contents[name]), len(written))
    dropped = sorted(entry.name for entry in os.scandir(store) if entry.name not in durable)
    for entry in os.scandir(store):
        os.unlink(entry.path)
    for name, data in contents.items():
        (store / name).write_bytes(data)
    return Cut(kept, dropped, violations)


def _name(path: str, prefix: str) -> str:
    if not path.startswith(prefix) or "/" in path[len(prefix):]:
        raise AssertionError(f"{path} is not a file of the store's directory")
    return path[len(prefix):]


# ---------------------------------------------------------------------- the child

def _child(spec: dict) -> None:
    from storeworkload import apply_ops, commit_ops

    from zring.storage.rocks import RocksStore

    rng = random.Random(spec["seed"])
    store = RocksStore(spec["path"], sync=spec["always"])
    out = sys.stdout

    def say(kind: str, number: int) -> None:
        out.write(f"{kind} {number}\n")
        out.flush()

    for number in range(1, spec["commits"] + 1):
        ops = commit_ops(rng, number)
        with store.group_commit():
            apply_ops(store, ops)
        say("A", number)
        if number == spec["kill_after"]:
            break
        if spec["sync_every"] and number % spec["sync_every"] == 0:
            store.sync()
            say("Y", number)
        if spec["flush_every"] and number % spec["flush_every"] == 0:
            for table in store._tables.values():   # each memtable to an SST file, a new
                table.flush()                       # WAL, the MANIFEST
            say("F", number)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
