"""The reliable stream: delivery, reordering, duplicates, acks, RTO, resends, a lossy link."""

from __future__ import annotations

import heapq
import itertools
import random
import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.protocol import (
    INITIAL_RTO,
    INITIAL_RTT,
    MAX_RTO,
    Acked,
    BufferFull,
    ChannelClosed,
    Deliver,
    DuplicatePolicy,
    Event,
    Frame,
    FrameError,
    GaveUp,
    MessageType,
    Other,
    PayloadType,
    Publication,
    Role,
    SendBytes,
    Stream,
    build_ack,
    build_agent_session_state,
    build_channel_closed,
    chunks,
    decode,
    encode,
    parse_ack,
)


def ids() -> Callable[[], uuid.UUID]:
    counter = itertools.count(1)
    return lambda: uuid.UUID(int=next(counter))


def frames_from(sender: Stream, count: int, now: float = 0.0) -> list[bytes]:
    return [sender.send(PayloadType.OUTPUT, b"m%d" % i, now) for i in range(count)]


def delivered(events: list[Event]) -> list[int]:
    return [e.sequence_number for e in events if isinstance(e, Deliver)]


def acks(events: list[Event]) -> list[int]:
    out = []
    for event in events:
        if isinstance(event, SendBytes):
            frame = decode(event.data)
            assert frame.message_type == MessageType.ACKNOWLEDGE
            assert (frame.sequence_number, frame.flags, frame.payload_type) == (0, 3, 0)
            out.append(parse_ack(frame.payload).sequence_number)
    return out


def control(message_type: str, payload: bytes = b"") -> bytes:
    return encode(Frame(message_type, 0, 0, payload, uuid.uuid4(), 1, flags=3))


def ack_bytes(seq: int, message_id: uuid.UUID | None = None) -> bytes:
    payload = build_ack("output_stream_data", message_id or uuid.uuid4(), seq)
    return control(MessageType.ACKNOWLEDGE, payload)


# --- sending ---------------------------------------------------------------------------------


def test_send_numbers_from_zero_and_sets_types_and_flags() -> None:
    agent = Stream(Role.AGENT, new_id=ids())
    first, second = (decode(f) for f in frames_from(agent, 2, now=1_700_000_000.5))
    assert first.message_type == MessageType.OUTPUT_STREAM_DATA
    assert (first.sequence_number, first.flags) == (0, 1)  # agent: flags 1 on seq 0
    assert (second.sequence_number, second.flags) == (1, 0)
    assert first.created_date == 1_700_000_000_500
    assert first.message_id == uuid.UUID(int=1)
    client = Stream(Role.CLIENT)
    frame = decode(client.send(PayloadType.SIZE, b'{"cols":80,"rows":24}', 0.0))
    assert frame.message_type == MessageType.INPUT_STREAM_DATA
    assert (frame.sequence_number, frame.flags, frame.payload_type) == (0, 0, 3)
    assert frame.created_date == 1  # never zero
    assert client.next_sequence_number == 1 and client.unacked_count == 1


def test_epoch_offset_sets_created_date() -> None:
    stream = Stream(Role.CLIENT, epoch_offset=1_000.0)
    assert decode(stream.send(1, b"x", 2.5)).created_date == 1_002_500


def test_chunks_and_send_all() -> None:
    assert list(chunks(b"")) == []
    assert list(chunks(b"abcde", 2)) == [b"ab", b"cd", b"e"]
    assert [len(c) for c in chunks(bytes(3000))] == [1024, 1024, 952]
    assert [len(c) for c in chunks(bytes(70_000), 32_768)] == [32_768, 32_768, 4464]
    with pytest.raises(ValueError):
        list(chunks(b"x", 0))
    stream = Stream(Role.AGENT)
    sent = stream.send_all(PayloadType.OUTPUT, bytes(5000), 0.0, chunk_size=2048)
    assert [len(decode(f).payload) for f in sent] == [2048, 2048, 904]
    assert stream.unacked_sequence_numbers == [0, 1, 2]


def test_buffer_full_is_back_pressure() -> None:
    stream = Stream(Role.CLIENT, max_unacked=2)
    frames_from(stream, 2)
    assert not stream.writable
    with pytest.raises(BufferFull):
        stream.send(1, b"x", 0.0)
    stream.receive(ack_bytes(0), 0.1)
    assert stream.writable
    stream.send(1, b"x", 0.1)


# --- receiving -------------------------------------------------------------------------------


