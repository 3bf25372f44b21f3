"""Tests for cloudctl.pxe.tftp.session: negotiation, windowing, retransmission and rollover, driven
with a fake clock; plus a property test against a lossy simulated RFC 7440 client."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudctl.pxe.tftp.codec import (
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    decode,
    encode,
    encode_ack,
    encode_error,
)
from cloudctl.pxe.tftp.session import (
    BytesReader,
    ReadSession,
    SessionState,
    TransferLimits,
    blksize_for_mtu,
    negotiate,
    refuse_write,
)

LIMITS = TransferLimits(max_blksize=1468, max_windowsize=64, default_timeout=1.0, max_retries=5)


def rrq(mode: str = "octet", **options: object) -> ReadRequest:
    return ReadRequest("pxelinux.0", mode, {name: str(value) for name, value in options.items()})


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def session_for(size: int, *, now: float = 0.0, limits=LIMITS, **options: object) -> ReadSession:
    return ReadSession(rrq(**options), BytesReader(content(size)), limits=limits, now=now)


def as_data(packets: list[bytes]) -> list[Data]:
    decoded = [decode(packet) for packet in packets]
    assert all(isinstance(packet, Data) for packet in decoded), decoded
    return decoded  # type: ignore[return-value]


def block_numbers(packets: list[bytes]) -> list[int]:
    return [packet.block for packet in as_data(packets)]


class PatternReader:
    """Synthesises a large file without storing it: byte i is PATTERN[i % 65521]. The period is
    prime and not a divisor of 65536 * blksize, so block n and block n + 65536 differ."""

    PERIOD = 65521
    _pattern = random.Random(7).randbytes(PERIOD) * 2

    def __init__(self, size: int) -> None:
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= self.size and length <= self.PERIOD
        start = offset % self.PERIOD
        return self._pattern[start : start + length]


# -- negotiation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "blksize", "windowsize", "timeout", "oack"),
    [
        ({}, 512, 1, 1.0, {}),
        ({"blksize": "1468"}, 1468, 1, 1.0, {"blksize": "1468"}),
        ({"blksize": "1024"}, 1024, 1, 1.0, {"blksize": "1024"}),
        ({"blksize": "9000"}, 1468, 1, 1.0, {"blksize": "1468"}),  # capped at path MTU
        ({"blksize": "70000"}, 1468, 1, 1.0, {"blksize": "1468"}),  # above RFC range: clamped
        ({"blksize": "8"}, 8, 1, 1.0, {"blksize": "8"}),
        ({"blksize": "7"}, 512, 1, 1.0, {}),  # below range: cannot answer higher, so ignored
        ({"blksize": "0"}, 512, 1, 1.0, {}),
        ({"blksize": "big"}, 512, 1, 1.0, {}),
        ({"blksize": "-512"}, 512, 1, 1.0, {}),
        ({"blksize": "9" * 5000}, 1468, 1, 1.0, {"blksize": "1468"}),  # no int() digit-limit error
        ({"blksize": "01024"}, 1024, 1, 1.0, {"blksize": "1024"}),  # echoed normalised
        ({"windowsize": "16"}, 512, 16, 1.0, {"windowsize": "16"}),
        ({"windowsize": "1000"}, 512, 64, 1.0, {"windowsize": "64"}),
        ({"windowsize": "70000"}, 512, 64, 1.0, {"windowsize": "64"}),
        ({"windowsize": "0"}, 512, 1, 1.0, {}),
        ({"timeout": "3"}, 512, 1, 3.0, {"timeout": "3"}),
        ({"timeout": "255"}, 512, 1, 255.0, {"timeout": "255"}),
        ({"timeout": "0"}, 512, 1, 1.0, {}),  # RFC 2349 range 1..255, must echo unchanged
        ({"timeout": "256"}, 512, 1, 1.0, {}),
        ({"tsize": "0"}, 512, 1, 1.0, {"tsize": "123456"}),
        ({"tsize": "99"}, 512, 1, 1.0, {"tsize": "123456"}),
        ({"tsize": "x"}, 512, 1, 1.0, {}),
        ({"multicast": "1"}, 512, 1, 1.0, {}),  # unknown options are not echoed
        (
            {"tsize": "0", "rollover": "0", "blksize": "1468", "windowsize": "8"},
            1468,
            8,
            1.0,
            {"tsize": "123456", "blksize": "1468", "windowsize": "8"},
        ),
    ],
)
def test_negotiate(options, blksize, windowsize, timeout, oack):
    result = negotiate(options, file_size=123456, limits=LIMITS)
    assert (result.blksize, result.windowsize, result.timeout) == (blksize, windowsize, timeout)
    assert result.oack == oack
    assert list(result.oack) == list(oack)  # client order preserved


def test_blksize_for_mtu():
    assert blksize_for_mtu(1500) == 1468
    assert blksize_for_mtu(9000) == 8968
    assert blksize_for_mtu(100_000) == 65464
    assert blksize_for_mtu(20) == 8
    assert TransferLimits.for_mtu(1500).max_blksize == 1468
    assert TransferLimits.for_mtu(9000, max_windowsize=8).max_windowsize == 8


@pytest.mark.parametrize(
    "bad",
    [
        {"max_blksize": 7},
        {"max_blksize": 65465},
        {"max_windowsize": 0},
        {"max_windowsize": 65536},
        {"default_timeout": 0},
        {"default_timeout": 10, "max_timeout": 5},
        {"max_retries": -1},
    ],
)
def test_transfer_limits_validate(bad):
    with pytest.raises(ValueError):
        TransferLimits(**bad)


# -- plain and negotiated transfers --------------------------------------------------------------


def test_plain_512_lockstep_transfer():
    session = session_for(1300)
    assert session.total_blocks == 3
    first = as_data(session.start())
    assert [(p.block, len(p.payload)) for p in first] == [(1, 512)]
    assert session.deadline == 1.0 and session.state is SessionState.SENDING
    assert [(p.block, len(p.payload)) for p in as_data(session.receive(encode_ack(1), 0.1))] == [
        (2, 512)
    ]
    assert [(p.block, len(p.payload)) for p in as_data(session.receive(encode_ack(2), 0.2))] == [
        (3, 276)
    ]
    assert session.receive(encode_ack(3), 0.3) == []
    assert session.state is SessionState.COMPLETED
    assert session.finished and session.failed is None and session.deadline is None
    assert session.bytes_sent == 1300 and session.bytes_acked == 1300
    assert session.blocks_sent == 3 and session.retransmits == 0


def test_payloads_reassemble_the_file():
    data = content(5000, seed=3)
    session = ReadSession(rrq(), BytesReader(data), limits=LIMITS, now=0)
    received = bytearray()
    packets = session.start()
    block = 0
    while packets:
        (packet,) = as_data(packets)
        received += packet.payload
        block = packet.block
        packets = session.receive(encode_ack(block), 0)
    assert bytes(received) == data and session.state is SessionState.COMPLETED


def test_blksize_1468_sends_oack_then_waits_for_ack_0():
    session = session_for(3000, blksize=1468)
    first = session.start()
    assert [decode(p) for p in first] == [OptionAck({"blksize": "1468"})]
    assert session.state is SessionState.AWAITING_OACK_ACK and session.deadline == 1.0
    assert session.receive(encode_ack(1), 0.1) == []  # only ACK 0 answers an OACK
    data = as_data(session.receive(encode_ack(0), 0.2))
    assert [(p.block, len(p.payload)) for p in data] == [(1, 1468)]
    assert session.deadline == pytest.approx(1.2)


def test_tsize_answered_with_file_size():
    session = session_for(4242, tsize=0)
    assert decode(session.start()[0]) == OptionAck({"tsize": "4242"})


def test_oack_only_when_some_option_was_accepted():
    session = session_for(100, blksize=7, multicast=1)
    assert block_numbers(session.start()) == [1]


def test_oack_retransmitted_on_timeout():
    session = session_for(100, blksize=1024)
    (oack,) = session.start()
    assert session.timeout(0.5) == []
    assert session.timeout(1.0) == [oack]
    assert session.retransmits == 1 and session.deadline == 3.0


def test_error_8_on_oack_ends_cleanly():
    session = session_for(100, blksize=1468)
    session.start()
    assert session.receive(encode_error(ErrorCode.OPTION_REFUSED, "no thanks"), 0.1) == []
    assert session.state is SessionState.OPTIONS_DECLINED
    assert session.finished and session.failed is None and session.deadline is None


def test_error_8_after_data_started_is_a_failure():
    session = session_for(2000)
    session.start()
    session.receive(encode_error(ErrorCode.OPTION_REFUSED, "late"), 0.1)
    assert session.state is SessionState.FAILED and "ERROR 8" in session.failed


def test_client_error_fails_session_without_reply():
    session = session_for(2000)
    session.start()
    assert session.receive(encode_error(ErrorCode.DISK_FULL, "disk full"), 0.1) == []
    assert session.state is SessionState.FAILED
    assert session.failed == "client sent ERROR 3: 'disk full'"


def test_netascii_is_served_unchanged_and_mail_is_refused():
    text = b"DEFAULT linux\nLABEL linux\n"
    session = ReadSession(rrq("netascii"), BytesReader(text), limits=LIMITS, now=0)
    assert as_data(session.start())[0].payload == text
    mail = ReadSession(rrq("mail"), BytesReader(text), limits=LIMITS, now=0)
    (error,) = mail.start()
    assert decode(error).code == ErrorCode.ILLEGAL_OPERATION
    assert mail.state is SessionState.FAILED and mail.deadline is None


# -- file sizes at block boundaries --------------------------------------------------------------


def run_lockstep(session: ReadSession) -> list[Data]:
    """Drive a session with a perfect client that ACKs every block; returns the DATA seen."""
    seen: list[Data] = []
    packets = session.start()
    if packets and isinstance(decode(packets[0]), OptionAck):
        packets = session.receive(encode_ack(0), 0)
    while packets:
        data = as_data(packets)
        seen.extend(data)
        packets = session.receive(encode_ack(data[-1].block), 0)
    return seen


@pytest.mark.parametrize(
    ("size", "blksize", "lengths"),
    [
        (0, 512, [0]),
        (1, 512, [1]),
        (511, 512, [511]),
        (512, 512, [512, 0]),
        (1024, 512, [512, 512, 0]),
        (1468 * 2, 1468, [1468, 1468, 0]),
        (1468 * 2 + 1, 1468, [1468, 1468, 1]),
    ],
)
def test_block_boundaries(size, blksize, lengths):
    options = {} if blksize == 512 else {"blksize": blksize}
    session = session_for(size, **options)
    seen = run_lockstep(session)
    assert [len(packet.payload) for packet in seen] == lengths
    assert [packet.block for packet in seen] == list(range(1, len(lengths) + 1))
    assert session.state is SessionState.COMPLETED and session.bytes_acked == size


# -- windowing -----------------------------------------------------------------------------------


def start_windowed(size: int, windowsize: int, **options: object) -> ReadSession:
    session = session_for(size, windowsize=windowsize, **options)
    (oack,) = session.start()
    assert decode(oack) == OptionAck({"windowsize": str(windowsize)})
    return session


@pytest.mark.parametrize("windowsize", [8, 16])
def test_window_is_sent_whole_and_advances_on_last_block_ack(windowsize):
    session = start_windowed(512 * 40, windowsize)
    assert block_numbers(session.receive(encode_ack(0), 0)) == list(range(1, windowsize + 1))
    nxt = session.receive(encode_ack(windowsize), 0.1)
    assert block_numbers(nxt) == list(range(windowsize + 1, 2 * windowsize + 1))
    assert session.retransmits == 0


@pytest.mark.parametrize("windowsize", [8, 16])
def test_ack_in_middle_of_window_restarts_window_after_it(windowsize):
    session = start_windowed(512 * 100, windowsize)
    session.receive(encode_ack(0), 0)
    # Client got blocks 1..3 only: the window restarts at 4, resending 4..W, then new blocks.
    resent = session.receive(encode_ack(3), 0.1)
    assert block_numbers(resent) == list(range(4, 4 + windowsize))
    assert session.retransmits == windowsize - 3
    assert session.deadline == pytest.approx(1.1)


def test_window_stops_at_final_block():
    session = start_windowed(512 * 10 + 100, 8)
    assert block_numbers(session.receive(encode_ack(0), 0)) == list(range(1, 9))
    last = as_data(session.receive(encode_ack(8), 0))
    assert [(p.block, len(p.payload)) for p in last] == [(9, 512), (10, 512), (11, 100)]
    assert session.receive(encode_ack(10), 0) == [encode(last[2])]  # restart resends 11 only
    assert session.receive(encode_ack(11), 0) == []
    assert session.state is SessionState.COMPLETED


@pytest.mark.parametrize("windowsize", [8, 16])
def test_lost_ack_times_out_and_resends_whole_window_with_backoff(windowsize):
    session = start_windowed(512 * 100, windowsize)
    window = session.receive(encode_ack(0), 10.0)
    assert session.deadline == 11.0
    assert session.timeout(10.99) == []  # early call is a no-op
    waits = []
    for attempt in range(1, 6):
        now = session.deadline
        assert session.timeout(now) == window
        waits.append(session.deadline - now)
        assert session.retransmits == attempt * windowsize
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped at limits.max_timeout
    assert session.timeouts == 5
    # Max retries exhausted: the next deadline gives up silently.
    assert session.timeout(session.deadline) == []
    assert session.state is SessionState.FAILED
    assert session.failed == "no ACK after 5 retransmissions"
    assert session.deadline is None and session.timeout(1000.0) == []


def test_progress_resets_backoff():
    session = start_windowed(512 * 100, 8)
    session.receive(encode_ack(0), 0.0)
    session.timeout(1.0)
    session.timeout(3.0)
    assert session.deadline == 7.0
    session.receive(encode_ack(8), 4.0)
    assert session.deadline == 5.0


def test_negotiated_timeout_is_the_base_and_may_exceed_max_timeout():
    session = session_for(100_000, timeout=10)
    session.start()
    assert session.deadline == 10.0
    session.receive(encode_ack(0), 0.0)
    session.timeout(10.0)
    assert session.deadline == 20.0  # cap is max(max_timeout, negotiated timeout)


def test_zero_retries_fails_at_first_deadline():
    session = session_for(100, limits=TransferLimits(max_retries=0))
    session.start()
    assert session.timeout(1.0) == [] and session.state is SessionState.FAILED


# -- duplicates and strays: no Sorcerer's Apprentice ---------------------------------------------


def test_duplicate_ack_is_ignored():
    session = session_for(5000)
    session.start()
    session.receive(encode_ack(1), 0.1)
    assert session.receive(encode_ack(1), 0.2) == []
    assert session.receive(encode_ack(1), 0.3) == []
    assert session.duplicate_acks == 2 and session.retransmits == 0
    assert session.deadline == pytest.approx(1.1)  # duplicates do not re-arm the timer


def test_ack_0_after_data_started_is_a_duplicate():
    session = session_for(5000)
    session.start()
    assert session.receive(encode_ack(0), 0.1) == []
    assert session.duplicate_acks == 1


def test_delayed_ack_from_an_earlier_window_is_a_duplicate():
    session = start_windowed(512 * 100, 8)
    session.receive(encode_ack(0), 0)
    session.receive(encode_ack(8), 0)
    session.receive(encode_ack(16), 0)
    assert session.receive(encode_ack(5), 0) == []
    assert session.duplicate_acks == 1


def test_ack_for_block_never_sent_is_ignored():
    session = start_windowed(512 * 100, 8)
    session.receive(encode_ack(0), 0)
    assert session.receive(encode_ack(9), 0) == []
    assert session.receive(encode_ack(200), 0) == []
    assert session.ignored_datagrams == 2 and session.state is SessionState.SENDING


@pytest.mark.parametrize("datagram", [b"", b"\x00", b"\x00\x04\x00", b"\x00\x09", b"\xff" * 30])
def test_malformed_datagrams_are_counted_and_ignored(datagram):
    session = session_for(5000)
    session.start()
    assert session.receive(datagram, 0.1) == []
    assert session.ignored_datagrams == 1 and session.state is SessionState.SENDING


@pytest.mark.parametrize(
    "packet",
    [
        Data(1, b"x"),
        ReadRequest("pxelinux.0"),
        ReadRequest("other", "octet", {"blksize": "1468"}),
        OptionAck({"blksize": "512"}),
    ],
    ids=["data", "rrq", "rrq-options", "oack"],
)
def test_wrong_packet_type_gets_error_4_and_ends_session(packet):
    session = session_for(5000)
    session.start()
    (reply,) = session.receive(encode(packet), 0.1)
    error = decode(reply)
    assert isinstance(error, Error) and error.code == ErrorCode.ILLEGAL_OPERATION
    assert session.state is SessionState.FAILED and type(packet).__name__ in session.failed


def test_wrq_on_session_gets_error_4():
    session = session_for(10)
    session.start()
    (reply,) = session.receive(b"\x00\x02f\x00octet\x00", 0)
    assert decode(reply).code == ErrorCode.ILLEGAL_OPERATION


def test_finished_session_ignores_everything():
    session = session_for(10)
    session.start()
    session.receive(encode_ack(1), 0)
    assert session.state is SessionState.COMPLETED
    for datagram in (encode_ack(1), encode(Data(1, b"")), b"junk"):
        assert session.receive(datagram, 1) == []
    assert session.timeout(100) == []


def test_api_misuse_raises():
    session = session_for(10)
    with pytest.raises(RuntimeError):
        session.receive(encode_ack(1), 0)
    session.start()
    with pytest.raises(RuntimeError):
        session.start()


# -- reader failures -----------------------------------------------------------------------------


class ShrinkingReader:
    size = 2000

    def read(self, offset: int, length: int) -> bytes:
        return b"x" * (length if offset == 0 else length // 2)


class FailingReader:
    size = 2000

    def read(self, offset: int, length: int) -> bytes:
        raise OSError(5, "Input/output error")


def test_short_read_ends_transfer_with_error_0():
    session = ReadSession(rrq(), ShrinkingReader(), limits=LIMITS, now=0)
    session.start()
    (reply,) = session.receive(encode_ack(1), 0)
    assert decode(reply) == Error(ErrorCode.NOT_DEFINED, "read error")
    assert session.state is SessionState.FAILED and "file changed" in session.failed


def test_reader_oserror_ends_transfer_with_error_0():
    session = ReadSession(rrq(), FailingReader(), limits=LIMITS, now=0)
    (reply,) = session.start()
    assert decode(reply) == Error(ErrorCode.NOT_DEFINED, "read error")
    assert "Input/output error" in session.failed


# -- block number rollover -----------------------------------------------------------------------


def test_rollover_64_mib_at_blksize_512():
    size = 64 * 1024 * 1024 + 300  # 131073 blocks: wraps 65535 -> 0 twice over
    reader = PatternReader(size)
    session = ReadSession(rrq(windowsize=16), reader, limits=LIMITS, now=0)
    session.start()
    packets = session.receive(encode_ack(0), 0)
    absolute = 0
    wire_numbers_near_wrap = {}
    while packets:
        for packet in as_data(packets):
            absolute += 1
            assert packet.block == absolute % 65536
            offset = (absolute - 1) * 512
            assert packet.payload == reader.read(offset, min(512, size - offset))
            if absolute in (65535, 65536, 65537, 131072, 131073):
                wire_numbers_near_wrap[absolute] = packet.block
        packets = session.receive(encode_ack(absolute % 65536), 0)
    assert wire_numbers_near_wrap == {65535: 65535, 65536: 0, 65537: 1, 131072: 0, 131073: 1}
    assert absolute == session.total_blocks == 131073
    assert session.state is SessionState.COMPLETED and session.bytes_acked == size


def test_rollover_window_spanning_the_wrap_and_mid_window_ack_after_it():
    size = 8 * 65540  # blksize 8: 65541 blocks
    session = ReadSession(rrq(blksize=8, windowsize=8), PatternReader(size), limits=LIMITS, now=0)
    session.start()
    session.receive(encode_ack(0), 0)
    for last in range(8, 65528 + 1, 8):
        session.receive(encode_ack(last), 0)
    window = session.receive(encode_ack(65528), 0)  # duplicate: ignored
    assert window == []
    window = block_numbers(session.timeout(session.deadline))
    assert window == [65529, 65530, 65531, 65532, 65533, 65534, 65535, 0]
    # ACK of wire block 0 is absolute block 65536, the end of this window: the next one is 1..5.
    assert block_numbers(session.receive(encode_ack(0), 0)) == [1, 2, 3, 4, 5]
    assert session.receive(encode_ack(65535), 0) == []  # stale: before the current window
    assert session.receive(encode_ack(5), 0) == []
    assert session.state is SessionState.COMPLETED


# -- write refusal ---------------------------------------------------------------------------------


def test_refuse_write_is_access_violation():
    assert decode(refuse_write()) == Error(ErrorCode.ACCESS_VIOLATION, "read-only server")


def test_bytes_reader():
    reader = BytesReader(b"hello world")
    assert reader.size == 11
    assert bytes(reader.read(6, 5)) == b"world"
    assert bytes(reader.read(6, 100)) == b"world"


# -- property: a lossy client always reassembles the exact file -----------------------------------


class SimulatedClient:
    """An RFC 7440 receiver: ACKs after each window, on the final block and on the first gap it
    sees; on its own timeout it re-ACKs the last in-order block. Duplicates are dropped."""

    def __init__(self, windowsize_asked: int) -> None:
        self.blksize = 512
        self.windowsize = 1
        self.windowsize_asked = windowsize_asked
        self.expected = 1  # absolute
        self.received = bytearray()
        self.since_ack = 0
        self.gap_reported = False
        self.oack: dict[str, str] | None = None
        self.done = False

    def _ack(self) -> list[bytes]:
        self.since_ack = 0
        return [encode_ack((self.expected - 1) & 0xFFFF)]

    def on_packet(self, datagram: bytes) -> list[bytes]:
        packet = decode(datagram)
        if isinstance(packet, OptionAck):
            if self.expected > 1:
                return []
            self.oack = dict(packet.options)
            self.blksize = int(packet.options.get("blksize", 512))
            self.windowsize = int(packet.options.get("windowsize", 1))
            return [encode_ack(0)]
        assert isinstance(packet, Data), packet
        delta = (packet.block - self.expected) & 0xFFFF
        if delta == 0 and not self.done:
            assert len(packet.payload) <= self.blksize
            self.received += packet.payload
            self.expected += 1
            self.since_ack += 1
            self.gap_reported = False
            if len(packet.payload) < self.blksize:
                self.done = True
                return self._ack()
            return self._ack() if self.since_ack >= self.windowsize else []
        if 0 < delta < 0x8000 and not self.gap_reported:
            self.gap_reported = True
            return self._ack()
        return []

    def on_timeout(self) -> list[bytes]:
        self.gap_reported = False
        if self.oack is None and self.expected == 1:
            return []  # RRQ retransmission goes to port 69, outside the session
        return self._ack()


@settings(max_examples=150, deadline=None)
@given(
    size=st.one_of(st.integers(0, 30_000), st.sampled_from([512, 1024, 1468 * 4, 8 * 100])),
    blksize=st.sampled_from([None, 8, 100, 512, 1024, 1468, 9000]),
    windowsize=st.sampled_from([None, 1, 2, 3, 8, 16, 100]),
    tsize=st.booleans(),
    loss=st.floats(0.0, 0.4),
    duplication=st.floats(0.0, 0.2),
    loss_budget=st.integers(0, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_lossy_client_reassembles_exact_file(
    size, blksize, windowsize, tsize, loss, duplication, loss_budget, seed
):
    rng = random.Random(seed)
    data = rng.randbytes(size)
    options = {}
    if blksize is not None:
        options["blksize"] = blksize
    if windowsize is not None:
        options["windowsize"] = windowsize
    if tsize:
        options["tsize"] = 0
    limits = TransferLimits(max_blksize=1468, max_windowsize=16, max_timeout=4.0, max_retries=500)
    session = ReadSession(rrq(**options), BytesReader(data), limits=limits, now=0.0)
    client = SimulatedClient(windowsize or 1)
    budget = loss_budget
    to_client: deque[bytes] = deque(session.start())
    to_server: deque[bytes] = deque()
    now = 0.0

    def fate() -> int:
        """How many copies of a packet arrive: 0 (lost, while budget lasts), 1 or 2."""
        nonlocal budget
        if budget and rng.random() < loss:
            budget -= 1
            return 0
        return 2 if rng.random() < duplication else 1

    for _ in range(1_000_000):
        if session.finished:
            break
        # Random interleaving so ACKs sometimes reach the server mid-window.
        if to_client and (not to_server or rng.random() < 0.7):
            datagram = to_client.popleft()
            for _copy in range(fate()):
                to_server.extend(client.on_packet(datagram))
        elif to_server:
            datagram = to_server.popleft()
            now += 0.001
            for _copy in range(fate()):
                to_client.extend(session.receive(datagram, now))
        else:
            now = session.deadline
            to_server.extend(client.on_timeout())
            to_client.extend(session.timeout(now))
    assert session.state is SessionState.COMPLETED, session.failed
    assert bytes(client.received) == data
    if tsize:
        assert client.oack is not None and client.oack["tsize"] == str(size)
    assert session.bytes_acked == size
