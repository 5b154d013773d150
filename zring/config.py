"""NodeConfig: every interval, timeout and limit of a node in one place (units in names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from zring.ring import DEFAULT_VNODES

__all__ = ["NodeConfig", "DEFAULT_GOSSIP_PORT_OFFSET"]

DEFAULT_GOSSIP_PORT_OFFSET = 1000  # a node's PUB listens on its ROUTER port + this by default


@dataclass(slots=True)
class NodeConfig:
    node_id: str
    address: str                       # ROUTER endpoint peers and clients connect to
    gossip_address: str                # PUB endpoint peers subscribe to
    seeds: list[str] = field(default_factory=list)   # ROUTER endpoints to learn members from
    data_dir: str | None = None        # None: in-memory store (tests only)
    store: str = "rocksdb"             # in data_dir: "rocksdb" (zring.rocks) or "sqlite" (zring.db)
    weight: float = 1.0
    # security: a `zring keygen` directory turns CurveZMQ on for every socket (None: off)
    keys_dir: str | None = None

    # durability (like Redis's appendfsync): "always" fsyncs every commit before any reply
    # leaves (one commit per poll cycle: a group commit); "periodic" commits without fsync
    # and forces the data to disk every fsync_period_s
    fsync: str = "periodic"
    fsync_period_s: float = 1.0

    # replication defaults (each overridable per request)
    replicas: int = 3                  # N
    write_quorum: int = 2              # W
    read_quorum: int = 2               # R
    vnodes: int = DEFAULT_VNODES

    # limits
    max_key_bytes: int = 4096
    max_value_bytes: int = 4 * 1024 * 1024
    max_pending_requests: int = 10_000

    # timing
    request_timeout_s: float = 2.0          # coordinator gives up waiting for replicas
    # clocks (CockroachDB's default maximum offset): a node whose clock is further than this
    # from most of its peers' stops coordinating writes; a timestamp (a client's write stamp,
    # a peer's record) more than this ahead of ours is refused
    max_clock_offset_s: float = 0.5
    clock_check_interval_s: float = 1.0     # each live peer's clock offset measured this often
    gossip_interval_s: float = 0.5          # heartbeat + full member table

    # failure detection (phi accrual over heartbeat intervals): with 0.5 s heartbeats a
    # silent member is suspected after ~1.8 s and declared down after ~2.1 s
    phi_suspect: float = 3.0
    phi_down: float = 8.0
    fd_min_std_s: float = 0.1               # floor on the interval deviation
    fd_acceptable_pause_s: float = 1.0      # silence tolerated on top of the mean interval

    # hinted handoff
    hint_window_s: float = 3 * 3600.0       # no new hints for a member down longer than this
    hint_replay_interval_s: float = 1.0     # how often to look for hints to deliver
    hint_batch_records: int = 500

    # anti-entropy and tombstones
    repair_interval_s: float = 3600.0       # background repair with one peer this often (0: off)
    repair_timeout_s: float = 600.0
    repair_page_records: int = 2000         # records hashed per loop cycle
    tombstone_grace_s: float = 10 * 86400.0  # like gc_grace_seconds: repair more often than this
    tombstone_gc_interval_s: float = 60.0
    join_retry_s: float = 0.5               # resend JOIN / ranges that failed
    join_settle_timeout_s: float = 10.0     # stream even if some members never confirmed us
    stream_batch_records: int = 2000        # records per RANGE_PULL reply
    stream_batch_bytes: int = 8 * 1024 * 1024
    stream_intervals_per_pull: int = 1024
    stream_pulls_in_flight: int = 4          # per source
    left_linger_s: float = 3.0              # a decommissioned node keeps gossiping LEFT this long
    # background work is done a slice per loop cycle: one delete of 250k rows would stall the
    # loop past the failure detector's patience
    slice_records: int = 20_000             # records counted, or wiped after a leave, per cycle
    drop_slice_records: int = 5_000         # handed-over records deleted per cycle
