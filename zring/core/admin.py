"""Operators' requests: add, remove and force-remove members, and ``rebalance`` and
``repair`` run on every node at once (a fan-out answered once every node has)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from zring.core.context import NodeContext, Part
from zring.core.effects import Effect, Reply, error, ok, reply_as
from zring.core.handoff import Handoff
from zring.core.topology import Topology
from zring.errors import InvalidRequest, NotMember, Unavailable
from zring.membership import MemberStatus
from zring.protocol import Message, MsgType

__all__ = ["Admin"]


@dataclass(slots=True)
class _FanOut:
    """A fan-out admin request (rebalance, repair) waiting on every node."""

    route: tuple[bytes, ...]
    request_id: int
    operation: str
    waiting: set[str]
    failed: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    on_done: Callable[[Message, float], list] | None = None


class Admin(Part):
    def __init__(self, ctx: NodeContext, topology: Topology, handoff: Handoff) -> None:
        self.ctx = ctx
        self.topology = topology
        self.handoff = handoff
        self._waiting: dict[int, _FanOut] = {}
        self.handlers = {
            MsgType.ADD_NODE: self._on_add_node,
            MsgType.REMOVE_NODE: self._on_remove_node,
            MsgType.FORCE_REMOVE: self._on_force_remove,
            MsgType.REBALANCE: self._on_rebalance,
            MsgType.REPAIR: self._on_repair,
        }

    def _on_add_node(self, route, message: Message, now: float) -> list[Effect]:
        node_id, address = message.body["node_id"], message.body["address"]
        member = self.ctx.members.get(node_id)
        if member is not None and member.status in (MemberStatus.NORMAL, MemberStatus.JOINING):
            body = {"node_id": node_id, "status": member.status.name.lower()}
            return [Reply(route, Message(MsgType.OK, message.request_id, body))]
        self.topology.check_no_change_in_progress(node_id, now)

        def on_admitted(node: str, reply: Message | None, t: float) -> list[Effect]:
            if reply is None:
                return [Reply(route, error(message.request_id, Unavailable(
                    f"no answer from {node_id} at {address}; is it running?")))]
            if reply.type == MsgType.ERROR:
                return [Reply(route, reply_as(reply, message.request_id))]
            return [Reply(route, Message(MsgType.OK, message.request_id,
                                         {"node_id": node_id, "status": "joining"}))]
        return self.ctx.calls.call_address(address, node_id, MsgType.ADMIT,
                                           {"seed": self.ctx.config.address}, on_admitted, now)

    def _on_remove_node(self, route, message: Message, now: float) -> list[Effect]:
        node_id = message.body["node_id"]
        graceful = message.body.get("graceful", True)
        member = self.ctx.members.get(node_id)
        if member is None or member.status == MemberStatus.LEFT:
            raise NotMember(f"{node_id} is not a member of the cluster")
        if not graceful:
            return self._on_force_remove(route, Message(MsgType.FORCE_REMOVE,
                                                        message.request_id,
                                                        {"node_id": node_id}), now)
        if member.status == MemberStatus.LEAVING:
            return [Reply(route, Message(MsgType.OK, message.request_id,
                                         {"node_id": node_id, "status": "leaving"}))]
        self.topology.check_no_change_in_progress(node_id, now)
        if node_id == self.ctx.node_id:
            return self.handoff.on_leave(route, message, now)

        def on_leaving(node: str, reply: Message | None, t: float) -> list[Effect]:
            if reply is None:
                return [Reply(route, error(message.request_id, Unavailable(
                    f"{node_id} did not answer; to remove a dead node use graceful=False")))]
            return [Reply(route, reply_as(reply, message.request_id))]
        return self.ctx.calls.call(node_id, MsgType.LEAVE, {}, on_leaving, now)

    def _on_force_remove(self, route, message: Message, now: float) -> list[Effect]:
        node_id = message.body["node_id"]
        if node_id == self.ctx.node_id:
            raise InvalidRequest("a node cannot force-remove itself; remove it from another "
                                 "node, or remove it gracefully")
        member = self.ctx.members.get(node_id)
        if member is None:
            raise NotMember(f"{node_id} is not a member of the cluster")
        if member.status != MemberStatus.LEFT:
            self.ctx.members.set_status(node_id, MemberStatus.LEFT, streamed=False)
            self.ctx.log.info("member_removed", member=node_id, graceful=False)
        return [ok(route, message.request_id, {"node_id": node_id, "status": "left"})]

    def _on_rebalance(self, route, message: Message, now: float) -> list[Effect]:
        """Every node hands over what it no longer replicates (and drops it once the owners
        confirmed); then every pair of replicas repairs, streaming only what one lacks."""
        self.topology.check_settled(now)
        targets = [m.node_id for m in self.ctx.members.all() if m.in_ring]

        def after_handover(reply: Message, t: float) -> list[Effect]:
            if reply.type != MsgType.OK:
                return [Reply(route, reply)]
            handed = reply.body

            def after_repair(repaired: Message, t2: float) -> list[Effect]:
                if repaired.type == MsgType.OK:
                    repaired = Message(MsgType.OK, repaired.request_id,
                                       {**handed, **repaired.body})
                return [Reply(route, repaired)]
            live = [m.node_id for m in self.ctx.members.all()
                    if m.in_ring and self.ctx.members.is_up(m.node_id, t)]
            return self._fan_out(route, message, "repair", MsgType.REPAIR_LOCAL, live, t,
                                 on_done=after_repair)
        return self._fan_out(route, message, "rebalance", MsgType.REBALANCE_LOCAL, targets,
                             now, on_done=after_handover)

    def _on_repair(self, route, message: Message, now: float) -> list[Effect]:
        """``zring repair``: every node repairs with each peer after it in id order, so each
        pair of replicas is compared once."""
        targets = [m.node_id for m in self.ctx.members.all()
                   if m.in_ring and self.ctx.members.is_up(m.node_id, now)]
        return self._fan_out(route, message, "repair", MsgType.REPAIR_LOCAL, targets, now)

    def _fan_out(self, route, message: Message, operation: str, msg_type: MsgType,
                 targets: list[str], now: float, on_done=None) -> list[Effect]:
        """Ask every target to run ``operation``; once all did, answer with their summed
        counts (or hand that answer to ``on_done(reply, now)``)."""
        admin_id = self.ctx.calls.next_id()
        self._waiting[admin_id] = _FanOut(route, message.request_id, operation, set(targets),
                                        on_done=on_done)
        effects: list[Effect] = []
        for node_id in targets:
            effects += self.ctx.calls.call(node_id, msg_type, {},
                                           lambda node, reply, t: self._fan_out_answered(
                                               admin_id, node, reply, t), now,
                                           timeout_s=self.ctx.config.repair_timeout_s)
        if not targets:
            self._waiting.pop(admin_id)
            answer = Message(MsgType.OK, message.request_id, {})
            effects += on_done(answer, now) if on_done else [Reply(route, answer)]
        return effects

    def _fan_out_answered(self, admin_id: int, node_id: str, reply: Message | None,
                          now: float):
        admin = self._waiting.get(admin_id)
        if admin is None:
            return []
        admin.waiting.discard(node_id)
        if reply is None or reply.type != MsgType.OK:
            admin.failed.append(node_id)
        else:
            for name, value in reply.body.items():
                if type(value) is int:
                    admin.totals[name] += value
        if admin.waiting:
            return []
        del self._waiting[admin_id]
        if admin.failed:
            answer = error(admin.request_id, Unavailable(
                f"{admin.operation} did not complete on {', '.join(sorted(admin.failed))}"))
        else:
            answer = Message(MsgType.OK, admin.request_id, dict(admin.totals))
        if admin.on_done is not None:
            return admin.on_done(answer, now)
        return [Reply(admin.route, answer)]
