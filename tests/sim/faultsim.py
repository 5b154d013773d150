"""Deterministic fault simulation: the real node cores of 3 to 7 nodes in one process, on a
simulated network and clock, driven by one seeded random schedule (the way FoundationDB and
TigerBeetle test).

The network loses, delays (so reorders) and duplicates messages and partitions nodes. Nodes
crash and restart from what their store holds, pause (SIGSTOP) for longer than the clients'
timeout and resume with what was sent to them meanwhile, run with clocks off (within and
beyond ``max_clock_offset_s``), have their disks fail (writes refused, or commits failing
and undone), and lose power all at once (each store keeps only what it synced: with
``fsync="always"`` that is everything it acknowledged). Seeds may start a moment apart while
the clients already write. Nodes join and leave.

The clients ARE the client core (zring.clientcore, which zring.Client and AsyncClient
run): about four tests/simclient.py SimClients, each with its own wall clock off (within the
maximum), a 1 s timeout and 3 retries; most route by the ring (token-aware: they fetch it,
follow the nodes' gossip and go straight to a key's replicas), one goes through the seeds so
the nodes' coordination stays covered. They put, get (R=2), mput and mget at random times,
many commands in flight at once; retries, resends with the same stamp, restamps of a write
every replica refused, and routing around silent or skewed nodes are the client core's.

The checker judges only what the clients saw: the values written and read, and the real
(network) times at which each operation was invoked and completed. It never reads zring's
versions or timestamps:

- the register history of every key, the final reads after healing included, must be
  linearizable (tools/lincheck.py: a write that failed or timed out may take effect at any
  point after its invoke, or never); an acknowledged write that was lost shows up as a read
  that no order explains;
- every replica of every key holds the same record after healing and repair;
- every node holds the same ring.

Everything follows from the seed (the module ``random`` the client core draws from is seeded
with it for the run, and each client's writer id is its name): ``python
tests/sim/faultsim.py SEED`` replays one and prints its schedule.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/simnet.py
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))   # lincheck

import lincheck  # noqa: E402
from simclient import SimClient, longest_command_s  # noqa: E402
from simnet import SimCluster  # noqa: E402
from simstore import SimStore  # noqa: E402

from zring.errors import Timeout, ZringError  # noqa: E402
from zring.membership import MemberStatus  # noqa: E402
from zring.protocol import MsgType  # noqa: E402

N = 3
CLIENT_TIMEOUT_S = 1.0      # the clients' reply timeout (the nodes' request timeout is 0.5 s)
CLIENT_RETRIES = 3
MAX_CLOCK_OFFSET_S = 0.5
CLIENTS = 4
SEED_ROUTED_CLIENTS = 1     # of them, those not token-aware: every request via the seeds


@dataclass
class Op:
    kind: str                 # "put" or "get"
    key: str
    value: bytes | None       # written, or read
    client: str
    started: float            # when the command was started
    outcome: str = "pending"  # ok / failed (the cluster answered an error) / unknown (Timeout)
    finished: float | None = None   # when it returned or raised


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
        self.history: list[Op] = []
        self.keys = [f"k{i}" for i in range(24)]
        self.sequence = 0
        self.crashed: dict[str, float] = {}     # node id -> restart time
        self.paused: dict[str, float] = {}      # node id -> resume time
        self.skewed: dict[str, float] = {}      # node id -> when its clock is set right
        self.failing: dict[str, float] = {}     # node id -> when its disk recovers
        self.next_node = 0
        self.start = self.net.now
        # per seed: how nodes sync, and whether seeds start apart while clients write
        self.fsync = self.rng.choice(["always", "periodic"])
        self.clients: list[SimClient] = []   # made once the seeds are known (run)

    def log(self, event: str) -> None:
        self.report.schedule.append(f"{self.net.now - self.start:7.3f}s {event}")

    # ---------------------------------------------------------------- cluster

    def add_node(self, seed: bool, seeds: list[str] | None = None) -> str:
        self.next_node += 1
        node_id = f"node{self.next_node}"
        self.net.add(node_id, seed=seed, seeds=seeds, store=SimStore(), vnodes=32,
                     request_timeout_s=0.5, hint_replay_interval_s=0.2,
                     stream_batch_records=50, stream_intervals_per_pull=16,
                     fsync=self.fsync, fsync_period_s=0.2,
                     max_clock_offset_s=MAX_CLOCK_OFFSET_S, clock_check_interval_s=0.25)
        return node_id

    def address(self, node_id: str) -> str:
        return self.net.node(node_id).config.address

    def members(self, status: MemberStatus) -> list[str]:
        core = self.net.node("node1")
        return [m.node_id for m in core.members.all() if m.status == status]

    def up(self) -> list[str]:
        return [c.config.node_id for a, c in self.net.cores.items() if self.net.alive(a)]

    # ---------------------------------------------------------------- workload

    def start_clients(self, seeds: list[str]) -> None:
        """The clients, each with its own wall clock off; the last ones go via the seeds."""
        for index in range(CLIENTS):
            self.clients.append(SimClient(
                self.net, f"client-{index}", seeds, timeout=CLIENT_TIMEOUT_S,
                retries=CLIENT_RETRIES, token_aware=index < CLIENTS - SEED_ROUTED_CLIENTS,
                clock_offset_s=self.rng.uniform(-0.2, 0.2)))

    def start_op(self) -> None:
        client = self.rng.choice(self.clients)
        now = self.net.now
        if self.rng.random() < 0.2:  # a client batch: the MPUT/MGET fast paths
            keys = self.rng.sample(self.keys, self.rng.randint(2, 4))
            if self.rng.random() < 0.6:
                ops = [Op("put", key, self.new_value(key), client.name, now) for key in keys]
                items = [(op.key, op.value) for op in ops]
                self.launch(client, ops, lambda: client.mput(items))
            else:
                ops = [Op("get", key, None, client.name, now) for key in keys]
                self.launch(client, ops, lambda: client.mget(keys))
            return
        key = self.rng.choice(self.keys)
        if self.rng.random() < 0.6:
            op = Op("put", key, self.new_value(key), client.name, now)
            self.launch(client, [op], lambda: client.put(key, op.value))
        else:
            op = Op("get", key, None, client.name, now)
            self.launch(client, [op], lambda: client.get(key))

    def new_value(self, key: str) -> bytes:
        self.sequence += 1
        return f"{key}={self.sequence}".encode()

    def launch(self, client: SimClient, ops: list[Op], make) -> None:
        """Start the command ``make()`` builds on ``client``; its ops enter the history now
        and end when it returns or raises."""
        self.history += ops
        client.launch(make, lambda result, error: self.ended(ops, result, error))

    def ended(self, ops: list[Op], result, error: ZringError | None) -> None:
        """A command returned ``result`` (a result, or a batch's list of them) or raised
        ``error``: a Timeout leaves its ops unknown, any other error failed (the cluster
        answered, but a write may still have taken effect). A batch's error names the first
        key that failed: those before it succeeded (a write acknowledged; a read whose
        value the error does not carry is left out)."""
        now = self.net.now
        for op in ops:
            op.finished = now
        if error is None:
            results = result if isinstance(result, list) else [result]
            for op, got in zip(ops, results, strict=True):
                op.outcome = "ok"
                if op.kind == "get":
                    op.value = got.value if got.found else None
            return
        outcome = "unknown" if isinstance(error, Timeout) else "failed"
        failed_at = error.details.get("index")
        acknowledged = failed_at if len(ops) > 1 and isinstance(failed_at, int) and \
            0 <= failed_at < len(ops) and error.details.get("key") == ops[failed_at].key \
            else 0
        for position, op in enumerate(ops):
            op.outcome = "ok" if position < acknowledged and op.kind == "put" else outcome

    def running(self) -> int:
        return sum(client.commands_running for client in self.clients)

    # ---------------------------------------------------------------- faults

    def fault(self) -> None:
        choice = self.rng.random()
        up = self.up()
        ring = self.net.node("node1").ring.nodes if "node1" in up else up
        quiet = not self.crashed and not self.paused
        if choice < 0.16 and quiet:
            victim = self.rng.choice([n for n in up if n != "node1"] or up)
            self.net.stopped.add(self.address(victim))
            self.crashed[victim] = self.net.now + self.rng.uniform(0.3, 3.0)
            self.log(f"crash {victim}")
        elif choice < 0.26 and quiet:
            victim = self.rng.choice(up)
            self.net.pause(self.address(victim))
            self.paused[victim] = self.net.now + self.rng.uniform(1.2, 3.0)  # > client timeout
            self.log(f"pause {victim}")
        elif choice < 0.36:
            victim = self.rng.choice(up)
            beyond = self.rng.random() < 0.4
            offset = self.rng.uniform(1.0, 30.0) if beyond else self.rng.uniform(0.05, 0.25)
            self.net.offsets[self.address(victim)] = self.rng.choice([-1, 1]) * offset
            self.skewed[victim] = self.net.now + self.rng.uniform(1.0, 3.0)
            self.log(f"clock of {victim} {self.net.offsets[self.address(victim)]:+.3f}s")
        elif choice < 0.42 and not self.failing:
            victim = self.rng.choice(up)
            store = self.net.node(victim).store
            store.failing = self.rng.choice(["write", "commit"])
            self.failing[victim] = self.net.now + self.rng.uniform(0.3, 2.0)
            self.log(f"disk of {victim} fails ({store.failing})")
        elif choice < 0.46 and self.fsync == "always" and quiet:
            self.power_loss()
        elif choice < 0.6:
            a, b = self.rng.sample(up, 2) if len(up) > 1 else (up[0], up[0])
            side = {a} if self.rng.random() < 0.5 else set(self.rng.sample(up, len(up) // 2))
            others = [n for n in up if n not in side]
            for x in side:
                for y in others:
                    self.net.cut.add(frozenset((self.address(x), self.address(y))))
            self.log(f"partition {sorted(side)} | {sorted(others)}")
        elif choice < 0.7:
            self.net.loss = self.rng.choice([0.0, 0.01, 0.05])
            self.net.duplicate = self.rng.choice([0.0, 0.02, 0.1])
            self.net.jitter_s = self.rng.choice([0.0, 0.002, 0.02])
            self.log(f"network loss={self.net.loss} dup={self.net.duplicate} "
                     f"jitter={self.net.jitter_s}")
        elif choice < 0.8:
            self.net.cut.clear()
            self.log("heal partitions")
        elif choice < 0.9 and self.next_node < 7 and not self.changing():
            node_id = self.add_node(False)
            self.log(f"join {node_id}")
        elif not self.changing() and len(ring) > N:
            leaver = self.rng.choice([n for n in ring if n != "node1" and n in up] or [None])
            if leaver:
                self.net.send("node1", MsgType.REMOVE_NODE, {"node_id": leaver})
                self.log(f"leave {leaver}")

    def power_loss(self) -> None:
        """Every machine loses power at once: each node restarts on what its store synced."""
        self.log("power loss: every node restarts on what it synced")
        for address, core in list(self.net.cores.items()):
            if address in self.net.stopped and core.members.own.status == MemberStatus.LEFT:
                continue
            self.net.restart(core.config.node_id, store=core.store.power_loss())

    def changing(self) -> bool:
        return bool(self.members(MemberStatus.JOINING) or self.members(MemberStatus.LEAVING))

    def recover_due(self, everything: bool = False) -> None:
        now = self.net.now
        for node_id, at in list(self.crashed.items()):
            if everything or now >= at:
                del self.crashed[node_id]
                self.net.restart(node_id)
                self.log(f"restart {node_id}")
        for node_id, at in list(self.paused.items()):
            if everything or now >= at:
                del self.paused[node_id]
                self.net.resume(self.address(node_id))
                self.log(f"resume {node_id}")
        for node_id, at in list(self.skewed.items()):
            if everything or now >= at:
                del self.skewed[node_id]
                self.net.offsets[self.address(node_id)] = 0.0
                self.log(f"clock of {node_id} set right")
        for node_id, at in list(self.failing.items()):
            if everything or now >= at:
                del self.failing[node_id]
                self.net.node(node_id).store.failing = None
                self.log(f"disk of {node_id} recovers")

    # ---------------------------------------------------------------- run

    def run(self) -> Report:
        net = self.net
        count = self.rng.randint(3, 5)
        staggered = self.rng.random() < 0.3
        seeds = [net.address_of(i) for i in range(1, count + 1)]
        self.start_clients(seeds)
        if staggered:
            # seeds started a moment apart, each listing all of them, while clients write
            self.start = net.now
            self.log(f"start: {count} seeds, started apart under writes")
            for _ in range(count):
                self.add_node(True, seeds=seeds)
                self.log(f"seed node{self.next_node} starts")
                until = net.now + self.rng.uniform(0.05, 0.6)
                while net.now < until:
                    net.run(self.rng.uniform(0.005, 0.03))
                    self.start_op()
        else:
            for _ in range(count):
                self.add_node(True)
        if not net.run_until(net.converged, 20):
            self.report.violations.append("the seeds never converged")
            return self.report
        if not staggered:
            self.start = net.now
            self.log(f"start: {len(net.cores)} nodes, fsync {self.fsync}")
        end = net.now + self.seconds
        next_fault = net.now + self.rng.uniform(0.5, 1.5)
        while net.now < end:
            net.run(self.rng.uniform(0.005, 0.03))
            self.start_op()
            self.recover_due()
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
        self.recover_due(everything=True)
        self.log("heal everything")
        # every command ends within its bound (each of its waits has a deadline); any left
        # then is given up, its ops unknown
        net.run_until(lambda: not self.running(),
                      max(longest_command_s(client) for client in self.clients))
        for client in self.clients:
            client.abandon()
        if not net.run_until(lambda: net.converged() and not self.changing(), 60):
            self.report.violations.append("membership never converged after healing")
            return
        net.run(5)  # hints replay, drops run
        reply = net.request("node1", MsgType.REPAIR, {}, max_seconds=120)
        if reply.type != MsgType.OK:
            self.report.violations.append(f"repair failed: {reply.body}")
        net.run(2)
        self.final_reads()

    def final_reads(self) -> None:
        """Every key read once more at r=N, after everything healed: part of the history."""
        for key in self.keys:
            op = Op("get", key, None, "final-read", self.net.now)
            self.history.append(op)
            reply = self.net.request("node1", MsgType.GET, {"key": key, "r": N})
            op.finished = self.net.now
            if reply.type != MsgType.OK:
                op.outcome = "failed"
                self.report.violations.append(f"final read of {key} failed: {reply.body}")
                continue
            op.outcome = "ok"
            op.value = reply.body["value"] if reply.body["found"] else None

    # ---------------------------------------------------------------- checks

    def check(self) -> None:
        net = self.net
        live = [c for a, c in net.cores.items() if net.alive(a)
                and c.members.own.status != MemberStatus.LEFT]
        rings = {c.ring.fingerprint() for c in live}
        if len(rings) != 1:
            self.report.violations.append(f"{len(rings)} different rings after convergence")
        verdict = lincheck.summarize(self.register_history())
        for key in verdict["nonlinearizable_keys"]:
            self.report.violations.append(f"{key}: no order of its operations explains what "
                                          "the clients saw (not linearizable)")
        for key in verdict["undecided_keys"]:
            self.report.violations.append(f"{key}: the linearizability search gave up")
        for anomaly in verdict["anomalies"]:
            self.report.violations.append(f"{anomaly['anomaly']} read of {anomaly['key']} "
                                          f"at {anomaly['at'] - self.start:.3f}s: {anomaly}")
        ring = live[0].ring
        by_id = {c.config.node_id: c for c in live}
        for key in self.keys:
            replicas = ring.get_nodes(key, N)
            records = {by_id[r].store.get(key) if r in by_id else None for r in replicas}
            if len(records) != 1:
                self.report.violations.append(
                    f"{key}: replicas {replicas} did not converge: {sorted(map(str, records))}")

    def register_history(self) -> list[lincheck.Op]:
        """The clients' operations as values and real times (never versions). A write
        without an acknowledgement may have taken effect at any point after its invoke."""
        ops = []
        for index, op in enumerate(self.history):
            acked = op.outcome == "ok"
            if op.kind == "put":
                ops.append(lincheck.Op(op.key, "write", op.value, op.started,
                                       op.finished if acked else None,
                                       "ok" if acked else "info", index))
            elif acked:
                ops.append(lincheck.Op(op.key, "read", op.value, op.started, op.finished,
                                       "ok", index))
        return ops


def simulate(seed: int, seconds: float = 8.0) -> Report:
    """Run seed ``seed``. The module ``random`` (the client core's first seed, request
    ids, node orders) is seeded with it for the run and restored after."""
    saved = random.getstate()
    random.seed(seed)
    try:
        return Simulation(seed, seconds=seconds).run()
    finally:
        random.setstate(saved)


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
