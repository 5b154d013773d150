"""What the ``zring`` command prints: tables of status, ring and plan, and the live
progress bar of a joining or leaving member. Pure text from the client's results."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zring.client import ClusterStatus, MemberInfo, RingState

__all__ = ["TransferBar", "format_bytes", "format_clock", "format_plan", "format_ring",
           "format_status", "state_code"]

_STATE_LETTERS = {"normal": "N", "joining": "J", "leaving": "L", "left": "X"}
_LIVENESS_LETTERS = {"up": "U", "suspect": "S", "down": "D"}


def state_code(liveness: str, status: str) -> str:
    """Two letters as in ``nodetool status``: Up/Suspect/Down, then Normal/Joining/Leaving
    (X: left)."""
    return _LIVENESS_LETTERS.get(liveness, "?") + _STATE_LETTERS.get(status, "?")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]],
           right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(str(cell)) for cell in column)
              for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_status(status: ClusterStatus, *, show_left: bool = False) -> str:
    """A ``nodetool status``-like table of the members, then any transfers in flight.
    "Ring" is the start of the ring version each member routes by: during a change they
    differ until every member switched."""
    members = [m for m in status.members if show_left or m.status != "left"]
    rows = [(state_code(m.liveness, m.status), m.node_id, m.address, str(m.keys_count),
             format_bytes(m.bytes).replace(" ", ""), str(m.hints), f"{m.ownership * 100:.1f}%",
             f"{m.weight:g}", f"{m.ring_version:016x}"[:8], format_clock(m)) for m in members]
    lines = ["Status=Up/Suspect/Down", "|/ State=Normal/Leaving/Joining" +
             ("/X=left" if show_left else "")]
    lines += _table(("--", "Node", "Address", "Keys", "Data", "Hints", "Owns", "Weight", "Ring",
                     "Clock"), rows, right=frozenset({3, 4, 5, 6}))
    stale = [m.node_id for m in members if m.figures != "exact" and m.liveness == "up"]
    if stale:
        lines.append(f"(keys, data and hints of {', '.join(stale)} as last gossiped: no "
                     "answer in time)")
    off = [m for m in members if m.clock_ok is False]
    for member in off:
        lines.append(f"{member.node_id}'s clock is {member.clock_offset_s:+.3f} s from its "
                     "peers': it coordinates no writes until it is fixed (NTP)")
    transfers = [(m.node_id, m.transfer) for m in members if m.transfer is not None]
    if transfers:
        lines += ["", "Transfers in flight:"]
        lines += _table(("Node", "Kind", "Keys", "Bytes", "Done"), [
            (node_id, t.kind, _of(t.keys_done, t.keys_total, f"{t.keys_done:,}",
                                  f"{t.keys_total:,}"),
             _of(t.bytes_done, t.bytes_total, format_bytes(t.bytes_done),
                 format_bytes(t.bytes_total)),
             f"{100 * t.keys_done / t.keys_total:.0f}%" if t.keys_total > 0 else "?")
            for node_id, t in transfers], right=frozenset({2, 3, 4}))
    hidden = len(status.members) - len(members)
    if hidden:
        lines.append(f"({hidden} left member{'s' if hidden > 1 else ''} hidden; --all shows "
                     "them)")
    if status.answered_by:
        lines.append(f"as seen by {status.answered_by}, ring fingerprint "
                     f"{status.fingerprint:016x}")
    return "\n".join(lines)


def format_clock(member) -> str:
    """The member's clock offset (from its peers', as it measured them; "off": past the
    maximum offset, so it coordinates no writes)."""
    if member.clock_offset_s is None:
        return "?"
    mark = "off " if member.clock_ok is False else ""
    return f"{mark}{member.clock_offset_s * 1000:+.0f}ms"


def _of(done: int, total: int, done_text: str, total_text: str) -> str:
    return f"{done_text} / {total_text}" if total >= 0 else f"{done_text} / ?"


def format_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def format_plan(plan: dict) -> str:
    """``zring plan``'s table: what each node holds, sends and receives, and the balance."""
    verb = "add" if plan["action"] == "add" else "remove"
    lines = [f"Plan: {verb} {plan['node_id']} (N={plan['replicas']}); nothing has moved", ""]

    def cell(records: int, size: int) -> str:
        return f"{records:,} ({format_bytes(size)})" if records else "0"

    rows = [(r["node_id"], cell(r["records_before"], r["bytes_before"]),
             cell(r["send_records"], r["send_bytes"]),
             cell(r["receive_records"], r["receive_bytes"]),
             cell(r["records_after"], r["bytes_after"])) for r in plan["nodes"]]
    lines += _table(("Node", "Holds now", "Sends", "Receives", "Holds after"), rows,
                    right=frozenset({1, 2, 3, 4}))
    moved, optimal = plan["moved_records"], plan["optimal_records"]
    ratio = f" = {moved / optimal:.3f}x the optimum of {optimal:,}" if optimal else ""
    lines += ["", f"moves {moved:,} records, {format_bytes(plan['moved_bytes'])}{ratio}",
              f"balance (peak/mean records per node): {plan['balance_before']:.3f} now, "
              f"{plan['balance_after']:.3f} after"]
    return "\n".join(lines)


class TransferBar:
    """A live progress bar (tqdm: keys, rate, ETA; bytes alongside) for a joining or leaving
    member, fed with the member's reported transfer at each poll."""

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.bar = None
        self.started = time.monotonic()

    def __call__(self, member: MemberInfo) -> None:
        transfer = member.transfer
        if transfer is None:
            return
        total = transfer.keys_total if transfer.keys_total >= 0 else None
        if self.bar is None:
            from tqdm import tqdm  # only the commands that wait on a transfer need it
            self.bar = tqdm(total=total, unit="keys", unit_scale=True, file=self.stream,
                            desc=f"{member.node_id} {transfer.kind}", dynamic_ncols=True,
                            mininterval=0.2, initial=transfer.keys_done)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.update(transfer.keys_done - self.bar.n)
        rate = transfer.bytes_done / max(time.monotonic() - self.started, 1e-3)
        size = format_bytes(transfer.bytes_done)
        if transfer.bytes_total >= 0:
            size += f"/{format_bytes(transfer.bytes_total)}"
        self.bar.set_postfix_str(f"{size}, {format_bytes(rate)}/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            if self.bar.total:
                self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def format_ring(state: RingState) -> str:
    """The ring's parameters and each owning node's share of it."""
    ownership = {m.node_id: m.ownership for m in state.members}
    lines = [f"nodes        {len(state.nodes)}",
             f"vnodes       {state.vnodes}",
             f"replicas     N={state.replicas} W={state.write_quorum} R={state.read_quorum}",
             f"fingerprint  {state.fingerprint:016x}", ""]
    rows = [(n.node_id, n.address, f"{n.weight:g}", str(round(state.vnodes * n.weight)),
             f"{ownership.get(n.node_id, 0.0) * 100:.2f}%") for n in state.nodes]
    lines += _table(("Node", "Address", "Weight", "Tokens", "Owns (primary)"), rows,
                    right=frozenset({3, 4}))
    return "\n".join(lines)
