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
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Op", "check_linearizable", "real_time_anomalies", "summarize"]

INFINITY = math.inf


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
    ops: int
    searched: int                 # states the search visited
    stuck_at: Op | None = None    # the first op the longest linearization could not pass
    prefix: int = 0               # ops in that longest linearization
    exhausted: bool = False       # gave up after ``max_states``: no verdict


def _relevant(ops: Sequence[Op]) -> list[Op]:
    """Ops that constrain the order: acknowledged ones, and unacknowledged writes whose value
    some acknowledged read returned (one that nobody read can always take effect last, which
    for a register is the same as never)."""
    read_values = {op.value for op in ops if op.f == "read" and op.acknowledged}
    kept = []
    for op in ops:
        if op.acknowledged:
            kept.append(op)
        elif op.f == "write" and op.value in read_values:
            kept.append(op)
    return kept


def check_key(key: str, ops: Sequence[Op], initial: object = None,
              max_states: int = 2_000_000) -> KeyVerdict:
    """Wing-Gong-Lowe search over one key's ops (see the module docstring)."""
    ops = _relevant(ops)
    if not ops:
        return KeyVerdict(key, True, 0, 0)
    # events: (time, 0 = call / 1 = return, op index); a call sorts before a return at the
    # same instant, so two ops that touch in time count as concurrent (the generous reading)
    events: list[tuple[float, int, int]] = []
    for index, op in enumerate(ops):
        events.append((op.invoke, 0, index))
        if op.acknowledged:
            events.append((op.complete, 1, index))
    events.sort()
    size = len(events)
    # a doubly linked list over the events (-1 ends it), behind a head sentinel ``size``
    head = size
    nxt = [position + 1 for position in range(size)] + [0]
    nxt[size - 1] = -1
    prv = [head] + list(range(size - 1)) + [-1]
    call_at = [0] * len(ops)
    return_at = [-1] * len(ops)
    for position, (_, kind, index) in enumerate(events):
        if kind == 0:
            call_at[index] = position
        else:
            return_at[index] = position

    def unlink(position: int) -> None:
        before, after = prv[position], nxt[position]
        nxt[before] = after
        if after != -1:
            prv[after] = before

    def relink(position: int) -> None:
        before, after = prv[position], nxt[position]
        nxt[before] = position
        if after != -1:
            prv[after] = position

    remaining = sum(1 for op in ops if op.acknowledged)
    state = initial
    linearized = 0
    cache: set[tuple[int, object]] = {(0, initial)}
    stack: list[tuple[int, object]] = []     # (op index, state before it)
    entry = nxt[head]
    searched = 0
    best_prefix, stuck_at = 0, None
    while remaining:
        searched += 1
        if searched > max_states:
            return KeyVerdict(key, False, len(ops), searched, stuck_at, best_prefix,
                              exhausted=True)
        if entry != -1:
            _, kind, index = events[entry]
        else:  # past the last event with an acknowledged op still open: undo a choice
            kind, index = 1, stack[-1][0] if stack else 0
        if kind == 0:
            op = ops[index]
            if op.f == "write":
                ok, new_state = True, op.value
            else:
                ok, new_state = op.value == state, state
            if ok:
                bit = 1 << index
                marker = (linearized | bit, new_state)
                if marker not in cache:
                    cache.add(marker)
                    stack.append((index, state))
                    state = new_state
                    linearized |= bit
                    unlink(call_at[index])
                    if return_at[index] != -1:
                        unlink(return_at[index])
                        remaining -= 1
                    if len(stack) > best_prefix:
                        best_prefix, stuck_at = len(stack), None
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
            continue
        # a return whose op is not linearized yet: undo the last choice
        if len(stack) == best_prefix and stuck_at is None:
            stuck_at = ops[index]
        if not stack:
            return KeyVerdict(key, False, len(ops), searched, stuck_at or ops[index],
                              best_prefix)
        index, state = stack.pop()
        linearized &= ~(1 << index)
        if return_at[index] != -1:
            relink(return_at[index])
            remaining += 1
        relink(call_at[index])
        entry = nxt[call_at[index]]
    return KeyVerdict(key, True, len(ops), searched)