def test_in_order_delivery_acks_each_frame() -> None:
    agent, client = Stream(Role.AGENT), Stream(Role.CLIENT)
    for i, data in enumerate(frames_from(agent, 3)):
        events = client.receive(data, 0.01)
        assert isinstance(events[0], SendBytes)  # the ack comes first
        assert events[1] == Deliver(PayloadType.OUTPUT, b"m%d" % i, i)
        assert acks(events) == [i]
    assert client.expected_sequence_number == 3


def test_out_of_order_is_acked_buffered_then_drained() -> None:
    agent, client = Stream(Role.AGENT), Stream(Role.CLIENT)
    f0, f1, f2, f3 = frames_from(agent, 4)
    for later in (f3, f1):
        events = client.receive(later, 0.0)
        assert delivered(events) == [] and len(acks(events)) == 1
    assert client.buffered_count == 2
    events = client.receive(f0, 0.0)
    assert acks(events) == [0] and delivered(events) == [0, 1]
    events = client.receive(f2, 0.0)
    assert delivered(events) == [2, 3]
    assert [e.payload for e in events if isinstance(e, Deliver)] == [b"m2", b"m3"]
    assert client.buffered_count == 0


def test_out_of_order_buffer_is_bounded() -> None:
    agent = Stream(Role.AGENT)
    client = Stream(Role.CLIENT, max_out_of_order=1)
    _f0, f1, f2 = frames_from(agent, 3)
    assert acks(client.receive(f1, 0.0)) == [1]
    assert client.receive(f2, 0.0) == []  # no room: neither buffered nor acked
    assert acks(client.receive(f1, 0.0)) == [1]  # already buffered: acked again


def test_held_frames_are_bounded_in_bytes() -> None:
    """Issue 16, item 15: a peer that ignores its window cannot make a receiver whose handler
    is not ready keep more than ``max_buffered_bytes`` of its frames."""
    client = Stream(Role.CLIENT)
    gate = {"open": False}
    agent = Stream(Role.AGENT, ready=lambda frame: gate["open"], max_buffered_bytes=250)
    sent = [client.send(1, b"x" * 100, 0.0) for _ in range(5)]
    for f in sent:
        assert agent.receive(f, 0.0) == []  # held or dropped: never acked
    assert agent.buffered_count == 2 and agent.buffered_bytes == 200
    gate["open"] = True
    events = agent.pump(0.1)
    assert delivered(events) == [0, 1] and acks(events) == [0, 1]
    assert agent.buffered_bytes == 0
    events = agent.receive(sent[2], 0.2)  # the peer retransmits what was not kept
    assert delivered(events) == [2]
    ahead = Stream(Role.AGENT, max_buffered_bytes=150)  # frames ahead of a gap, too
    assert acks(ahead.receive(sent[1], 0.0)) == [1]
    assert ahead.receive(sent[2], 0.0) == []
    assert delivered(ahead.receive(sent[0], 0.0)) == [0, 1]


@pytest.mark.parametrize(
    ("role", "policy", "reacked"),
    [
        (Role.AGENT, None, True),
        (Role.CLIENT, None, False),
        (Role.CLIENT, DuplicatePolicy.REACK, True),
        (Role.AGENT, DuplicatePolicy.IGNORE, False),
    ],
)
def test_duplicates(role: Role, policy: DuplicatePolicy | None, reacked: bool) -> None:
    receiver = Stream(role, duplicates=policy)
    sender = Stream(Role.CLIENT if role is Role.AGENT else Role.AGENT)
    f0 = sender.send(1, b"x", 0.0)
    assert delivered(receiver.receive(f0, 0.0)) == [0]
    again = receiver.receive(f0, 0.5)
    assert delivered(again) == []
    assert acks(again) == ([0] if reacked else [])


def test_ready_hook_withholds_the_ack() -> None:
    client = Stream(Role.CLIENT)
    ready = False
    agent = Stream(Role.AGENT, ready=lambda frame: ready)
    f0, f1, f2 = frames_from(client, 3)
    assert agent.receive(f0, 0.0) == []  # not ready: not delivered, not acked
    assert agent.receive(f2, 0.0) == []  # later frames wait unacked too (the sender stops)
    ready = True
    events = agent.receive(f0, 0.2)  # the retransmission
    assert acks(events) == [0] and delivered(events) == [0]
    ready = False
    assert acks(agent.receive(f1, 0.3)) == []
    ready = True
    events = agent.receive(f1, 0.4)
    assert delivered(events) == [1, 2] and acks(events) == [1, 2]


