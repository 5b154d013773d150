"""The rings a request may be routed by: the current one, the previous one until every
member switched, and the future one while a join or leave streams; and who is changing."""

from __future__ import annotations

from zring.core.context import NodeContext, Part
from zring.core.effects import Effect
from zring.core.quorum import quorum_in_each
from zring.errors import MembershipConflict
from zring.membership import Member, MemberStatus
from zring.ring import HashRing

__all__ = ["Topology"]


class Topology(Part):
    def __init__(self, ctx: NodeContext, now: float) -> None:
        self.ctx = ctx
        self.ring = HashRing(ctx.members.ring_weights(), vnodes=ctx.config.vnodes)
        ctx.members.update_own(ring=self.ring.fingerprint())
        # the ring before the last change, until every live member routes by the new one
        # (writes keep a quorum in both meanwhile)
        self.previous: HashRing | None = None
        self._future: HashRing | None = None  # the ring once joins/leaves complete (cached)
        self.settled_at: float | None = now   # when every member last agreed with us
        self.handlers = {}

    # ------------------------------------------------------------------ the rings

    def members_changed(self) -> HashRing | None:
        """The member table changed: rebuild the ring from it. Returns the old ring if the
        ring changed (None: it did not)."""
        self._future = None
        weights = self.ctx.members.ring_weights()
        if weights == self.ring.weights:
            return None
        old, self.ring = self.ring, HashRing(weights, vnodes=self.ctx.config.vnodes)
        self.previous = old if len(old) else None  # empty: nobody routed by it
        self.settled_at = None
        self.ctx.members.update_own(ring=self.ring.fingerprint())
        self.ctx.log.info("ring_changed", nodes=self.ring.nodes,
                          fingerprint=self.ring.fingerprint())
        return old

    def future(self) -> HashRing | None:
        """The ring once every join and leave under way completes (None: none is)."""
        members = self.ctx.members
        joining = members.with_status(MemberStatus.JOINING)
        leaving = members.with_status(MemberStatus.LEAVING)
        if not joining and not leaving:
            return None
        if self._future is None:
            future = self.ring.copy()
            for member in joining:
                future.add_node(member.node_id, member.weight)
            for member in leaving:
                if member.node_id in future:
                    future.remove_node(member.node_id)
            self._future = future
        return self._future

    def steady(self) -> bool:
        """No ring change under way: each key has one preference list."""
        return self.previous is None and self.future() is None

    def write_sets(self, position: int, n: int) -> list[list[str]]:
        """The key's preference list in each ring a coordinator may be using right now.

        While a join or leave streams (the future ring) and until every member routes by the
        new ring (the previous one), a write must reach a quorum in each: then a read by any
        coordinator, on either ring, meets it (joint quorums, as in Raft's joint consensus;
        Cassandra adds pending nodes to the write's block-for)."""
        sets = [self.ring.get_nodes_at(position, n)]
        members = self.ctx.members
        for other in (self.previous, self.future()):
            if other is not None and len(other):
                # a member that left refuses writes; what it held was handed over already
                replicas = [x for x in other.get_nodes_at(position, n)
                            if x in members and members[x].status != MemberStatus.LEFT]
                if replicas and replicas not in sets:
                    sets.append(replicas)
        return sets

    def sticks(self, position: int, n: int, holders) -> bool:
        """Replicas that agree on a value hold it in a write quorum of every ring a later
        read may use: always when no ring change is under way (R replicas of the one ring
        are a quorum); during one, they must be in each ring's preference list too, or a
        read by the other ring could miss it."""
        if self.steady():
            return True
        return quorum_in_each(self.write_sets(position, n), set(holders),
                              self.ctx.config.write_quorum)

    # ------------------------------------------------------------------ who is changing

    def changing(self, now: float) -> list[Member]:
        """Live members joining or leaving (a crashed joiner nobody removed holds nothing
        up)."""
        members = self.ctx.members
        return [m for m in members.all()
                if m.status in (MemberStatus.JOINING, MemberStatus.LEAVING)
                and members.is_up(m.node_id, now)]

    def change_under_way(self, now: float) -> bool:
        return bool(self.changing(now))

    def my_turn(self, now: float) -> bool:
        """Membership changes stream one at a time, in node id order: each plans against
        the ring the previous one left, so "the node a joiner displaces" is still right
        when it completes. (Two joiners planning against the same ring could both take a
        range from the same old replica while another old replica, holding a write the
        first lacks, drops it.) A member that is down does not hold the others up."""
        own_id = self.ctx.node_id
        return not any(m.node_id < own_id for m in self.changing(now))

    def check_no_change_in_progress(self, node_id: str, now: float) -> None:
        """One membership change at a time: two overlapping ones would stream against a
        ring that is about to change again."""
        busy = [m.node_id for m in self.changing(now) if m.node_id != node_id]
        if busy:
            raise MembershipConflict(f"a membership change is in progress ({', '.join(busy)}); "
                                     "retry when it completes")

    def check_settled(self, now: float) -> None:
        """No change streams and every member routes by our ring (rebalance, plans)."""
        changing = [m.node_id for m in self.changing(now)]
        if changing or self.previous is not None:
            what = (f"{', '.join(changing)} joining or leaving" if changing
                    else "members still switching to the new ring")
            raise MembershipConflict(f"a membership change is in progress ({what}); retry "
                                     "when it completes")

    # ------------------------------------------------------------------ settling

    def _everyone_switched(self) -> bool:
        """Every member not gone routes by our ring (its gossip says so). Down members
        count too: one merely cut off from us still serves clients by the ring it knows,
        so until it is back (or removed) writes keep a quorum in both rings and nothing
        handed over is dropped (the simulation found stale reads otherwise)."""
        fingerprint = self.ring.fingerprint()
        return all(m.ring == fingerprint for m in self.ctx.members.peers())

    def tick(self, now: float) -> list[Effect]:
        if self.settled_at is None and self._everyone_switched():
            self.settled_at = now
            if self.previous is not None:
                self.previous = None
                self.ctx.log.info("ring_settled", fingerprint=self.ring.fingerprint())
        return []
