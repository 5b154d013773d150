"""core/context.py: what the parts share: the request checks, the failure a client sees,
live peers, and our own writes' acknowledgements until their commit."""

from __future__ import annotations

import pytest
from coresim import part_context

from zring.core.context import OwnAcks, Part
from zring.errors import InvalidRequest, NotMember, Unavailable, ZringError
from zring.membership import MemberStatus

NOW = 1000.0


def test_own_acks_of_a_failed_cycle_and_later_are_revoked_and_earlier_ones_stand():
    acks = OwnAcks()
    revoked: list[str] = []
    acks.add(1, lambda now: revoked.append("cycle 1") or ["r1"])
    acks.add(2, lambda now: revoked.append("cycle 2") or ["r2"])
    acks.add(3, lambda now: revoked.append("cycle 3") or ["r3"])
    assert acks.revoke_from(2, NOW) == ["r2", "r3"]   # cycle 1's commit is not in doubt
    assert revoked == ["cycle 2", "cycle 3"]
    assert acks.revoke_from(0, NOW) == []    # revoked once: nothing is left


def test_own_acks_committed_are_never_revoked():
    acks = OwnAcks()
    acks.add(4, lambda now: ["undone"])
    acks.committed_before(5)
    assert acks.revoke_from(4, NOW) == []


def test_a_key_is_measured_in_utf8_bytes():
    ctx = part_context(max_key_bytes=8)
    assert ctx.check_key("12345678") == "12345678"
    assert not ctx.key_too_long("éééé")                  # 8 bytes
    assert ctx.key_too_long("ééééé")                     # 10 bytes in 5 characters
    with pytest.raises(InvalidRequest, match="10 bytes exceeds the limit of 8"):
        ctx.check_key("ééééé")


def test_quorum_args_default_from_the_config_and_are_checked():
    ctx = part_context(replicas=3, write_quorum=2)
    assert ctx.quorum_args({}, "w", 2) == (3, 2)
    assert ctx.quorum_args({"n": 1}, "w", 2) == (1, 1)     # the default capped at n
    assert ctx.quorum_args({"n": 5, "w": 4}, "w", 2) == (5, 4)
    for body in ({"w": 4}, {"n": 2, "w": 3}, {"n": 65, "w": 1}):
        with pytest.raises(InvalidRequest):
            ctx.quorum_args(body, "w", 2)


def test_a_failure_is_a_zring_error_as_it_is_and_anything_else_is_counted():
    ctx = part_context()
    refusal = Unavailable("busy")
    assert ctx.failure(refusal, "PUT") is refusal and ctx.stats["handler_errors"] == 0
    try:
        raise KeyError("key")
    except KeyError as exc:
        bug = ctx.failure(exc, "PUT")
    assert type(bug) is ZringError and "failed on PUT: KeyError" in str(bug)
    assert ctx.stats["handler_errors"] == 1


def test_check_serving_refuses_once_the_node_left():
    ctx = part_context()
    ctx.check_serving()
    ctx.members.set_status("a", MemberStatus.LEFT)
    with pytest.raises(NotMember):
        ctx.check_serving()


def test_up_peers_leaves_out_members_down_or_gone():
    ctx = part_context(peers=("b", "c", "d"))
    assert ctx.up_peers(NOW) == ["b", "c", "d"]
    ctx.members.set_status("c", MemberStatus.LEFT)
    assert ctx.up_peers(NOW) == ["b", "d"]
    assert ctx.up_peers(NOW + 3600) == []      # silent for an hour: declared down


def test_a_part_does_nothing_unless_it_says_so():
    part = Part()
    assert part.tick(NOW) == [] and part.next_deadline(NOW) is None
    part.shift_timers(1.0)
    part.commit_failed(0, NOW)
