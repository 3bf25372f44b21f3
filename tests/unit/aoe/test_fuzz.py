"""Seeded random mutations of valid AoE frames through `decode_frame` and `Responder.handle`:
the codec raises nothing but AoeCodecError, the responder raises nothing at all, and every
answer it sends is a well-formed response frame."""

from __future__ import annotations

import random

from cloudctl.aoe.ata import AtaCommand
from cloudctl.aoe.codec import (
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    BROADCAST_MAC,
    AoeCodecError,
    AoeFrame,
    Arg,
    AtaArg,
    ConfigCommand,
    MacMaskArg,
    MaskCommand,
    MaskDirective,
    QueryConfigArg,
    RawArg,
    ReserveCommand,
    ReserveReleaseArg,
    decode_frame,
    encode_frame,
)
from cloudctl.aoe.responder import Export, MemoryBlockStore, Responder

SEED = 0xA0E11
MUTATIONS = 100_000
TARGET = bytes.fromhex("020000000001")
HOST_A = bytes.fromhex("525400000001")
HOST_B = bytes.fromhex("525400000002")
INTERESTING = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xEC, 0xFE, 0xFF)


def corpus() -> list[bytes]:
    """Valid requests of every kind, aimed at the exports `responder()` serves."""
    args: list[Arg] = [
        AtaArg(AFLAG_EXTENDED, 0, 2, AtaCommand.READ_SECTORS_EXT, 6),
        AtaArg(0, 0, 1, AtaCommand.READ_SECTORS, 0xE000_0003),
        AtaArg(AFLAG_EXTENDED | AFLAG_WRITE, 0, 2, AtaCommand.WRITE_SECTORS_EXT, 4, b"w" * 1024),
        AtaArg(AFLAG_WRITE, 0, 1, AtaCommand.WRITE_SECTORS, 7, b"v" * 512),
        AtaArg(0, 0, 1, AtaCommand.IDENTIFY_DEVICE, 0xA000_0000),
        AtaArg(0, 0, 0, AtaCommand.FLUSH_CACHE_EXT),
        AtaArg(0, 0, 0, AtaCommand.CHECK_POWER_MODE),
        AtaArg(0, 3, 1, 0xEF),
        QueryConfigArg(),
        QueryConfigArg(ccmd=ConfigCommand.TEST_PREFIX, config_string=b"pre"),
        QueryConfigArg(ccmd=ConfigCommand.SET, config_string=b"prefix-owner"),
        QueryConfigArg(ccmd=ConfigCommand.FORCE_SET, config_string=b"x" * 100),
        MacMaskArg(MaskCommand.READ),
        MacMaskArg(MaskCommand.EDIT, 0, (MaskDirective(1, HOST_B), MaskDirective(2, HOST_A))),
        ReserveReleaseArg(ReserveCommand.READ),
        ReserveReleaseArg(ReserveCommand.SET, (HOST_A,)),
        ReserveReleaseArg(ReserveCommand.FORCE_SET, (HOST_B, HOST_A)),
        RawArg(0xF0, b"vendor"),
    ]
    frames = []
    for arg in args:
        for src, major, minor in ((HOST_A, 0, 1), (HOST_B, 0, 2), (HOST_A, 1, 1)):
            frames.append(encode_frame(AoeFrame(TARGET, src, major, minor, 0x10203040, arg)))
    for major, minor in ((0xFFFF, 0xFF), (0, 0xFF), (0xFFFF, 1)):
        query = AoeFrame(BROADCAST_MAC, HOST_A, major, minor, 1, QueryConfigArg())
        frames.append(encode_frame(query))
    return frames


def responder() -> Responder:
    exports = {
        Export(0, 1, 64): MemoryBlockStore(64 * 512),
        Export(0, 2, 8, allowed_macs=frozenset({HOST_A, HOST_B})): MemoryBlockStore(8 * 512),
        Export(1, 1, 16, read_only=True, config_string=b"prefix"): MemoryBlockStore(16 * 512),
    }
    return Responder(exports, target_mac=TARGET, max_sectors_per_frame=2)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    buf = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        # Half the edits land in the headers (bytes 12-47), where the parsing decisions are.
        n = len(buf)
        at = (
            rng.randrange(12, min(n, 48))
            if n > 12 and rng.random() < 0.5
            else rng.randrange(n or 1)
        )
        op = rng.randrange(7)
        if op == 0 and at < n:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1 and at < n:
            buf[at] = rng.randrange(256)
        elif op == 2 and at < n:
            buf[at] = rng.choice(INTERESTING)
        elif op == 3:
            del buf[rng.randrange(n + 1) :]
        elif op == 4:
            buf += rng.randbytes(rng.randrange(1, 600))
        elif op == 5:
            del buf[at : at + rng.randrange(1, 16)]
        else:
            buf[at:at] = rng.randbytes(rng.randrange(1, 16))
    return bytes(buf)


def test_decode_frame_raises_only_codec_errors() -> None:
    rng = random.Random(SEED)
    seeds = corpus()
    decoded = 0
    for i in range(MUTATIONS):
        frame = mutate(rng, rng.choice(seeds))
        try:
            parsed = decode_frame(frame)
        except AoeCodecError:
            continue
        decoded += 1
        if i % 8 == 0:  # whatever decodes must re-encode, and stably so
            wire = encode_frame(parsed)
            assert encode_frame(decode_frame(wire)) == wire
    assert decoded > MUTATIONS // 4  # the mutations leave plenty of parseable frames


def test_responder_never_raises_and_answers_are_well_formed() -> None:
    rng = random.Random(SEED + 1)
    seeds = corpus()
    answered = 0
    r = responder()
    for i in range(MUTATIONS):
        if i % 250 == 0:  # mask edits and reservations accumulate; start over now and then
            r = responder()
        frame = mutate(rng, rng.choice(seeds))
        for answer in r.handle(frame):
            answered += 1
            assert len(answer) >= 60
            parsed = decode_frame(answer)
            assert parsed.is_response and parsed.version == 1
            assert (parsed.src, parsed.dst) == (TARGET, frame[6:12])
            assert parsed.major != 0xFFFF and parsed.minor != 0xFF
        stats = r.stats()
        assert stats.received == stats.handled + stats.ignored + stats.dropped + stats.denied
    assert answered > MUTATIONS // 10


def test_unmutated_corpus_is_answered() -> None:
    r = responder()
    for frame in corpus():
        decode_frame(frame)
        r.handle(frame)
    assert r.stats().dropped == 0
