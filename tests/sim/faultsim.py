"""Deterministic fault simulation: the real node cores of 3 to 7 nodes in one process, on a
simulated network and clock, driven by one seeded random schedule (the way FoundationDB and
TigerBeetle test).

The network loses, delays (so reorders) and duplicates messages and partitions nodes; nodes
crash and restart from what their store holds; nodes join and leave. Clients write unique
values and read them back, and every outcome is recorded. After the faults stop and the
network heals, the checker demands:

- no acknowledged write is lost: each key's newest version on its replicas is at least the
  newest acknowledged write's;
- no read returned a value that was never written;
- no read returned an older version than a write acknowledged before the read began
  (R + W > N);
- every replica of every key converges (after repair) on one version;
- every node holds the same ring.

Everything follows from the seed: ``python tests/sim/faultsim.py SEED`` replays one and
prints its schedule.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/simnet.py

from simnet import SimCluster  # noqa: E402

from zring.membership import MemberStatus  # noqa: E402
from zring.protocol import MsgType  # noqa: E402

N = 3


@dataclass
class Op:
    kind: str                 # "put" or "get"
    key: str
    value: bytes | None       # written, or read
    node: str
    started: float
    outcome: str = "pending"  # ok / failed / unknown
    version: tuple | None = None   # written, or read (None: not found)
    finished: float | None = None


@dataclass
class Report:
    seed: int
    schedule: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    ops: int = 0
    acked: int = 0


class FaultyNet(SimCluster):
    """SimCluster whose messages a seeded RNG loses, duplicates and delays, and which
    honours partitions (a set of address pairs that cannot talk)."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(latency_s=0.001)
        self.rng = rng
        self.loss = 0.0
        self.duplicate = 0.0
        self.jitter_s = 0.0
        self.cut: set[frozenset] = set()

    def _schedule(self, delay: float, action) -> None:
        if self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            extra = self.rng.expovariate(1 / self.jitter_s) if self.jitter_s else 0.0
            super()._schedule(delay + extra, action)

    def _linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) not in self.cut

    def _deliver_request(self, target, sender, frame):
        if self._linked(target, sender):
            super()._deliver_request(target, sender, frame)

    def _deliver_reply(self, target, sender, frame):
        if self._linked(target, sender):
            super()._deliver_reply(target, sender, frame)

    def _deliver_gossip(self, target, sender, frame):
        if self._linked(target, sender):
            super()._deliver_gossip(target, sender, frame)


