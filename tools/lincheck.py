"""Judging a key-value history by what its users saw: values and real time, never versions.

A history is a list of :class:`Op`: a write (or delete: a write of ``None``) or a read of one
key, with the real times at which the client invoked it and saw it complete, and what it
saw: ``ok`` (the write was acknowledged, or the read returned ``value``), ``fail`` or
``info`` (no answer, or an error: a write may still have taken effect, at any point after
its invoke). A failed read tells nothing and is ignored.

- :func:`check_linearizable`: is there one order of the operations, each taking effect at
  one instant between its invoke and its completion (a write that failed or timed out: at
  any instant after its invoke, or never), in which every read returns the value of the
  last write before it (``None`` before any)? The search is Wing and Gong's, with Lowe's
  cache of (operations linearized, register value) as Porcupine and Knossos run it, on each
  key on its own (a map of registers is linearizable if each register is).
- :func:`real_time_anomalies`: the simpler findings that explain a verdict, each by values
  and real time only: a read of a value nobody wrote, or whose write began after the read
  ended (``future``); a read that returned a value overwritten, before the read began, by a
  write that itself began after the first one was acknowledged (``stale``); a read that
  returned an older value than a read that ended before it began (``went-back``).

Written values must be unique per key (the workloads make them so); ``None`` (absent or
deleted) may recur.

How the search stays small: a write that was not acknowledged and whose value nobody read
is left out (it can always take effect last, which for a register is the same as never);
one whose value was read must take effect before the first of those reads completed, so
that instant serves as its completion. The key's history is then cut where no operation is
open (all before the cut completed before any after it began): every linearization orders
the pieces one after the other, so the search state is (piece, operations of the piece
linearized, value), whose sets stay small however long the history. And a read that may
take effect next and sees the register's value is taken at once, without trying the other
choices: moving a read to the front of any linearization that follows keeps it one.

A real-time anomaly always means the history is not linearizable; a history that is not
may show none (e.g. reads in a row seeing two concurrent writes' values as a, b, a).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Op", "KeyVerdict", "check_key", "check_linearizable", "real_time_anomalies",
           "summarize"]

INFINITY = math.inf
DEFAULT_MAX_STATES = 2_000_000


@dataclass(frozen=True, slots=True)
class Op:
    key: str
    f: str                    # "write" (a delete writes None) or "read"
    value: object             # written, or read (None: absent)
    invoke: float
    complete: float | None    # None: it never completed
    outcome: str = "ok"       # ok | fail | info
    process: int = 0

    @property
    def acknowledged(self) -> bool:
        return self.outcome == "ok" and self.complete is not None


@dataclass(slots=True)
class KeyVerdict:
    key: str
    linearizable: bool
    ops: int                      # ops that constrain the order (see ``_relevant``)
    searched: int                 # search states visited
    stuck_at: Op | None = None    # the first op the longest linearization could not pass
    prefix: int = 0               # ops in that longest linearization
    exhausted: bool = False       # gave up after ``max_states``: no verdict
    counterexample: dict = field(default_factory=dict)   # when not linearizable


@dataclass(slots=True)
class _Piece:
    """Ops of one key that no cut separates, sorted by invoke."""
    ops: list[Op]
    invokes: list[float]
    deadlines: list[float]        # by when each must have taken effect (inf: never needed)
    by_deadline: list[int]        # indexes of the required ops, earliest deadline first
    rank: list[int]               # each op's place in by_deadline (-1: not required)
    required: int                 # bit mask of by_deadline: all the required ops


def _relevant(ops: Sequence[Op]) -> list[tuple[Op, float]]:
    """The ops that constrain the order, each with the time by which it must have taken
    effect: an acknowledged op its completion; an unacknowledged write whose value an
    acknowledged read returned, the earliest completion of such a read (it must precede
    them all); an unacknowledged delete, when some read returned None, never (it may
    explain such a read, or not). Other unacknowledged writes can always take effect last
    (for a register the same as never) and are left out; so are reads without an answer."""
    first_read: dict[object, float] = {}
    none_read = False
    for op in ops:
        if op.f == "read" and op.acknowledged:
            if op.value is None:
                none_read = True
            else:
                first_read[op.value] = min(first_read.get(op.value, INFINITY), op.complete)
    kept = []
    for op in ops:
        if op.acknowledged:
            kept.append((op, max(op.complete, op.invoke)))
        elif op.f != "write":
            continue
        elif op.value is None:
            if none_read:
                kept.append((op, INFINITY))
        elif op.value in first_read:
            kept.append((op, max(first_read[op.value], op.invoke)))
    return kept


def _pieces(entries: list[tuple[Op, float]]) -> list[_Piece]:
    """Cut where every op so far must have taken effect before the next one begins (an op
    beginning exactly then counts as concurrent: the generous reading)."""
    entries = sorted(entries, key=lambda e: (e[0].invoke, e[1]))
    groups: list[list[tuple[Op, float]]] = []
    horizon = -INFINITY
    for op, deadline in entries:
        if not groups or op.invoke > horizon:
            groups.append([])
            horizon = -INFINITY
        groups[-1].append((op, deadline))
        horizon = max(horizon, deadline)
    pieces = []
    for group in groups:
        deadlines = [d for _, d in group]
        by_deadline = sorted((i for i, d in enumerate(deadlines) if d != INFINITY),
                             key=deadlines.__getitem__)
        rank = [-1] * len(group)
        for place, i in enumerate(by_deadline):
            rank[i] = place
        pieces.append(_Piece([op for op, _ in group], [op.invoke for op, _ in group],
                             deadlines, by_deadline, rank, (1 << len(by_deadline)) - 1))
    return pieces


def check_key(key: str, ops: Sequence[Op], initial: object = None,
              max_states: int = DEFAULT_MAX_STATES) -> KeyVerdict:
    """Wing-Gong-Lowe search over one key's ops (see the module docstring): a depth-first
    search for a path through states (piece, ops of it linearized, register value), each
    state visited once."""
    pieces = _pieces(_relevant(ops))
    total = sum(len(p.ops) for p in pieces)
    done_before = [0]
    for piece in pieces:
        done_before.append(done_before[-1] + len(piece.ops))
    start = (0, 0, initial)
    parent: dict[tuple, tuple | None] = {start: None}   # the state we came from, and the op
    # each entry: a state, and the same ops linearized as a mask over the piece's by_deadline
    stack: list[tuple[tuple, int]] = [(start, 0)]
    searched = 0
    deepest, deepest_rank = start, (0, 0)
    while stack:
        state, done = stack.pop()
        searched += 1
        index, mask, value = state
        if index == len(pieces):
            return KeyVerdict(key, True, total, searched, prefix=total)
        if searched > max_states:
            verdict = KeyVerdict(key, False, total, searched, exhausted=True)
            _explain(verdict, pieces, parent, deepest, done_before)
            return verdict
        piece = pieces[index]
        rank = (index, mask.bit_count())
        if rank > deepest_rank:
            deepest, deepest_rank = state, rank
        if done == piece.required:
            _push((index + 1, 0, value), 0, state, None, parent, stack)
            continue
        # the earliest deadline of an op not linearized yet: only ops invoked by then may
        # take effect next
        due = piece.deadlines[piece.by_deadline[_lowest_zero(done)]]
        candidates = []
        free = ~mask & ((1 << bisect.bisect_right(piece.invokes, due)) - 1)
        while free:
            lowest = free & -free
            free ^= lowest
            i = lowest.bit_length() - 1
            op = piece.ops[i]
            if op.f == "read" and op.value != value:
                continue
            child = (index, mask | 1 << i, op.value if op.f == "write" else value)
            place = piece.rank[i]
            candidates.append((child, done | 1 << place if place >= 0 else done, i))
            if op.f == "read":
                # a read that may take effect now and sees the value: taking it now loses
                # no linearization (move it to the front of any), so it is the only choice
                candidates = candidates[-1:]
                break
        for child, child_done, i in reversed(candidates):   # the earliest invoked first
            _push(child, child_done, state, i, parent, stack)
    verdict = KeyVerdict(key, False, total, searched)
    _explain(verdict, pieces, parent, deepest, done_before)
    return verdict


def _lowest_zero(mask: int) -> int:
    return ((mask + 1) & ~mask).bit_length() - 1


def _push(child: tuple, done: int, state: tuple, op_index: int | None, parent: dict,
          stack: list) -> None:
    if child not in parent:
        parent[child] = (state, op_index)
        stack.append((child, done))


def _explain(verdict: KeyVerdict, pieces: list[_Piece], parent: dict, deepest: tuple,
             done_before: list[int]) -> None:
    """The counterexample: the piece of history the longest linearization could not get
    through, the values the register could hold when it began, the order found so far in
    it and the op whose completion came before it could take effect."""
    index, mask, value = deepest
    piece = pieces[index]
    order = []
    state = deepest
    while state is not None and state[0] == index and parent[state] is not None:
        state, op_index = parent[state]
        if op_index is not None:
            order.append(piece.ops[op_index])
    order.reverse()
    starts = sorted({s[2] for s in parent if s[0] == index and s[1] == 0}, key=repr)
    waiting = [i for i in piece.by_deadline if not mask >> i & 1]   # by deadline
    stuck = piece.ops[waiting[0]] if waiting else None
    verdict.stuck_at = stuck
    verdict.prefix = done_before[index] + mask.bit_count()
    verdict.counterexample = {
        "key": verdict.key,
        "values_before": starts[:10],
        "linearized": [describe(op) for op in order[-10:]],
        "value_then": value,
        "stuck_at": describe(stuck),
        "not_linearized": [describe(piece.ops[i]) for i in range(len(piece.ops))
                           if not mask >> i & 1][:10],
        "piece_ops": len(piece.ops),
    }


def check_linearizable(ops: Iterable[Op], initial: object = None,
                       max_states: int = DEFAULT_MAX_STATES) -> dict[str, KeyVerdict]:
    """Each key's verdict (see ``check_key``)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    return {key: check_key(key, key_ops, initial, max_states)
            for key, key_ops in sorted(by_key.items())}


