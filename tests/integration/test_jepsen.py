"""The short Jepsen-style run: tools/jepsen.py on 5 nodes in network namespaces, one fault of
each kind, then its checkers' verdicts. Needs root (ip netns, iptables); skipped otherwise.
The delay fault needs NetfilterQueue and the clock faults Debian's faketime: without them
those kinds are skipped and the rest still run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cluster import ROOT

from zring.localcluster import load_tool

# about 70 s: in .ci/run's longer tier (pytest -m slow), not the README's test command
pytestmark = [pytest.mark.integration, pytest.mark.slow]

JEPSEN = ROOT / "tools" / "jepsen.py"


@pytest.mark.timeout(420)
def test_no_acknowledged_write_lost_and_the_register_linearizable_under_every_fault(tmp_path):
    jepsen = load_tool("jepsen")
    problems = jepsen.preflight()
    if problems:
        pytest.skip("; ".join(problems))
    kinds, _skipped = jepsen.available_kinds()
    out = tmp_path / "result.json"
    # one fault of each kind, 5 s apart (about 75 s in all)
    process = subprocess.Popen(
        [sys.executable, str(JEPSEN), "--faults", str(len(kinds)), "--interval", "5",
         "--dir", str(tmp_path / "run"), "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        report, _ = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    leftovers = [line for line in subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
        if line.startswith(f"zj{process.pid}-")]
    assert not leftovers, f"namespaces left behind: {leftovers}"
    assert process.returncode == 0, report
    result = json.loads(out.read_text())
    assert result["fault_kinds"] == kinds and "pause-long" in kinds, report
    assert result["faults"] == len(kinds), report
    assert sorted(event["fault"] for event in result["events"]) == sorted(kinds), report
    s, r = result["set"], result["register"]
    assert s["lost"] == [] and s["unexpected"] == [] and s["unread"] == [], report
    assert r["linearizable"] is True, report
    assert r["nonlinearizable_keys"] == [] and r["undecided_keys"] == [], report
    assert (r["stale"], r["went_back"], r["future"]) == (0, 0, 0), report
    # a node whose clock was far off refused to coordinate writes
    for event in result["events"]:
        if event["fault"] == "clock-skew-large":
            assert event["refused"] is True, report
    assert result["nemesis_problems"] == [], report
    # the workloads really ran through the faults, and most of it succeeded
    assert s["acknowledged"] > 500, report
    assert r["reads"] > 200, report
    # the workers' token-aware clients coordinated their own quorums while they could
    coordinated = result["client_coordinated"]
    assert coordinated["writes"] > 500 and coordinated["reads"] > 200, report
