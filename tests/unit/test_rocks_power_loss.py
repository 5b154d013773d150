"""What RocksStore keeps through a power loss, per fsync policy (tests/rocks_powerloss.py).

The same promises as the SQLite store's (tests/unit/test_power_loss.py), with the same
workload (tests/storeworkload.py), checked below RocksDB: a child process writes group
commits with tests/fsyncshim.c preloaded, dies by SIGKILL (after a commit, or at a chosen
file operation: inside a commit's WAL write or sync, a ``sync()``, a memtable flush), and the
store's directory is rewritten to what a power loss would have left (only what was fsynced,
under names whose directory was fsynced). The store is then reopened; it must hold exactly
the model's state after some commit (a loop cycle's batch is all or nothing, and commits land
in order), no earlier than the last durable one, with its figures and ``check()`` clean:

- ``--fsync always`` (``sync=True``: a synced WAL write per batch): every commit that
  returned.
- ``--fsync periodic`` (``sync=False``; ``sync()`` syncs the WAL): every commit before the
  last ``sync()`` that returned (a memtable flush makes more durable).

The model is not blind: ``periodic`` without a sync loses acknowledged commits, while the
same SIGKILL without the cut (the OS keeps what was written) loses none.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from rocks_powerloss import Child, build_shim, cut_power, run_child, snapshot
from storeworkload import apply_ops, assert_figures, commit_ops, contents

from zring.storage import MemoryStore
from zring.storage.rocks import RocksStore

COMMITS = 24
SEEDS = range(3)


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler (gcc): the power-loss shim for RocksDB is built from "
                    "tests/fsyncshim.c by the test")
    return build_shim(tmp_path_factory.mktemp("shim"))


_STATES: dict[tuple[int, int], list[tuple]] = {}


def _states(seed: int, commits: int) -> list[tuple]:
    """The model's contents after each commit (``[n]``: after n)."""
    if (seed, commits) not in _STATES:
        rng = random.Random(seed)
        model = MemoryStore()
        states = [contents(model)]
        for number in range(1, commits + 1):
            apply_ops(model, commit_ops(rng, number))
            states.append(contents(model))
        _STATES[seed, commits] = states
    return _STATES[seed, commits]


def _run(shim: Path, root: Path, *, always: bool, seed: int, commits: int = COMMITS,
         cut: bool = True, **plan) -> tuple[Child, int]:
    """One writer, one loss, one reopen: what the child said, and the commit whose state
    the reopened store holds (checked to be one)."""
    store, work = root / "store", root / "work"
    store.mkdir(parents=True)
    before = snapshot(store)
    child = run_child(shim, store, work, always=always, seed=seed, commits=commits, **plan)
    if cut:
        loss = cut_power(store, work, before)
        assert loss.violations == [], "RocksDB rewrote synced bytes: the model does not hold"
    states = _states(seed, commits)
    attempted = child.acknowledged + child.killed_by_shim
    with RocksStore(store, sync=always) as reopened:
        found = contents(reopened)
        assert found in states[:attempted + 1], (
            f"the reopened store holds no state a commit left ({child})")
        recovered = max(n for n in range(attempted + 1) if states[n] == found)
        assert_figures(reopened, found)
        assert reopened.check() == []
    return child, recovered


def _durable(child: Child, always: bool) -> int:
    if always:
        return child.acknowledged
    return max([child.synced, *child.flushed])


# ---------------------------------------------------------------------- the promises

@pytest.mark.parametrize("seed", SEEDS)
def test_always_keeps_every_acknowledged_commit(shim, tmp_path, seed):
    rng = random.Random(seed)
    child, recovered = _run(shim, tmp_path, always=True, seed=seed,
                            flush_every=8 if seed % 2 else 0,
                            kill_after=rng.randint(1, COMMITS))
    assert recovered == child.acknowledged


@pytest.mark.parametrize("seed", SEEDS)
def test_periodic_keeps_every_commit_before_the_last_sync(shim, tmp_path, seed):
    rng = random.Random(seed)
    child, recovered = _run(shim, tmp_path, always=False, seed=seed, sync_every=5,
                            kill_after=rng.randint(6, COMMITS))
    assert child.synced >= 5
    assert child.synced == recovered   # nothing unsynced survives this model's loss


@pytest.mark.parametrize("always", [True, False], ids=["always", "periodic"])
def test_power_lost_inside_a_commit_a_sync_or_a_flush(shim, tmp_path, always):
    """Cut at file operations spread over a whole run: the store's creation (its column
    families are created one MANIFEST write at a time), WAL writes and syncs, ``sync()``,
    flushes of every column family (SST files, a new WAL, the MANIFEST, CURRENT, the
    directory's syncs)."""
    dry, _ = _run(shim, tmp_path / "dry", always=always, cut=False, **_PLAN)
    assert dry.acknowledged == 16 and dry.events > 200
    rng = random.Random(always)
    points = sorted({1, 2, 5, 10, dry.events // 2, dry.events - 1,
                     *rng.sample(range(10, dry.events), 8)})
    _cut_at(shim, tmp_path, always, points)


@pytest.mark.slow
@pytest.mark.parametrize("always", [True, False], ids=["always", "periodic"])
def test_power_lost_at_every_other_file_operation(shim, tmp_path, always):
    """The test above at every other event of the run (~150 per policy, half a minute: the
    longer tier's time is bounded), the two policies cutting at opposite parities."""
    dry, _ = _run(shim, tmp_path / "dry", always=always, cut=False, **_PLAN)
    _cut_at(shim, tmp_path, always, range(1 if always else 2, dry.events, 2))


_PLAN = {"seed": 4, "commits": 16, "sync_every": 3, "flush_every": 5}


def _cut_at(shim: Path, tmp_path: Path, always: bool, points) -> None:
    plan = _PLAN
    for event in points:
        child, recovered = _run(shim, tmp_path / str(event), always=always, kill_at=event,
                                **plan)
        assert child.killed_by_shim
        attempted = child.acknowledged + 1
        assert _durable(child, always) <= recovered <= attempted, (event, child, recovered)


# ---------------------------------------------------------------------- the model can fail

def test_periodic_without_sync_loses_acknowledged_commits(shim, tmp_path):
    child, recovered = _run(shim, tmp_path / "cut", always=False, seed=1, kill_after=20)
    assert child.acknowledged == 20
    assert recovered == 0   # nothing was synced
    child, recovered = _run(shim, tmp_path / "kill", always=False, seed=1, kill_after=20,
                            cut=False)
    assert recovered == 20   # the process died, the machine did not: the OS kept it all
