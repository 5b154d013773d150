"""tools/harness.py: the measuring tools' shared tables, timing and log reading."""

from __future__ import annotations

import argparse
import math

from zring.localcluster import load_tool

harness = load_tool("harness")


def test_layout_pads_columns_and_draws_rules():
    text = harness.layout([["what", "ops/s"], ["put", "1,234"], None, ["get", "5"]], left={0})
    assert text.splitlines() == ["what  ops/s", "----  -----", "put   1,234", "----  -----",
                                 "get       5"]


def test_number_texts_say_dash_for_missing_figures():
    assert harness.ratio_text(3.0, 2.0) == "1.50x"
    assert harness.ratio_text(1.0, 0.0) == harness.ratio_text(math.nan, 1.0) == "-"
    assert harness.number_text(1234.5, 1, " s") == "1,234.5 s"
    assert harness.number_text(None) == harness.number_text(math.nan) == "-"
    assert harness.seconds_text(1.234) == "1.23s" and harness.seconds_text(None) == "-"


def test_percentile_is_nearest_rank():
    assert harness.percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert harness.percentile([5, 1, 3, 2, 4], 0.99) == 5
    assert math.isnan(harness.percentile([], 0.5))
    result = harness.Result("r", latencies_ns=[1_000_000, 3_000_000])
    assert result.percentile_ms(0.5) == 1.0


def test_add_numbers_declares_typed_options_with_defaults():
    parser = argparse.ArgumentParser()
    harness.add_numbers(parser, [("--keys", int, 10, "keys"), ("--wait", float, None, None)])
    args = parser.parse_args(["--wait", "2.5"])
    assert args.keys == 10 and args.wait == 2.5


class FakeCluster:
    def __init__(self, text: str) -> None:
        self.text = text

    def log_text(self, name: str) -> str:
        return self.text


def test_node_log_entries_parse_events_and_pass_other_lines_on():
    log = ('{"event": "member_down", "timestamp": "2026-01-01T00:00:01Z"}\n'
           "Traceback (most recent call last):\n"
           '{"event": "broken", "timestamp": "not a time"}\n')
    others: list[str] = []
    entries = list(harness.node_log_entries(FakeCluster(log), "node1", others.append))
    assert [(entry["event"], at) for entry, at in entries] == [("member_down", 1767225601.0)]
    assert others == ["Traceback (most recent call last):"]


def test_timed_returns_the_duration_and_the_result():
    seconds, value = harness.timed(lambda: 42)
    assert value == 42 and 0 <= seconds < 1