def test_pump_delivers_what_ready_held_back() -> None:
    client = Stream(Role.CLIENT)
    gate = {"open": True}
    agent = Stream(Role.AGENT, ready=lambda frame: gate["open"] or frame.sequence_number == 0)
    f0, f1, f2 = frames_from(client, 3)
    gate["open"] = False
    agent.receive(f1, 0.0)
    agent.receive(f2, 0.0)
    assert delivered(agent.receive(f0, 0.0)) == [0]  # 1 and 2 are acked but held back
    assert agent.buffered_count == 2
    assert agent.pump(0.1) == []
    gate["open"] = True
    assert delivered(agent.pump(0.1)) == [1, 2]


def test_pump_delivers_and_acks_frames_held_unacked() -> None:
    client = Stream(Role.CLIENT)
    gate = {"open": False}
    agent = Stream(Role.AGENT, ready=lambda frame: gate["open"])
    f0, f1, f2, f3 = frames_from(client, 4)
    for f in (f0, f2, f1):
        assert agent.receive(f, 0.0) == []  # held: neither delivered nor acked
    assert agent.receive(f0, 0.1) == []  # a retransmission while still not ready
    assert agent.buffered_count == 3
    assert agent.pump(0.2) == []
    gate["open"] = True
    events = agent.pump(0.3)
    assert delivered(events) == [0, 1, 2] and acks(events) == [0, 1, 2]
    for event in events:
        if isinstance(event, SendBytes):
            client.receive(event.data, 0.3)
    assert client.unacked_sequence_numbers == [3]
    events = agent.receive(f3, 0.4)
    assert delivered(events) == [3] and acks(events) == [3]
    assert agent.receive(f1, 0.5) != []  # an old duplicate is re-acked as before
    assert agent.buffered_count == 0


def test_a_retransmission_delivers_held_frames_once_ready() -> None:
    client = Stream(Role.CLIENT)
    gate = {"open": False}
    agent = Stream(Role.AGENT, ready=lambda frame: gate["open"])
    f0, f1, f2 = frames_from(client, 3)
    for f in (f0, f1, f2):
        agent.receive(f, 0.0)
    gate["open"] = True
    events = agent.receive(f0, 0.3)  # nobody pumped: the sender's retransmission does it
    assert delivered(events) == [0, 1, 2] and acks(events) == [0, 1, 2]


def test_frames_arriving_while_delivery_is_blocked_stay_unacked() -> None:
    # 0 and 1 delivered at once, 2 was buffered ahead (acked) but is not ready yet: 3 and 4
    # arriving now must not be acked, or a sender would never stop.
    client = Stream(Role.CLIENT)
    gate = {"limit": 2}
    agent = Stream(Role.AGENT, ready=lambda frame: frame.sequence_number < gate["limit"])
    f0, f1, f2, f3, f4 = frames_from(client, 5)
    assert acks(agent.receive(f2, 0.0)) == [2]
    assert acks(agent.receive(f1, 0.0)) == [1]
    assert delivered(agent.receive(f0, 0.0)) == [0, 1]
    assert agent.receive(f3, 0.0) == [] and agent.receive(f4, 0.0) == []
    gate["limit"] = 10
    events = agent.pump(0.1)
    assert delivered(events) == [2, 3, 4] and acks(events) == [3, 4]


def test_unacked_bytes_limit_the_window() -> None:
    agent = Stream(Role.AGENT, max_unacked_bytes=100)
    client = Stream(Role.CLIENT)
    first = agent.send(1, b"a" * 60, 0.0)
    assert agent.writable
    agent.send(1, b"b" * 60, 0.0)  # the frame that crosses the limit is still sent
    assert not agent.writable
    with pytest.raises(BufferFull):
        agent.send(1, b"c", 0.0)
    for event in client.receive(first, 0.0):
        if isinstance(event, SendBytes):
            agent.receive(event.data, 0.01)
    assert agent.writable


