"""What a node tells about itself and the cluster: PING, STATS (counters, store, clock),
RING_STATE, CLUSTER_STATUS (every member's figures, asked of each live one now) and
LOCAL_KEYS."""

from __future__ import annotations

from zring.core.clocks import NodeClock
from zring.core.context import NodeContext, Part
from zring.core.effects import Effect, ok
from zring.core.handoff import Handoff
from zring.core.topology import Topology
from zring.protocol import Message, MsgType

__all__ = ["Status"]


class Status(Part):
    def __init__(self, ctx: NodeContext, topology: Topology, clock: NodeClock,
                 handoff: Handoff) -> None:
        self.ctx = ctx
        self.topology = topology
        self.clock = clock
        self.handoff = handoff
        self.handlers = {
            MsgType.PING: self._on_ping,
            MsgType.STATS: self._on_stats,
            MsgType.RING_STATE: self._on_ring_state,
            MsgType.CLUSTER_STATUS: self._on_cluster_status,
            MsgType.LOCAL_KEYS: self._on_local_keys,
        }

    def _on_ping(self, route, message: Message, now: float) -> list[Effect]:
        body = {"node_id": self.ctx.node_id, "status": self.ctx.members.own.status.name.lower()}
        return [ok(route, message.request_id, body, only_reads=True)]

    def _on_stats(self, route, message: Message, now: float) -> list[Effect]:
        """This node's counters (rejected frames, refused connections, forbidden requests,
        dropped sends...), each since the node started; what its store holds, exact; and
        its clock's verdict."""
        counters = dict(self.ctx.stats)
        counters["member_records_refused"] = self.ctx.members.records_refused
        body = {"node_id": self.ctx.node_id, "counters": counters,
                **self._own_figures(now)}
        return [ok(route, message.request_id, body, only_reads=True)]

    def _own_figures(self, now: float) -> dict:
        held = self.ctx.store.stats()
        verdict = self.clock.verdict(now)
        return {"store": {"keys": held.keys, "tombstones": held.tombstones,
                          "bytes": held.bytes, "hints": held.hints},
                "clock": {"ok": verdict.ok, "offset_s": round(verdict.offset_s, 4),
                          "peers_measured": verdict.measured}}

    def _on_ring_state(self, route, message: Message, now: float) -> list[Effect]:
        body = {
            "vnodes": self.ctx.config.vnodes,
            "replicas": self.ctx.config.replicas,
            "write_quorum": self.ctx.config.write_quorum,
            "read_quorum": self.ctx.config.read_quorum,
            "fingerprint": self.topology.ring.fingerprint(),
            "nodes": [{"node_id": m.node_id, "weight": m.weight, "address": m.address}
                      for m in self.ctx.members.all() if m.in_ring],
            "members": self._member_rows(now, {self.ctx.node_id: self._own_figures(now)}),
        }
        return [ok(route, message.request_id, body, only_reads=True)]

    def _on_cluster_status(self, route, message: Message, now: float) -> list[Effect]:
        """Every member's row; the figures of each live member (keys, bytes, hints, clock)
        asked of it now, so they are exact when asked (a member that does not answer in
        time shows what it last gossiped)."""
        figures = {self.ctx.node_id: self._own_figures(now)}
        peers = self.ctx.up_peers(now)

        def answer(t: float) -> list[Effect]:
            body = {"node_id": self.ctx.node_id, "members": self._member_rows(t, figures),
                    "fingerprint": self.topology.ring.fingerprint()}
            return [ok(route, message.request_id, body, only_reads=True)]
        if not peers:
            return answer(now)
        waiting = set(peers)

        def on_stats(node: str, reply: Message | None, t: float) -> list[Effect]:
            waiting.discard(node)
            found = figures_of(reply)
            if found is not None:
                figures[node] = found
            return [] if waiting else answer(t)
        effects: list[Effect] = []
        for peer in peers:
            effects += self.ctx.calls.call(peer, MsgType.STATS, {}, on_stats, now,
                                           timeout_s=min(self.ctx.config.request_timeout_s, 1.0))
        return effects

    def _member_rows(self, now: float, figures: dict[str, dict]) -> list[dict]:
        """Each member as status shows it; ``figures``: what members answered just now
        (``_own_figures``); the others' come from their gossip."""
        rows = []
        shares = self.topology.ring.primary_shares()
        for member in self.ctx.members.all():
            own = member.node_id == self.ctx.node_id
            asked = figures.get(member.node_id)
            row = {
                "node_id": member.node_id, "address": member.address,
                "gossip_address": member.gossip_address,
                "status": member.status.name.lower(),
                "liveness": self.ctx.members.liveness(member.node_id, now).value,
                "keys_count": member.keys, "hints": member.hints, "bytes": member.bytes,
                "figures": "gossip",
                "ownership": shares.get(member.node_id, 0.0),
                "weight": member.weight,
                "ring_version": self.topology.ring.fingerprint() if own else member.ring,
                "transfer": list(self.handoff.transfer() if own else member.transfer),
            }
            if asked is not None:
                held, clock = asked["store"], asked["clock"]
                row.update(keys_count=held["keys"], hints=held["hints"], bytes=held["bytes"],
                           figures="exact", clock_ok=clock["ok"],
                           clock_offset_s=clock["offset_s"])
            else:
                sample = self.clock.offsets.sample(member.node_id, now)
                if sample is not None:   # its clock as we measured it (ours is the zero)
                    row["clock_offset_s"] = round(sample.offset_s, 4)
            rows.append(row)
        return rows

    def _on_local_keys(self, route, message: Message, now: float) -> list[Effect]:
        limit = message.body.get("limit")
        keys = []
        for key in self.ctx.store.keys():
            if limit is not None and len(keys) >= limit:
                break
            keys.append(key)
        body = {"node_id": self.ctx.node_id, "keys": keys}
        return [ok(route, message.request_id, body, only_reads=True)]


def figures_of(reply: Message | None) -> dict | None:
    """A member's store and clock figures from its STATS answer; None unless well formed."""
    if reply is None or reply.type != MsgType.OK:
        return None
    held, clock = reply.body.get("store"), reply.body.get("clock")
    if not (isinstance(held, dict) and isinstance(clock, dict)
            and all(type(held.get(k)) is int for k in ("keys", "hints", "bytes"))
            and type(clock.get("ok")) is bool
            and type(clock.get("offset_s")) in (int, float)):
        return None
    return {"store": held, "clock": clock}

