"""Wire frames: round trips, limits and schema checks (no sockets)."""

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zring.errors import ProtocolError
from zring.failure import PhiAccrualDetector
from zring.hashing import key_position
from zring.membership import Member, MemberStatus, MemberTable
from zring.protocol import (
    MAX_FRAME_BYTES,
    Message,
    MsgType,
    decode,
    encode,
    record_from_wire,
    record_to_wire,
)
from zring.storage.base import Record
from zring.versions import Version


def test_round_trip_keeps_str_and_bytes_apart():
    message = Message(MsgType.PUT, 7, {"key": "k", "value": b"\x00bytes", "w": 2})
    assert decode(encode(message)) == message
    text = Message(MsgType.PUT, 8, {"key": "k", "value": "text"})
    assert decode(encode(text)).body["value"] == "text"


@pytest.mark.parametrize("frame, fragment", [
    (b"", "undecodable"),
    (b"\xc1", "undecodable"),
    (msgpack.packb({"not": "a list"}), "[type, request_id, body]"),
    (msgpack.packb([10, 1]), "[type, request_id, body]"),
    (msgpack.packb([10, 1, {}, "extra"]), "[type, request_id, body]"),
    (msgpack.packb(["10", 1, {}]), "type must be an int"),
    (msgpack.packb([999, 1, {}]), "unknown message type"),
    (msgpack.packb([10, -1, {}]), "request id"),
    (msgpack.packb([10, 1, []]), "body must be a map"),
    (msgpack.packb([10, 1, {"value": b"v"}]), "needs field 'key'"),
    (msgpack.packb([10, 1, {"key": b"k", "value": b"v"}]), "wrong type"),
    (msgpack.packb([10, 1, {"key": "k", "value": 3}]), "wrong type"),
    (msgpack.packb([10, 1, {"key": "k", "value": b"v", "w": True}]), "wrong type"),
    (msgpack.packb([10, 1, {"key": "k", "value": b"v", "w": -2}]), "out of range"),
    (msgpack.packb([10, 1, {1: "k"}]), "undecodable"),         # non-str map key
    (b"\x93\x0a\x01\x81\xa3key\xa2\xff\xfe", "undecodable"),     # invalid UTF-8
    (b"\x91" * 100_000 + b"\x90", "undecodable"),                # nested past the limit
    (b"\xdb\xff\xff\xff\xff", "undecodable"),                    # declared 4 GiB string
])
def test_bad_frames_raise_protocol_error(frame, fragment):
    with pytest.raises(ProtocolError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        decode(frame)


def test_oversized_frames_are_refused_before_decoding():
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(b"\x00" * (MAX_FRAME_BYTES + 1))


def test_unknown_fields_are_ignored_for_forward_compatibility():
    frame = msgpack.packb([11, 3, {"key": "k", "future_field": [1, 2]}])
    assert decode(frame).body["key"] == "k"


def test_error_for_unknown_type_carries_the_request_id():
    with pytest.raises(ProtocolError) as caught:
        decode(msgpack.packb([999, 42, {}]))
    assert caught.value.details["request_id"] == 42


def test_records_round_trip_and_positions_are_recomputed():
    record = Record("key", b"value", Version(123 << 16, "node1"), key_position("key"))
    wire = record_to_wire(record)
    assert record_from_wire(wire) == record
    tombstone = Record("gone", None, Version(5, "n"), key_position("gone"))
    assert record_from_wire(record_to_wire(tombstone)).is_tombstone
    forged = ["key", b"v", 1, "n"]
    assert record_from_wire(forged).position == key_position("key")


@pytest.mark.parametrize("wire", [
    "not a list", ["k", b"v", 1], [1, b"v", 1, "n"], ["k", 5, 1, "n"], ["k", b"v", -1, "n"],
    ["k", b"v", 1 << 63, "n"], ["k", b"v", 1.5, "n"], ["k", b"v", 1, 7],
])
def test_bad_records_are_refused(wire):
    with pytest.raises(ProtocolError):
        record_from_wire(wire)


@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_anything_but_protocol_error(frame):
    try:
        decode(frame)
    except ProtocolError:
        pass


def member(node_id="n1", generation=1, heartbeat=1, status=MemberStatus.NORMAL):
    return Member(node_id, f"tcp://127.0.0.1:1/{node_id}", f"tcp://127.0.0.1:2/{node_id}",
                  status, generation, heartbeat)


def test_member_records_round_trip_and_bad_ones_are_refused():
    record = member()
    assert Member.from_wire(record.to_wire()) == record
    for broken in [{}, {**record.to_wire(), "generation": "1"},
                   {**record.to_wire(), "status": 99}, {**record.to_wire(), "weight": -1},
                   {**record.to_wire(), "node_id": ""}]:
        with pytest.raises(ProtocolError):
            Member.from_wire(broken)


def test_merge_keeps_newer_generations_and_drops_stale_records():
    table = MemberTable(member("me"), PhiAccrualDetector(expected_interval_s=0.5))
    assert table.merge([member("n2", generation=2, heartbeat=5)], now=1.0)
    assert not table.merge([member("n2", generation=1, heartbeat=99)], now=2.0)  # stale
    assert table["n2"].heartbeat == 5
    assert table.merge([member("n2", generation=3, status=MemberStatus.LEAVING)], now=3.0)
    assert table["n2"].status == MemberStatus.LEAVING
    # heartbeats alone are not membership changes, but they refresh liveness
    assert not table.merge([member("n2", generation=3, heartbeat=7,
                                   status=MemberStatus.LEAVING)], now=4.0)
    assert table.last_heard("n2") == 4.0
    assert table.is_up("n2", 5.0)
    assert not table.is_up("n2", 8.0)


def test_a_forced_removal_of_ourselves_is_adopted_but_our_heartbeat_is_ours():
    table = MemberTable(member("me", heartbeat=50), PhiAccrualDetector(expected_interval_s=0.5))
    table.merge([member("me", generation=2, heartbeat=1, status=MemberStatus.LEFT)], now=1.0)
    assert table.own.status == MemberStatus.LEFT and table.own.heartbeat == 50