def test_control_frames_become_events() -> None:
    client = Stream(Role.CLIENT)
    closed = build_channel_closed("alice-1", "Session terminated", message_id=uuid.uuid4())
    assert client.receive(control(MessageType.CHANNEL_CLOSED, closed), 0.0) == [
        ChannelClosed("Session terminated", "alice-1")
    ]
    assert client.receive(control(MessageType.CHANNEL_CLOSED, b"bye"), 0.0) == [
        ChannelClosed("bye", "")
    ]
    assert client.receive(control(MessageType.PAUSE_PUBLICATION), 0.0) == [Publication(True)]
    assert client.paused
    assert client.receive(control(MessageType.START_PUBLICATION), 0.0) == [Publication(False)]
    assert not client.paused
    state = control(MessageType.AGENT_SESSION_STATE, build_agent_session_state("Connected", "s"))
    (event,) = client.receive(state, 0.0)
    assert isinstance(event, Other) and event.frame.message_type == "agent_session_state"
    # our own direction's stream type coming back is not stream data for us
    (echo,) = client.receive(Stream(Role.CLIENT).send(1, b"x", 0.0), 0.0)
    assert isinstance(echo, Other)
    bad_ack = control(MessageType.ACKNOWLEDGE, b"not json")
    assert [type(e) for e in client.receive(bad_ack, 0.0)] == [Other]
    with pytest.raises(FrameError):
        client.receive(b"garbage", 0.0)


# --- acks, RTT and RTO -----------------------------------------------------------------------


def test_ack_matches_on_sequence_number_only_and_updates_rto() -> None:
    client = Stream(Role.CLIENT)
    frames_from(client, 3, now=10.0)
    assert (client.srtt, client.rttvar, client.rto) == (INITIAL_RTT, 0.0, INITIAL_RTO)
    # wrong message id and type (like ssm-session): still acks seq 1
    assert client.receive(ack_bytes(1), 10.05) == [Acked(1)]
    assert client.unacked_sequence_numbers == [0, 2]
    assert client.rttvar == pytest.approx(0.25 * abs(0.1 - 0.05))
    assert client.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.05)
    assert client.rto == pytest.approx(0.09375 + max(0.01, 4 * 0.0125))
    assert client.receive(ack_bytes(1), 10.06) == []  # unknown seq: nothing
    assert client.receive(ack_bytes(7), 10.06) == []


def test_rto_shrinks_to_the_clock_granularity_and_is_capped() -> None:
    client = Stream(Role.CLIENT)
    for i in range(200):  # instant acks: SRTT → 0, RTTVAR → 0, RTO → 10 ms
        client.send(1, b"x", float(i))
        client.receive(ack_bytes(i), float(i))
    assert client.rto == pytest.approx(0.01, abs=1e-6)
    client.send(1, b"x", 1000.0)
    client.receive(ack_bytes(200), 1005.0)  # a 5 s sample
    srtt, rttvar = client.srtt, client.rttvar
    assert rttvar > 1.0 and client.rto == MAX_RTO
    assert srtt == pytest.approx(5.0 / 8, rel=1e-3)


def test_rto_growth_follows_the_formula() -> None:
    client = Stream(Role.CLIENT)
    srtt, rttvar = INITIAL_RTT, 0.0
    now = 0.0
    for i, sample in enumerate([0.3, 0.05, 0.4, 0.2, 0.9]):
        client.send(1, b"x", now)
        now += sample
        client.receive(ack_bytes(i), now)
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - sample)
        srtt = 0.875 * srtt + 0.125 * sample
        assert client.rttvar == pytest.approx(rttvar)
        assert client.srtt == pytest.approx(srtt)
        assert client.rto == pytest.approx(min(1.0, srtt + max(0.01, 4 * rttvar)))


# --- retransmission --------------------------------------------------------------------------


def test_only_the_oldest_is_resent_after_rto() -> None:
    client = Stream(Role.CLIENT)
    f0, f1, _f2 = frames_from(client, 3)
    assert client.next_due() == pytest.approx(0.2)
    assert client.due(0.1) == []
    assert client.due(0.2) == []  # strictly greater than RTO
    assert client.due(0.2001) == [f0]  # the same bytes (same id, same created date)
    assert client.due(0.3) == []  # last_sent moved to 0.2001
    assert client.due(0.41) == [f0]
    client.receive(ack_bytes(0), 0.5)  # RTO shrinks a little (0.09 s sample)
    assert client.due(0.5) == [f1]  # seq 1 was last sent at 0
    assert client.due(0.5) == []


def test_pause_stops_resends() -> None:
    agent = Stream(Role.AGENT)
    (f0,) = frames_from(agent, 1)
    agent.receive(control(MessageType.PAUSE_PUBLICATION), 0.0)
    assert agent.due(10.0) == [] and agent.next_due() is None
    agent.receive(control(MessageType.START_PUBLICATION), 10.0)
    assert agent.due(10.0) == [f0]