def _prefix_best(items: list[tuple[float, float, Op]]) -> tuple[list[float], list]:
    """``items`` (time, score, op) sorted by time: the times, and for each prefix the item
    with the greatest score (ties: the earliest)."""
    items.sort(key=lambda item: item[0])
    times, best = [], []
    for item in items:
        times.append(item[0])
        best.append(item if not best or item[1] > best[-1][1] else best[-1])
    return times, best


def _best_before(times: list[float], best: list, at: float):
    """The best item among those whose time is strictly before ``at`` (None: none)."""
    count = bisect.bisect_left(times, at)
    return best[count - 1] if count else None


def real_time_anomalies(ops: Iterable[Op]) -> list[dict]:
    """Reads that real time alone shows wrong (see the module docstring), oldest first."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    found: list[dict] = []
    for key, key_ops in sorted(by_key.items()):
        writes = {op.value: op for op in key_ops if op.f == "write" and op.value is not None}
        deletes = [op for op in key_ops if op.f == "write" and op.value is None]
        reads = sorted((op for op in key_ops if op.f == "read" and op.acknowledged),
                       key=lambda op: op.invoke)
        acked = [op for op in key_ops if op.f == "write" and op.acknowledged]
        # acknowledged writes by completion, with the latest invoke so far: the newest
        # write that certainly took effect after another one, before a read began
        any_times, any_best = _prefix_best([(w.complete, w.invoke, w) for w in acked])
        value_times, value_best = _prefix_best([(w.complete, w.invoke, w) for w in acked
                                                if w.value is not None])
        # reads by completion, with the latest invoke of the write of what they returned
        read_times, read_best = _prefix_best([(r.complete, writes[r.value].invoke, r)
                                              for r in reads if r.value in writes])
        for read in reads:
            source = writes.get(read.value) if read.value is not None else None
            if read.value is not None and (source is None or source.invoke > read.complete):
                found.append({"anomaly": "future", "key": key, "read": read.value,
                              "at": read.invoke, "process": read.process})
                continue
            # the latest moment the value read can have been written: a write's
            # acknowledgement, or (None) the initial state's, or the last delete's
            settled = _settled_at(read, source, deletes)
            if settled is None:
                continue   # it may have taken effect any time: no real-time bound
            times, best = (any_times, any_best) if read.value is not None else \
                (value_times, value_best)
            newer = _best_before(times, best, read.invoke)
            if newer is not None and newer[1] > settled:
                found.append({"anomaly": "stale", "key": key, "read": read.value,
                              "newer": newer[2].value, "newer_acked_at": newer[0],
                              "at": read.invoke, "process": read.process})
            # monotonic reads: a read that ended before this one began returned a value
            # whose write began after the write of ours was acknowledged
            earlier = _best_before(read_times, read_best, read.invoke)
            if earlier is not None and earlier[1] > settled:
                found.append({"anomaly": "went-back", "key": key, "read": read.value,
                              "after_reading": earlier[2].value, "at": read.invoke,
                              "process": read.process})
    return sorted(found, key=lambda a: a["at"])


def _settled_at(read: Op, source: Op | None, deletes: list[Op]) -> float | None:
    """By when the value ``read`` returned was certainly written (None: an unacknowledged
    write or delete may have put it there at any later time)."""
    if source is not None:
        return source.complete if source.acknowledged else None
    possible = [d for d in deletes if d.invoke <= read.complete]
    if any(not d.acknowledged for d in possible):
        return None
    return max((d.complete for d in possible), default=-INFINITY)


def summarize(ops: Sequence[Op], max_states: int = DEFAULT_MAX_STATES) -> dict:
    """Both checks of one history: the linearizability verdict per key and the anomalies.
    ``linearizable`` is True only if every key was shown linearizable: a key whose search
    ran out of ``max_states`` is undecided, listed apart, never a pass."""
    verdicts = check_linearizable(ops, max_states=max_states)
    failed = [v for v in verdicts.values() if not v.linearizable]
    anomalies = real_time_anomalies(ops)
    return {
        "keys": len(verdicts),
        "linearizable": not failed,
        "nonlinearizable_keys": [v.key for v in failed if not v.exhausted],
        "undecided_keys": [v.key for v in failed if v.exhausted],
        "counterexamples": [v.counterexample for v in failed if not v.exhausted][:5],
        "searched": sum(v.searched for v in verdicts.values()),
        "stale": sum(a["anomaly"] == "stale" for a in anomalies),
        "went_back": sum(a["anomaly"] == "went-back" for a in anomalies),
        "future": sum(a["anomaly"] == "future" for a in anomalies),
        "anomalies": anomalies[:10],
    }


def describe(op: Op | None) -> dict | None:
    if op is None:
        return None
    return {"f": op.f, "value": op.value, "invoke": op.invoke, "complete": op.complete,
            "outcome": op.outcome, "process": op.process}
