"""What SQLiteStore keeps through a power loss, per synchronous mode (tests/powerloss.py).

A run writes group commits (write_if_newer, put_many, add_hints, delete_hints, delete_keys,
set_meta) to a SQLiteStore whose files go through a VFS that holds every write until the file
is synced, and to a MemoryStore model; the model's contents after each commit are the states a
recovery may land in. Power is cut between commits, or inside a commit or a checkpoint, and
what was not synced is lost, lands in order up to a torn write, or is torn sector by sector
(MODES; tests/powerloss.py). The store is reopened on what survived: it must hold exactly the
model's state after some commit (commits are atomic and land in order), no earlier than the
last durable one:

- synchronous FULL (``--fsync always``): every commit whose group commit returned.
- synchronous NORMAL (``--fsync periodic``): every commit before the last ``sync()`` that
  returned; later ones may be lost.

The model is not blind: with synchronous OFF, or NORMAL without ``sync()``, acknowledged
commits are lost. The surviving files are also opened by the stdlib's SQLite (the production
path) on a copy, which must recover the same contents.
"""

from __future__ import annotations

import itertools
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from powerloss import PowerLossVFS, connector
from storeworkload import apply_ops as _apply
from storeworkload import assert_figures as _assert_figures
from storeworkload import commit_ops as _commit_ops
from storeworkload import contents as _contents

from zring.errors import StorageError
from zring.storage import MemoryStore, SQLiteStore

SEEDS = range(3)
COMMITS = 24
MODES = {  # how unsynced writes fare at the loss
    "drop": {"unsynced": "lost"},
    "prefix": {"unsynced": "prefix"},
    "torn": {"unsynced": "torn"},
    "torn-no-psow": {"unsynced": "torn", "powersafe_overwrite": False},
}
_vfs_names = itertools.count()


@pytest.fixture
def make_vfs():
    made: list[PowerLossVFS] = []

    def make(*, seed: int = 0, unsynced: str = "lost",
             powersafe_overwrite: bool = True) -> PowerLossVFS:
        vfs = PowerLossVFS(f"powerloss-{next(_vfs_names)}", seed=seed, unsynced=unsynced,
                           powersafe_overwrite=powersafe_overwrite)
        made.append(vfs)
        return vfs

    yield make
    for vfs in made:
        vfs.unregister()


# ---------------------------------------------------------------------- one run

@dataclass
class Outcome:
    acknowledged: int   # group commits that returned before the loss
    durable: int        # commits the policy promises to keep
    attempted: int      # acknowledged, plus one cut short by the loss
    recovered: int      # the commit whose state the reopened store holds
    cut_in: str         # where power was lost: "between commits", "commit" or "sync"
    sync_ticks: list[int]  # writes, truncates and syncs of each sync() that returned

    @property
    def lost(self) -> int:
        return self.acknowledged - self.recovered


def _run(path: Path, vfs: PowerLossVFS, synchronous: str, *, seed: int, sync_every: int = 0,
         commits: int = COMMITS, cut_after: int = COMMITS, cut_inside: int | None = None,
         cut_in_sync: bool = False) -> Outcome:
    """Write ``commits`` group commits, ``sync()`` after every ``sync_every``-th, and lose
    power after ``cut_after`` commits: at once, or ``cut_inside`` writes/syncs later (in the
    next ``sync()`` if ``cut_in_sync``); then reopen and check what survived."""
    rng = random.Random(seed)
    connect = connector(vfs)
    store = SQLiteStore(path, synchronous=synchronous, connect=connect)
    model = MemoryStore()
    states = [_contents(model)]   # states[n]: after n commits
    acknowledged = synced = 0
    sync_ticks: list[int] = []
    cut_in = "between commits"
    armed = False

    def arm() -> None:
        nonlocal armed
        if not armed:
            armed = True
            vfs.lose_power_after(cut_inside)

    for number in range(1, commits + 1):
        ops = _commit_ops(rng, number)
        _apply(model, ops)
        states.append(_contents(model))
        if cut_inside is not None and not cut_in_sync and number > cut_after:
            arm()
        try:
            with store.group_commit():
                _apply(store, ops)
        except StorageError:
            assert not vfs.powered, "only the power loss fails a commit here"
            cut_in = "commit"
            break
        if not vfs.powered:   # lost during the call: its caller never saw it return
            cut_in = "commit"
            break
        acknowledged = number
        assert _contents(store) == states[number], "the store and its model disagree"
        if number == cut_after and cut_inside is None:
            vfs.power_loss()
            break
        if sync_every and number % sync_every == 0:
            if cut_inside is not None and cut_in_sync and number >= cut_after:
                arm()
            ticks = vfs.ticks
            try:
                store.sync()
            except StorageError:
                assert not vfs.powered
            if not vfs.powered:
                cut_in = "sync"
                break
            synced = number
            sync_ticks.append(vfs.ticks - ticks)
    else:
        vfs.power_loss()  # the loss never came during the run: now, with power on
    try:
        store.close()
    except StorageError:
        pass  # closing a connection that lost power
    vfs.power_on()

    durable = acknowledged if synchronous == "FULL" else synced
    attempted = acknowledged + (cut_in == "commit")
    copy = path.parent / "stdlib" / path.name
    copy.parent.mkdir()
    for part in path.parent.glob(path.name + "*"):
        shutil.copy(part, copy.parent / part.name)

    with SQLiteStore(path, synchronous=synchronous, connect=connect) as reopened:
        found = _contents(reopened)
        assert found in states[:attempted + 1], (
            f"the reopened store holds no state a commit left (cut in {cut_in} after "
            f"{acknowledged} acknowledged)")
        recovered = max(n for n in range(attempted + 1) if states[n] == found)
        _assert_figures(reopened, found)
        assert reopened.check() == []
    # the stdlib's SQLite recovers the same bytes (a scratch copy: no need to sync it)
    with SQLiteStore(copy, synchronous="OFF") as production:
        assert _contents(production) == found
        assert production.check() == []
    return Outcome(acknowledged, durable, attempted, recovered, cut_in, sync_ticks)