def check_linearizable(ops: Iterable[Op], initial: object = None,
                       max_states: int = 2_000_000) -> dict[str, KeyVerdict]:
    """Each key's verdict (see ``check_key``)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    return {key: check_key(key, key_ops, initial, max_states)
            for key, key_ops in sorted(by_key.items())}


def real_time_anomalies(ops: Iterable[Op]) -> list[dict]:
    """Reads that real time alone shows wrong (see the module docstring), oldest first."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    found: list[dict] = []
    for key, key_ops in sorted(by_key.items()):
        writes: dict[object, Op] = {}
        for op in key_ops:
            if op.f == "write" and op.value is not None:
                writes[op.value] = op
        acked_writes = [w for w in key_ops if w.f == "write" and w.acknowledged]
        deletes = [w for w in key_ops if w.f == "write" and w.value is None]
        reads = sorted((r for r in key_ops if r.f == "read" and r.acknowledged),
                       key=lambda r: r.invoke)
        for read in reads:
            source = writes.get(read.value) if read.value is not None else None
            if read.value is not None and (source is None or source.invoke > read.complete):
                found.append({"anomaly": "future", "key": key, "read": read.value,
                              "at": read.invoke, "process": read.process})
                continue
            # a write acknowledged before the read began, after every write the read's
            # value could come from had been acknowledged
            for newer in acked_writes:
                if newer.complete >= read.invoke or newer.value == read.value:
                    continue
                if read.value is not None:
                    precedes = source.acknowledged and source.complete < newer.invoke
                else:   # absent: the initial state, or any delete that may follow newer
                    precedes = all(d.acknowledged and d.complete < newer.invoke
                                   for d in deletes if d.invoke < read.complete)
                if precedes:
                    found.append({"anomaly": "stale", "key": key, "read": read.value,
                                  "newer": newer.value, "newer_acked_at": newer.complete,
                                  "at": read.invoke, "process": read.process})
                    break
        # monotonic reads: a later read must not return a value whose write precedes, in
        # real time, the write of a value an earlier read returned
        for earlier in reads:
            first = writes.get(earlier.value)
            if first is None:
                continue
            for later in reads:
                if later.invoke <= earlier.complete or later.value == earlier.value:
                    continue
                older = writes.get(later.value) if later.value is not None else None
                if older is not None and older.acknowledged and older.complete < first.invoke:
                    found.append({"anomaly": "went-back", "key": key, "read": later.value,
                                  "after_reading": earlier.value, "at": later.invoke,
                                  "process": later.process})
                    break
    return sorted(found, key=lambda a: a["at"])


def summarize(ops: Sequence[Op], max_states: int = 2_000_000) -> dict:
    """Both checks of one history: the linearizability verdict per key and the anomalies."""
    verdicts = check_linearizable(ops, max_states=max_states)
    failed = [v for v in verdicts.values() if not v.linearizable]
    anomalies = real_time_anomalies(ops)
    return {
        "keys": len(verdicts),
        "linearizable": not failed,
        "nonlinearizable_keys": [v.key for v in failed if not v.exhausted],
        "undecided_keys": [v.key for v in failed if v.exhausted],
        "counterexamples": [{"key": v.key, "linearized_ops": v.prefix,
                             "stuck_at": _describe(v.stuck_at)} for v in failed[:5]],
        "stale": sum(a["anomaly"] == "stale" for a in anomalies),
        "went_back": sum(a["anomaly"] == "went-back" for a in anomalies),
        "future": sum(a["anomaly"] == "future" for a in anomalies),
        "anomalies": anomalies[:10],
    }


def _describe(op: Op | None) -> dict | None:
    if op is None:
        return None
    return {"f": op.f, "value": op.value, "invoke": op.invoke, "complete": op.complete,
            "outcome": op.outcome, "process": op.process}
