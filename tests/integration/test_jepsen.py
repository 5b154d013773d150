"""The short Jepsen-style run: tools/jepsen.py on 5 nodes in network namespaces, one fault of
each kind, then its checker's verdict. Needs root (ip netns, iptables); skipped otherwise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cluster import ROOT

from zring.localcluster import load_tool

pytestmark = pytest.mark.integration

JEPSEN = ROOT / "tools" / "jepsen.py"


def _problems() -> list[str]:
    return load_tool("jepsen").preflight()


@pytest.mark.timeout(420)
def test_no_acknowledged_write_lost_and_no_stale_read_under_every_fault(tmp_path):
    problems = _problems()
    if problems:
        pytest.skip("; ".join(problems))
    out = tmp_path / "result.json"
    process = subprocess.Popen(
        [sys.executable, str(JEPSEN), "--faults", "7", "--interval", "5", "--dir",
         str(tmp_path / "run"), "--json", str(out)],
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
    kinds = result["fault_kinds"]
    assert result["faults"] == 7 and len(kinds) >= 6, report   # delay needs NetfilterQueue
    assert {event["fault"] for event in result["events"]} == set(kinds)
    assert result["set"]["lost"] == [] and result["set"]["unexpected"] == [], report
    assert result["set"]["unread"] == [], report
    assert result["register"]["stale"] == 0 and result["register"]["unexpected"] == 0, report
    # the workloads really ran through the faults, and most of it succeeded
    assert result["set"]["acknowledged"] > 500, report
    assert result["register"]["reads"] > 200, report