# ---------------------------------------------------------------------- the promises

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_full_keeps_every_acknowledged_commit(tmp_path, make_vfs, mode, seed):
    rng = random.Random(seed)
    vfs = make_vfs(seed=seed, **MODES[mode])
    # odd seeds also checkpoint now and then (a node in --fsync always only at 64 MiB of WAL)
    outcome = _run(tmp_path / "store.db", vfs, "FULL", seed=seed,
                   sync_every=7 if seed % 2 else 0, cut_after=rng.randint(1, COMMITS))
    assert outcome.recovered == outcome.acknowledged


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_normal_keeps_every_commit_before_the_last_sync(tmp_path, make_vfs, mode, seed):
    rng = random.Random(seed)
    vfs = make_vfs(seed=seed, **MODES[mode])
    outcome = _run(tmp_path / "store.db", vfs, "NORMAL", seed=seed, sync_every=5,
                   cut_after=rng.randint(6, COMMITS))
    assert outcome.durable >= 5
    assert outcome.durable <= outcome.recovered <= outcome.acknowledged
    if mode == "drop":   # nothing unsynced survives: exactly the synced commits
        assert outcome.recovered == outcome.durable


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_power_lost_inside_a_commit_or_sync(tmp_path, make_vfs, synchronous, mode, seed):
    """Cut at a random write, truncate or sync: mostly inside a commit (its WAL frames
    partly written, or its sync), sometimes inside a ``sync()``."""
    rng = random.Random(seed)
    vfs = make_vfs(seed=seed, **MODES[mode])
    outcome = _run(tmp_path / "store.db", vfs, synchronous, seed=seed, sync_every=6,
                   cut_after=rng.randint(1, COMMITS - 5), cut_inside=rng.randint(0, 80))
    assert outcome.durable <= outcome.recovered <= outcome.attempted


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
@pytest.mark.parametrize("mode", MODES)
def test_power_lost_during_a_checkpoint(tmp_path, make_vfs, synchronous, mode):
    """Power lost at the first steps of one checkpoint (the WAL's sync), at its last (the
    database's sync, the WAL's truncation) and between (database pages partly written)."""
    plan = {"seed": 3, "commits": 10, "sync_every": 4}
    dry = _run(tmp_path / "dry" / "store.db", make_vfs(), synchronous, **plan)
    steps = dry.sync_ticks[1]  # the writes, truncates and syncs of the checkpoint after 8
    assert steps > 10
    for step in sorted({0, 1, 2, steps // 3, 2 * steps // 3, steps - 2, steps - 1}):
        vfs = make_vfs(seed=step, **MODES[mode])
        outcome = _run(tmp_path / str(step) / "store.db", vfs, synchronous, cut_after=8,
                       cut_inside=step, cut_in_sync=True, **plan)
        assert (outcome.cut_in, outcome.acknowledged) == ("sync", 8)
        assert outcome.durable == (8 if synchronous == "FULL" else 4)
        assert outcome.durable <= outcome.recovered <= outcome.acknowledged
        if mode == "drop" and synchronous == "NORMAL":  # the checkpoint syncs the WAL first
            assert outcome.recovered == (4 if step == 0 else 8)


# ---------------------------------------------------------------------- the model can fail

def test_synchronous_off_loses_acknowledged_commits(tmp_path, make_vfs):
    outcome = _run(tmp_path / "store.db", make_vfs(), "OFF", seed=1, sync_every=5,
                   cut_after=20)
    assert outcome.acknowledged == 20
    assert outcome.lost > 0   # even sync() syncs nothing


def test_normal_without_sync_loses_commits_after_the_last_checkpoint(tmp_path, make_vfs):
    outcome = _run(tmp_path / "store.db", make_vfs(), "NORMAL", seed=1, cut_after=20)
    assert outcome.acknowledged == 20
    assert outcome.lost == 20   # no checkpoint: not even the store's creation was synced

    synced_once = _run(tmp_path / "again" / "store.db", make_vfs(), "NORMAL", seed=1,
                       sync_every=16, cut_after=20)
    assert synced_once.durable == 16
    assert synced_once.recovered == 16   # the four commits after the last checkpoint are lost