class Simulation:
    def __init__(self, seed: int, *, seconds: float = 8.0) -> None:
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.net = FaultyNet(self.rng)
        self.seconds = seconds
        self.ops: dict[int, Op | list[Op]] = {}  # request id -> its op (a batch: ops)
        self.history: list[Op] = []
        self.written: dict[str, set[bytes]] = {}
        self.keys = [f"k{i}" for i in range(24)]
        self.sequence = 0
        self.crashed: dict[str, float] = {}     # node id -> restart time
        self.next_node = 0

    def log(self, event: str) -> None:
        self.report.schedule.append(f"{self.net.now - self.start:7.3f}s {event}")

    # ---------------------------------------------------------------- cluster

    def add_node(self, seed_node: bool) -> str:
        self.next_node += 1
        node_id = f"node{self.next_node}"
        self.net.add(node_id, seed=seed_node, vnodes=32, request_timeout_s=0.5,
                     hint_replay_interval_s=0.2, stream_batch_records=50,
                     stream_intervals_per_pull=16)
        return node_id

    def members(self, status: MemberStatus) -> list[str]:
        core = self.net.node("node1")
        return [m.node_id for m in core.members.all() if m.status == status]

    def up(self) -> list[str]:
        return [c.config.node_id for a, c in self.net.cores.items() if self.net._alive(a)]

    # ---------------------------------------------------------------- workload

    def start_op(self) -> None:
        nodes = [n for n in self.up()
                 if self.net.node(n).members.own.status != MemberStatus.LEFT]
        if not nodes:
            return
        node = self.rng.choice(nodes)
        if self.rng.random() < 0.2:  # a client batch: the MPUT/MGET fast paths
            self.start_batch(node)
            return
        key = self.rng.choice(self.keys)
        if self.rng.random() < 0.6:
            self.sequence += 1
            value = f"{key}={self.sequence}".encode()
            self.written.setdefault(key, set()).add(value)
            op = Op("put", key, value, node, self.net.now)
            request_id = self.net.send(node, MsgType.PUT, {"key": key, "value": value})
        else:
            op = Op("get", key, None, node, self.net.now)
            request_id = self.net.send(node, MsgType.GET, {"key": key})
        self.ops[request_id] = op
        self.history.append(op)

    def start_batch(self, node: str) -> None:
        keys = self.rng.sample(self.keys, self.rng.randint(2, 4))
        if self.rng.random() < 0.6:
            items = []
            for key in keys:
                self.sequence += 1
                value = f"{key}={self.sequence}".encode()
                self.written.setdefault(key, set()).add(value)
                items.append([key, value])
            ops = [Op("put", key, value, node, self.net.now) for key, value in items]
            request_id = self.net.send(node, MsgType.MPUT, {"items": items})
        else:
            ops = [Op("get", key, None, node, self.net.now) for key in keys]
            request_id = self.net.send(node, MsgType.MGET, {"keys": keys})
        self.ops[request_id] = ops
        self.history += ops

    def collect_replies(self) -> None:
        for request_id in list(self.ops):
            reply = self.net.client_replies.pop(request_id, None)
            ops = self.ops[request_id]
            ops = ops if isinstance(ops, list) else [ops]
            if reply is None:
                if self.net.now - ops[0].started > 3.0:  # the client gives up: unknown
                    for op in ops:
                        op.outcome = "unknown"
                    del self.ops[request_id]
                continue
            del self.ops[request_id]
            if reply.type == MsgType.OK and "results" in reply.body:
                bodies = reply.body["results"]
            else:
                bodies = [reply.body if reply.type == MsgType.OK else None] * len(ops)
            for op, body in zip(ops, bodies, strict=True):
                self.complete(op, body)

    def complete(self, op: Op, body: dict | None) -> None:
        """``body``: the key's OK reply (or batch entry); None or an error entry: failed."""
        op.finished = self.net.now
        if body is None or "error" in body:
            op.outcome = "failed"
            return
        op.outcome = "ok"
        if op.kind == "put":
            op.version = tuple(body["version"])
        else:
            op.value = body["value"] if body["found"] else None
            version = body.get("version")
            op.version = tuple(version) if version else None

    # ---------------------------------------------------------------- faults

    def fault(self) -> None:
        choice = self.rng.random()
        up = self.up()
        ring = self.net.node("node1").ring.nodes if "node1" in up else up
        if choice < 0.25 and len(self.crashed) < 1:
            victim = self.rng.choice([n for n in up if n != "node1"] or up)
            address = self.net.node(victim).config.address
            self.net.stopped.add(address)
            self.crashed[victim] = self.net.now + self.rng.uniform(0.3, 3.0)
            self.log(f"crash {victim}")
        elif choice < 0.45:
            a, b = self.rng.sample(up, 2) if len(up) > 1 else (up[0], up[0])
            side = {a} if self.rng.random() < 0.5 else set(self.rng.sample(up, len(up) // 2))
            others = [n for n in up if n not in side]
            for x in side:
                for y in others:
                    self.net.cut.add(frozenset((self.net.node(x).config.address,
                                                self.net.node(y).config.address)))
            self.log(f"partition {sorted(side)} | {sorted(others)}")
        elif choice < 0.6:
            self.net.loss = self.rng.choice([0.0, 0.01, 0.05])
            self.net.duplicate = self.rng.choice([0.0, 0.02, 0.1])
            self.net.jitter_s = self.rng.choice([0.0, 0.002, 0.02])
            self.log(f"network loss={self.net.loss} dup={self.net.duplicate} "
                     f"jitter={self.net.jitter_s}")
        elif choice < 0.75:
            self.net.cut.clear()
            self.log("heal partitions")
        elif choice < 0.87 and self.next_node < 7 and not self.changing():
            node_id = self.add_node(False)
            self.log(f"join {node_id}")
        elif not self.changing() and len(ring) > N:
            leaver = self.rng.choice([n for n in ring if n != "node1" and n in up] or [None])
            if leaver:
                self.net.send("node1", MsgType.REMOVE_NODE, {"node_id": leaver})
                self.log(f"leave {leaver}")

    def changing(self) -> bool:
        return bool(self.members(MemberStatus.JOINING) or self.members(MemberStatus.LEAVING))

    def restart_due(self) -> None:
        for node_id, at in list(self.crashed.items()):
            if self.net.now >= at:
                del self.crashed[node_id]
                self.net.restart(node_id)
                self.log(f"restart {node_id}")

    # ---------------------------------------------------------------- run

    def run(self) -> Report:
        net = self.net
        for _ in range(self.rng.randint(3, 5)):
            self.add_node(True)
        assert net.run_until(net.converged, 20), "the seeds never converged"
        self.start = net.now
        self.log(f"start: {len(net.cores)} nodes")
        end = net.now + self.seconds
        next_fault = net.now + self.rng.uniform(0.5, 1.5)
        while net.now < end:
            net.run(self.rng.uniform(0.005, 0.03))
            self.start_op()
            self.collect_replies()
            self.restart_due()
            if net.now >= next_fault:
                self.fault()
                next_fault = net.now + self.rng.uniform(0.5, 2.0)
        self.heal()
        self.check()
        self.report.ops = len(self.history)
        self.report.acked = sum(1 for op in self.history if op.kind == "put"
                                and op.outcome == "ok")
        return self.report

    def heal(self) -> None:
        net = self.net
        net.loss = net.duplicate = net.jitter_s = 0.0
        net.cut.clear()
        for node_id in list(self.crashed):
            self.crashed[node_id] = net.now
        self.restart_due()
        self.log("heal everything")
        net.run_until(lambda: not self.ops or (self.collect_replies() or not self.ops), 5)
        for op in self.ops.values():
            op.outcome = "unknown"
        if not net.run_until(lambda: net.converged() and not self.changing(), 60):
            self.report.violations.append("membership never converged after healing")
            return
        net.run(5)  # hints replay, drops run
        reply = net.request("node1", MsgType.REPAIR, {}, max_seconds=120)
        if reply.type != MsgType.OK:
            self.report.violations.append(f"repair failed: {reply.body}")
        net.run(2)

    # ---------------------------------------------------------------- checks

    def check(self) -> None:
        net = self.net
        live = [c for a, c in net.cores.items() if net._alive(a)
                and c.members.own.status != MemberStatus.LEFT]
        rings = {c.ring.fingerprint() for c in live}
        if len(rings) != 1:
            self.report.violations.append(f"{len(rings)} different rings after convergence")
        ring = live[0].ring
        for op in self.history:
            if op.kind == "get" and op.outcome == "ok" and op.value is not None \
                    and op.value not in self.written.get(op.key, ()):
                self.report.violations.append(f"read of {op.key} returned {op.value!r}, "
                                              "never written")
        acked = sorted((op.finished, op.key, op.version) for op in self.history
                       if op.kind == "put" and op.outcome == "ok")
        for op in self.history:
            if op.kind != "get" or op.outcome != "ok":
                continue
            before = [version for finished, key, version in acked
                      if key == op.key and finished < op.started]
            if before and (op.version is None or op.version < max(before)):
                self.report.violations.append(
                    f"stale read of {op.key} at {op.started - self.start:.3f}s from "
                    f"{op.node}: version {op.version} older than acknowledged {max(before)}")
        newest_acked: dict[str, tuple] = {}
        for op in self.history:
            if op.kind == "put" and op.outcome == "ok":
                if op.key not in newest_acked or op.version > newest_acked[op.key]:
                    newest_acked[op.key] = op.version
        by_id = {c.config.node_id: c for c in live}
        for key in self.keys:
            replicas = ring.get_nodes(key, N)
            records = [by_id[r].store.get(key) if r in by_id else None for r in replicas]
            versions = {tuple(r.version) if r else None for r in records}
            if len(versions) != 1:
                self.report.violations.append(f"{key}: replicas {replicas} did not converge: "
                                              f"{sorted(map(str, versions))}")
            held = max((tuple(r.version) for r in records if r), default=None)
            if key in newest_acked and (held is None or held < newest_acked[key]):
                self.report.violations.append(
                    f"{key}: acknowledged write {newest_acked[key]} lost (replicas hold "
                    f"{held})")


def simulate(seed: int, seconds: float = 8.0) -> Report:
    return Simulation(seed, seconds=seconds).run()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not argv[1].isdigit():
        print("usage: python tests/sim/faultsim.py SEED [SECONDS]   (replays one seed)")
        return 2
    report = simulate(int(argv[1]), float(argv[2]) if len(argv) == 3 else 6.0)
    print("\n".join(report.schedule))
    print(f"{report.ops} operations, {report.acked} acknowledged writes")
    for violation in report.violations:
        print("VIOLATION:", violation)
    return 1 if report.violations else 0


if __name__ == "__main__":
    import structlog
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    raise SystemExit(main(sys.argv))
