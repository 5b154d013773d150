"""The deterministic fault simulation over many seeds (see faultsim.py): the node cores and
the client core on a simulated network. A failing seed names the command that replays it
and prints its schedule.

The default run takes seeds 0-199 (about a minute); ``ZRING_SIM_SEEDS=START:STOP`` takes
others (``.ci/run``'s longer tier runs 200-499)."""

from __future__ import annotations

import os

import pytest
import structlog
from faultsim import simulate

_START, _STOP = (int(part) for part in os.environ.get("ZRING_SIM_SEEDS", "0:200").split(":"))
SEEDS = range(_START, _STOP)
SECONDS = 6.0  # simulated seconds of faults per seed (~0.35 s of real time each)


@pytest.fixture(autouse=True, scope="module")
def quiet_logs():
    # the cores log every request at debug: formatting them would be most of the run
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    yield
    structlog.reset_defaults()


@pytest.mark.parametrize("seed", SEEDS)
def test_seed_keeps_every_invariant(seed):
    report = simulate(seed, seconds=SECONDS)
    assert report.acked > 0 and report.ops > 100, "the workload did not run"
    assert not report.violations, (
        f"seed {seed} broke an invariant; replay it with "
        f"`python tests/sim/faultsim.py {seed}`\n" + "\n".join(report.violations[:10])
        + "\nschedule:\n" + "\n".join(report.schedule))
