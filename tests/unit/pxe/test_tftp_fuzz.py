"""Seeded mutation fuzzing of the TFTP codec and read session: hostile datagrams may only ever
raise TftpCodecError from `decode`, and never raise from `ReadSession.receive`/`timeout`."""

from __future__ import annotations

import random

from cloudctl.pxe.tftp.codec import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    TftpCodecError,
    WriteRequest,
    decode,
    encode,
)
from cloudctl.pxe.tftp.session import BytesReader, ReadSession, SessionState, TransferLimits

ITERATIONS = 100_000

SEED_PACKETS = [
    encode(packet)
    for packet in (
        ReadRequest("pxelinux.0", "octet"),
        ReadRequest(
            "pxelinux.cfg/01-52-54-00-12-34-56",
            "octet",
            {"blksize": "1468", "tsize": "0", "windowsize": "8", "timeout": "2"},
        ),
        WriteRequest("upload", "netascii", {"blksize": "512"}),
        Data(1, b"\x00" * 16),
        Data(65535, b"payload"),
        Ack(0),
        Ack(1),
        Ack(4),
        Ack(8),
        Ack(65535),
        Error(ErrorCode.OPTION_REFUSED, "option refused"),
        Error(ErrorCode.FILE_NOT_FOUND, ""),
        OptionAck({"blksize": "1468", "tsize": "12345"}),
    )
]
INTERESTING_BYTES = (0x00, 0x01, 0x04, 0x05, 0x06, 0x07, 0x7F, 0x80, 0xFF, ord("\\"), ord("."))


# What a session mostly hears is ACKs; weighting them keeps sessions alive long enough for the
# fuzzer to reach windowing, retransmission and completion instead of dying on the first DATA.
SESSION_SEED_PACKETS = SEED_PACKETS + [encode(Ack(block)) for block in range(12)] * 3


def mutate(rng: random.Random, seeds: list[bytes] = SEED_PACKETS) -> bytes:
    """One to three random edits of a valid packet, or (rarely) pure noise."""
    if rng.random() < 0.03:
        return rng.randbytes(rng.randrange(0, 64))
    buf = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 3)):
        edit = rng.randrange(8)
        position = rng.randrange(len(buf) + 1)
        if edit == 0 and buf:  # flip one bit
            index = rng.randrange(len(buf))
            buf[index] ^= 1 << rng.randrange(8)
        elif edit == 1 and buf:  # overwrite with a boundary value
            buf[rng.randrange(len(buf))] = rng.choice(INTERESTING_BYTES)
        elif edit == 2:  # truncate
            del buf[position:]
        elif edit == 3:  # insert random bytes
            buf[position:position] = rng.randbytes(rng.randint(1, 8))
        elif edit == 4:  # delete a slice
            del buf[position : position + rng.randint(1, 8)]
        elif edit == 5:  # splice the tail of another packet
            other = rng.choice(seeds)
            buf[position:] = other[rng.randrange(len(other) + 1) :]
        elif edit == 6:  # change the opcode
            buf[0:2] = rng.randrange(0, 9).to_bytes(2, "big")
        else:  # duplicate a slice (repeated options, doubled terminators)
            buf[position:position] = buf[position : position + rng.randint(1, 12)]
    return bytes(buf)


def test_decode_only_ever_raises_codec_error():
    rng = random.Random(0x7F7F)
    decoded = 0
    for _ in range(ITERATIONS):
        datagram = mutate(rng)
        try:
            packet = decode(datagram)
        except TftpCodecError:
            continue
        decoded += 1
        # Whatever decode accepts, encode can carry back (error text may be sanitised).
        again = decode(encode(packet))
        if not (isinstance(packet, Error) and not packet.message.isascii()):
            assert again == packet, datagram
    assert 1_000 < decoded < ITERATIONS  # the mutator reaches both sides of the parser


def new_session(rng: random.Random, now: float) -> tuple[ReadSession, list[bytes]]:
    options = rng.choice([{}, {"blksize": "64", "windowsize": "4", "tsize": "0"}, {"timeout": "1"}])
    size = rng.choice([0, 63, 64, 1000, 5000])
    session = ReadSession(
        ReadRequest("pxelinux.0", "octet", options),
        BytesReader((bytes(range(256)) * 20)[:size]),
        limits=TransferLimits(max_retries=3),
        now=now,
    )
    return session, session.start()


def test_session_never_raises_on_hostile_datagrams():
    rng = random.Random(0x5E55)
    now = 0.0
    session, sent = new_session(rng, now)
    sessions = completed = 0
    for _ in range(ITERATIONS):
        now += rng.choice((0.0, 0.001, 0.5))
        roll = rng.random()
        if roll < 0.05:
            sent = session.timeout(now)
        elif roll < 0.45:  # a plausible ACK: duplicate, in-window, or just past the window
            block = (session.blocks_acked + rng.randint(-2, 6)) & 0xFFFF
            sent = session.receive(encode(Ack(block)), now)
        else:
            sent = session.receive(mutate(rng, SESSION_SEED_PACKETS), now)
        for datagram in sent:
            decode(datagram)  # everything the session emits is well-formed
        assert session.bytes_acked <= session.size
        assert session.finished or session.deadline is not None
        if session.finished:
            assert session.deadline is None
            completed += session.state is SessionState.COMPLETED
            session, sent = new_session(rng, now)
            sessions += 1
    # Sessions ended every way (errors, wrong types, timeouts) and many ran to completion.
    assert sessions > 100 and completed > 100