def test_give_up_after_max_attempts() -> None:
    client = Stream(Role.CLIENT, max_attempts=2)
    (f0,) = frames_from(client, 1)
    assert client.due(1.0) == [f0]
    assert client.due(2.0) == [f0]
    with pytest.raises(GaveUp) as info:
        client.due(3.0)
    assert (info.value.sequence_number, info.value.attempts) == (0, 2)
    with pytest.raises(GaveUp):
        client.due(4.0)


def test_role_defaults() -> None:
    client, agent = Stream(Role.CLIENT), Stream(Role.AGENT)
    assert client.max_attempts == 3000 and agent.max_attempts is None
    assert client.duplicates is DuplicatePolicy.IGNORE
    assert agent.duplicates is DuplicatePolicy.REACK
    assert (client.max_unacked, agent.max_unacked) == (10_000, 100_000)
    assert Stream(Role.AGENT, max_attempts=None).max_attempts is None
    agent_never = Stream(Role.AGENT)
    frames_from(agent_never, 1)
    for t in range(1, 5000):
        assert len(agent_never.due(float(t))) == 1


def test_resend_all_after_reconnect() -> None:
    client = Stream(Role.CLIENT)
    f0, _f1, f2 = frames_from(client, 3)
    client.receive(ack_bytes(1), 0.05)
    assert client.resend_all(5.0) == [f0, f2]
    assert client.due(5.1) == []


# --- two streams over a lossy, reordering, duplicating link -----------------------------------


def run_link(
    rnd: random.Random,
    loss: float,
    sizes: tuple[int, int],
    policies: tuple[DuplicatePolicy, DuplicatePolicy],
) -> tuple[Stream, Stream]:
    client = Stream(Role.CLIENT, duplicates=policies[0], max_attempts=None, max_out_of_order=5)
    agent = Stream(Role.AGENT, duplicates=policies[1], max_out_of_order=5)
    peer = {id(client): agent, id(agent): client}
    link: list[tuple[float, int, int, bytes]] = []
    order = itertools.count()
    got: dict[int, list[bytes]] = {id(client): [], id(agent): []}

    def transmit(sender: Stream, data: bytes, now: float) -> None:
        if rnd.random() < loss:
            return
        for _ in range(2 if rnd.random() < 0.05 else 1):
            arrival = now + rnd.uniform(0.001, 0.3)
            heapq.heappush(link, (arrival, next(order), id(peer[id(sender)]), data))

    streams = {id(client): client, id(agent): agent}
    want = {
        id(agent): [b"c%d" % i for i in range(sizes[0])],
        id(client): [b"a%d" % i for i in range(sizes[1])],
    }
    for sender, items in ((client, want[id(agent)]), (agent, want[id(client)])):
        for item in items:
            transmit(sender, sender.send(PayloadType.OUTPUT, item, 0.0), 0.0)

    def finished() -> bool:
        done = all(got[key] == want[key] for key in got)
        reack_both = all(p is DuplicatePolicy.REACK for p in policies)
        return done and (not reack_both or not (client.unacked_count or agent.unacked_count))

    now = 0.0
    while not finished():
        assert now < 3_000, "the link did not converge"
        times = [link[0][0]] if link else []
        times += [t + 1e-6 for s in (client, agent) if (t := s.next_due()) is not None]
        now = max(now, min(times))
        while link and link[0][0] <= now:
            _, _, target, data = heapq.heappop(link)
            receiver = streams[target]
            for event in receiver.receive(data, now):
                if isinstance(event, Deliver):
                    got[target].append(event.payload)
                elif isinstance(event, SendBytes):
                    transmit(receiver, event.data, now)
        for sender in (client, agent):
            for data in sender.due(now):
                transmit(sender, data, now)
        for key, items in got.items():
            assert items == want[key][: len(items)]  # in order, never twice
    return client, agent


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.randoms(use_true_random=False),
    st.floats(0.0, 0.4),
    st.tuples(st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.sampled_from(DuplicatePolicy), st.sampled_from(DuplicatePolicy)),
)
def test_lossy_link_delivers_everything_once_in_order(
    rnd: random.Random,
    loss: float,
    sizes: tuple[int, int],
    policies: tuple[DuplicatePolicy, DuplicatePolicy],
) -> None:
    run_link(rnd, loss, sizes, policies)


def test_lossy_link_with_reacks_leaves_nothing_unacked() -> None:
    rnd = random.Random(7)
    client, agent = run_link(rnd, 0.3, (30, 30), (DuplicatePolicy.REACK, DuplicatePolicy.REACK))
    assert client.unacked_count == agent.unacked_count == 0
    assert client.rto <= MAX_RTO
