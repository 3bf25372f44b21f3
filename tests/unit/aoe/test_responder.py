"""AoE responder: ATA I/O through an in-memory store, addressing, ACL silence, discovery,
config strings, MAC mask list, reserve/release, errors and counters."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudctl.aoe.ata import (
    ERROR_ABRT,
    ERROR_IDNF,
    ERROR_UNC,
    STATUS_DRDY,
    STATUS_ERR,
    AtaCommand,
)
from cloudctl.aoe.codec import (
    AFLAG_EXTENDED,
    AFLAG_WRITE,
    BROADCAST_MAC,
    FLAG_ERROR,
    FLAG_RESPONSE,
    AoeFrame,
    AtaArg,
    ConfigCommand,
    ErrorCode,
    MacMaskArg,
    MaskCommand,
    MaskDirective,
    MaskDirectiveCommand,
    MaskError,
    QueryConfigArg,
    RawArg,
    ReserveCommand,
    ReserveReleaseArg,
    decode_frame,
    encode_frame,
)
from cloudctl.aoe.responder import (
    MASK_LIST_MAX,
    AoeConfigError,
    Export,
    MemoryBlockStore,
    Responder,
    ResponderStats,
)

TARGET = bytes.fromhex("020000000001")
HOST_A = bytes.fromhex("525400000001")
HOST_B = bytes.fromhex("525400000002")
SIZE = 64  # sectors


def make(*exports: Export, max_sectors: int = 2, **kw) -> tuple[Responder, dict]:
    exports = exports or (Export(0, 1, SIZE),)
    stores = {e: MemoryBlockStore(e.size_sectors * 512) for e in exports}
    return Responder(stores, target_mac=TARGET, max_sectors_per_frame=max_sectors, **kw), stores


def request(arg, *, src=HOST_A, dst=TARGET, major=0, minor=1, tag=0x01020304, **kw) -> bytes:
    return encode_frame(AoeFrame(dst, src, major, minor, tag, arg, **kw))


def write(lba: int, data: bytes, *, ext: bool = True, **kw) -> bytes:
    cmd = AtaCommand.WRITE_SECTORS_EXT if ext else AtaCommand.WRITE_SECTORS
    flags = AFLAG_WRITE | (AFLAG_EXTENDED if ext else 0)
    return request(AtaArg(flags, 0, len(data) // 512, cmd, lba, data), **kw)


def read(lba: int, count: int, *, ext: bool = True, **kw) -> bytes:
    cmd = AtaCommand.READ_SECTORS_EXT if ext else AtaCommand.READ_SECTORS
    return request(AtaArg(AFLAG_EXTENDED if ext else 0, 0, count, cmd, lba), **kw)


def ata(command: int, count: int = 0, lba: int = 0, **kw) -> bytes:
    return request(AtaArg(0, 0, count, command, lba), **kw)


def one(responder: Responder, frame: bytes) -> AoeFrame:
    answers = responder.handle(frame)
    assert len(answers) == 1
    assert len(answers[0]) >= 60
    return decode_frame(answers[0])


# --- ATA I/O ----------------------------------------------------------------------------------


def test_write_then_read_lba48() -> None:
    r, stores = make()
    data = bytes(range(256)) * 4
    answer = one(r, write(10, data))
    assert answer.arg.cmd_status == STATUS_DRDY and answer.arg.sector_count == 0
    assert stores[r.exports[0]].buffer[10 * 512 : 12 * 512] == data  # durable when answered
    back = one(r, read(10, 2))
    assert back.arg.cmd_status == STATUS_DRDY
    assert back.arg.data == data
    assert (back.arg.lba, back.arg.aflags) == (10, AFLAG_EXTENDED)


def test_lba28_with_device_head_bits() -> None:
    r, stores = make()
    one(r, write(0xE000_0003, b"\x5a" * 512, ext=False))  # Linux ORs 0xE0 into lba3
    assert stores[r.exports[0]].buffer[3 * 512 : 4 * 512] == b"\x5a" * 512
    assert one(r, read(0xE000_0003, 1, ext=False)).arg.data == b"\x5a" * 512


def test_answer_addressing_and_padding() -> None:
    r, _ = make(Export(7, 3, SIZE))
    wire = r.handle(write(0, bytes(512), major=7, minor=3, tag=0xCAFEF00D))[0]
    answer = decode_frame(wire)
    assert (answer.dst, answer.src) == (HOST_A, TARGET)
    assert (answer.major, answer.minor, answer.tag) == (7, 3, 0xCAFEF00D)
    assert answer.flags == FLAG_RESPONSE and answer.version == 1
    assert len(wire) == 60  # a write answer carries no data, padded to the Ethernet minimum


def test_read_answer_is_exactly_header_plus_data() -> None:
    r, _ = make(max_sectors=17)
    wire = r.handle(read(0, 17))[0]
    assert len(wire) == 36 + 17 * 512


def test_identify_through_responder() -> None:
    r, _ = make(Export(0, 1, 123456, serial="disk-1"))
    answer = one(r, ata(AtaCommand.IDENTIFY_DEVICE, 1, lba=0xA0 << 24))
    page = answer.arg.data
    assert len(page) == 512 and answer.arg.cmd_status == STATUS_DRDY
    assert struct.unpack_from("<Q", page, 200)[0] == 123456
    serial = b"".join(page[20 + i : 22 + i][::-1] for i in range(0, 20, 2))
    assert serial == b"disk-1".ljust(20)


def test_default_serial_names_the_target() -> None:
    assert Export(12, 3, 1).serial == "cloudctl-e12.3"


def test_flush_calls_store_flush() -> None:
    r, stores = make()
    for command in (AtaCommand.FLUSH_CACHE, AtaCommand.FLUSH_CACHE_EXT):
        assert one(r, ata(command)).arg.cmd_status == STATUS_DRDY
    assert stores[r.exports[0]].flushes == 2


def test_check_power_mode() -> None:
    r, _ = make()
    answer = one(r, ata(AtaCommand.CHECK_POWER_MODE))
    assert (answer.arg.sector_count, answer.arg.cmd_status) == (0xFF, STATUS_DRDY)


def test_unsupported_ata_command_aborts() -> None:
    r, _ = make()
    answer = one(r, ata(0xEF, 1))  # SET FEATURES
    assert answer.arg.cmd_status == STATUS_DRDY | STATUS_ERR
    assert answer.arg.err_feature == ERROR_ABRT
    assert not answer.is_error  # an ATA error, not an AoE one
    assert r.stats().errors == 1


@pytest.mark.parametrize(("lba", "count"), [(SIZE, 1), (SIZE - 1, 2), (1 << 40, 1)])
def test_read_past_end_is_an_ata_error(lba: int, count: int) -> None:
    r, _ = make()
    answer = one(r, read(lba, count))
    assert answer.arg.cmd_status == STATUS_DRDY | STATUS_ERR
    assert answer.arg.err_feature == ERROR_IDNF
    assert answer.arg.data == bytes(24)  # no sector data, just padding


def test_write_past_end_touches_nothing() -> None:
    r, stores = make()
    answer = one(r, write(SIZE - 1, b"\xff" * 1024))
    assert answer.arg.err_feature == ERROR_IDNF
    assert not any(stores[r.exports[0]].buffer)


def test_per_frame_sector_limit() -> None:
    r, _ = make(max_sectors=2)
    assert one(r, read(0, 2)).arg.cmd_status == STATUS_DRDY
    over = one(r, read(0, 3))
    assert (over.arg.cmd_status, over.arg.err_feature) == (STATUS_DRDY | STATUS_ERR, ERROR_ABRT)
    assert over.arg.sector_count == 3
    assert one(r, write(0, bytes(3 * 512))).arg.err_feature == ERROR_ABRT


def test_write_with_missing_data_is_a_bad_argument() -> None:
    r, stores = make()
    frame = request(AtaArg(AFLAG_WRITE | AFLAG_EXTENDED, 0, 2, 0x34, 0, b"x" * 600))
    answer = one(r, frame)
    assert answer.is_error and answer.error == ErrorCode.BAD_ARGUMENT
    echoed = answer.arg  # the request's ATA header comes back for matching
    assert (echoed.aflags, echoed.sector_count, echoed.cmd_status) == (0x41, 2, 0x34)
    assert not any(stores[r.exports[0]].buffer)


def test_read_only_export() -> None:
    r, stores = make(Export(0, 1, SIZE, read_only=True))
    assert one(r, write(0, b"\1" * 512)).arg.err_feature == ERROR_ABRT
    assert not any(stores[r.exports[0]].buffer)
    assert one(r, read(0, 1)).arg.cmd_status == STATUS_DRDY


class BrokenStore:
    def read(self, offset: int, length: int) -> bytes:
        raise OSError("disk on fire")

    def write(self, offset: int, data: bytes) -> None:
        raise OSError("disk on fire")

    def flush(self) -> None:
        raise OSError("disk on fire")


class ShortStore(BrokenStore):
    def read(self, offset: int, length: int) -> bytes:
        return bytes(length - 1)


def test_store_failures_become_ata_errors() -> None:
    r = Responder({Export(0, 1, SIZE): BrokenStore()}, target_mac=TARGET, max_sectors_per_frame=2)
    failed = one(r, read(0, 2))
    assert (failed.arg.cmd_status, failed.arg.err_feature) == (STATUS_DRDY | STATUS_ERR, ERROR_UNC)
    assert failed.arg.data == bytes(24)
    assert one(r, write(0, bytes(512))).arg.err_feature == ERROR_ABRT
    assert one(r, ata(AtaCommand.FLUSH_CACHE)).arg.err_feature == ERROR_ABRT
    assert r.stats().errors == 3


def test_short_read_from_a_store_without_readinto() -> None:
    r = Responder({Export(0, 1, SIZE): ShortStore()}, target_mac=TARGET, max_sectors_per_frame=2)
    assert one(r, read(0, 1)).arg.err_feature == ERROR_UNC


def test_store_without_readinto_serves_reads() -> None:
    class PlainStore(BrokenStore):
        def read(self, offset: int, length: int) -> bytes:
            return bytes([offset // 512]) * length

    r = Responder({Export(0, 1, SIZE): PlainStore()}, target_mac=TARGET, max_sectors_per_frame=2)
    assert one(r, read(5, 1)).arg.data == b"\5" * 512


def test_frames_as_bytearray_and_memoryview() -> None:
    r, _ = make()
    one(r, bytearray(write(0, b"\x11" * 512)))
    assert one(r, memoryview(read(0, 1))).arg.data == b"\x11" * 512


# --- addressing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        read(0, 1, dst=bytes.fromhex("020000000099")),  # another target's MAC
        read(0, 1, major=0, minor=2),  # no such export
        read(0, 1, major=1, minor=1),
        read(0, 1, flags=FLAG_RESPONSE),  # an answer from some other target
        read(0, 1, src=TARGET),  # our own frame looped back
        read(0, 1)[:12] + b"\x08\x00" + read(0, 1)[14:],  # not AoE
        read(0, 1, major=0xFFFF),  # broadcast ATA
        request(ReserveReleaseArg(), minor=0xFF),  # broadcast reserve
        request(QueryConfigArg(), major=0xFFFF, version=2),
    ],
)
def test_frames_not_for_us_are_ignored(frame: bytes) -> None:
    r, _ = make()
    assert r.handle(frame) == []
    assert r.stats() == ResponderStats(received=1, ignored=1)


def test_ethernet_broadcast_destination_is_accepted() -> None:
    r, _ = make()
    assert one(r, read(0, 1, dst=BROADCAST_MAC)).arg.cmd_status == STATUS_DRDY


@pytest.mark.parametrize(
    "frame", [b"", b"\x00" * 23, read(0, 1)[:35], read(0, 1, src=BROADCAST_MAC)]
)
def test_malformed_frames_are_dropped(frame: bytes) -> None:
    r, _ = make()
    assert r.handle(frame) == []
    assert r.stats().dropped == 1


def test_unknown_command_and_version() -> None:
    r, _ = make()
    unknown = one(r, request(RawArg(0xF1, b"vendor")))
    assert (unknown.error, unknown.command, unknown.flags) == (
        ErrorCode.UNRECOGNIZED_COMMAND,
        0xF1,
        FLAG_RESPONSE | FLAG_ERROR,
    )
    v2 = one(r, request(RawArg(0, bytes(12)), version=2))
    assert (v2.error, v2.version) == (ErrorCode.UNSUPPORTED_VERSION, 1)


# --- ACL: silence -----------------------------------------------------------------------------


def test_acl_others_get_no_answer_at_all() -> None:
    r, stores = make(Export(0, 1, SIZE, allowed_macs=frozenset({"52:54:00:00:00:01"})))
    assert r.exports[0].allowed_macs == frozenset({HOST_A})
    for frame in (
        write(0, b"\1" * 512, src=HOST_B),
        read(0, 1, src=HOST_B),
        request(QueryConfigArg(), src=HOST_B),
        request(QueryConfigArg(), src=HOST_B, major=0xFFFF, minor=0xFF),
        request(MacMaskArg(), src=HOST_B),
        request(ReserveReleaseArg(), src=HOST_B),
    ):
        assert r.handle(frame) == []
    assert not any(stores[r.exports[0]].buffer)
    assert r.stats() == ResponderStats(received=6, denied=6)
    assert one(r, read(0, 1)).arg.cmd_status == STATUS_DRDY


# --- discovery --------------------------------------------------------------------------------


def test_broadcast_query_config_answers_once_per_export() -> None:
    exports = (
        Export(0, 1, SIZE, config_string=b"a"),
        Export(0, 2, SIZE),
        Export(1, 1, SIZE, allowed_macs=frozenset({HOST_B})),
    )
    r, _ = make(*exports, max_sectors=17)
    answers = [
        decode_frame(a) for a in r.handle(request(QueryConfigArg(), major=0xFFFF, minor=0xFF))
    ]
    assert sorted((a.major, a.minor) for a in answers) == [(0, 1), (0, 2)]  # e1.1 is masked
    for answer in answers:
        assert answer.dst == HOST_A and answer.flags == FLAG_RESPONSE and answer.tag == 0x01020304
        assert answer.arg.sector_count == 17 and answer.arg.aoe_version == 1
        assert answer.arg.buffer_count == 16 and answer.arg.firmware_version == 1
    assert {a.arg.config_string for a in answers} == {b"a", b""}
    by_slot = r.handle(request(QueryConfigArg(), major=0xFFFF, minor=1, src=HOST_B))
    assert sorted((decode_frame(a).major, decode_frame(a).minor) for a in by_slot) == [
        (0, 1),
        (1, 1),
    ]
    assert len(r.handle(request(QueryConfigArg(), major=0, minor=0xFF))) == 2
    assert r.handle(request(QueryConfigArg(), major=1, minor=0xFF)) == []  # denied
    assert r.handle(request(QueryConfigArg(), major=9, minor=0xFF)) == []  # nobody there
    assert r.stats() == ResponderStats(received=5, handled=3, ignored=1, denied=1)


def test_buffer_count_and_firmware_are_configurable() -> None:
    r, _ = make(buffer_count=64, firmware_version=0x4242)
    answer = one(r, request(QueryConfigArg()))
    assert (answer.arg.buffer_count, answer.arg.firmware_version) == (64, 0x4242)


# --- config string ----------------------------------------------------------------------------


def config(r: Responder, ccmd: int, string: bytes = b"", **kw) -> list:
    return [
        decode_frame(a)
        for a in r.handle(request(QueryConfigArg(ccmd=ccmd, config_string=string), **kw))
    ]


def test_config_test_exact_and_prefix_answer_only_on_match() -> None:
    r, _ = make(Export(0, 1, SIZE, config_string=b"cluster-a/disk-1"))
    assert config(r, ConfigCommand.TEST_EXACT, b"cluster-a") == []
    assert len(config(r, ConfigCommand.TEST_EXACT, b"cluster-a/disk-1")) == 1
    assert config(r, ConfigCommand.TEST_PREFIX, b"cluster-b") == []
    [hit] = config(r, ConfigCommand.TEST_PREFIX, b"cluster-a")
    assert (hit.arg.ccmd, hit.arg.config_string) == (ConfigCommand.TEST_PREFIX, b"cluster-a/disk-1")
    assert len(config(r, ConfigCommand.TEST_PREFIX, b"")) == 1
    assert r.stats().handled == 5 and r.stats().errors == 0


def test_config_set_only_when_empty_or_equal() -> None:
    r, _ = make()
    [first] = config(r, ConfigCommand.SET, b"owner=A")
    assert not first.is_error and first.arg.config_string == b"owner=A"
    [again] = config(r, ConfigCommand.SET, b"owner=A", src=HOST_B)
    assert not again.is_error
    [refused] = config(r, ConfigCommand.SET, b"owner=B", src=HOST_B)
    assert refused.is_error and refused.error == ErrorCode.CONFIG_STRING_PRESENT
    assert refused.arg.config_string == b"owner=A"
    [forced] = config(r, ConfigCommand.FORCE_SET, b"owner=B", src=HOST_B)
    assert not forced.is_error and forced.arg.config_string == b"owner=B"
    assert r.export_state(0, 1).config_string == b"owner=B"
    [read_back] = config(r, ConfigCommand.READ, b"ignored")
    assert read_back.arg.config_string == b"owner=B"


def test_config_unknown_ccmd_is_a_bad_argument() -> None:
    r, _ = make()
    [answer] = config(r, 9, b"x")
    assert answer.error == ErrorCode.BAD_ARGUMENT and answer.arg.config_string == b""


def test_broadcast_force_set_reaches_every_allowed_export() -> None:
    r, _ = make(Export(0, 1, SIZE), Export(0, 2, SIZE))
    assert len(config(r, ConfigCommand.FORCE_SET, b"mine", major=0xFFFF, minor=0xFF)) == 2
    assert r.export_state(0, 2).config_string == b"mine"


# --- MAC mask list ----------------------------------------------------------------------------


def mask(r: Responder, mcmd: int = MaskCommand.READ, *directives: tuple[int, bytes], **kw):
    arg = MacMaskArg(mcmd, 0, tuple(MaskDirective(d, m) for d, m in directives))
    return one(r, request(arg, **kw))


def test_mask_read_lists_the_acl() -> None:
    r, _ = make(Export(0, 1, SIZE, allowed_macs=frozenset({HOST_B, HOST_A})))
    answer = mask(r)
    assert [d.mac for d in answer.arg.directives] == [HOST_A, HOST_B]
    assert answer.arg.merror == 0 and answer.arg.dir_count == 2


def test_mask_edit_restricts_and_releases_access() -> None:
    r, _ = make()
    add, delete = MaskDirectiveCommand.ADD, MaskDirectiveCommand.DELETE
    answer = mask(r, MaskCommand.EDIT, (add, HOST_A), (MaskDirectiveCommand.NONE, HOST_B))
    assert [d.mac for d in answer.arg.directives] == [HOST_A]
    assert r.handle(read(0, 1, src=HOST_B)) == []  # B is now outside the mask
    mask(r, MaskCommand.EDIT, (add, HOST_B), (add, HOST_B))  # adding twice is harmless
    assert r.export_state(0, 1).mask_list == (HOST_A, HOST_B)
    mask(r, MaskCommand.EDIT, (delete, HOST_A), (delete, HOST_A), src=HOST_B)
    assert r.export_state(0, 1).mask_list == (HOST_B,)
    mask(r, MaskCommand.EDIT, (delete, HOST_B), src=HOST_B)
    assert one(r, read(0, 1, src=HOST_A)).arg.cmd_status == STATUS_DRDY  # empty list: everyone


def test_mask_bad_directive_stops_at_its_index() -> None:
    r, _ = make()
    add = MaskDirectiveCommand.ADD
    answer = mask(r, MaskCommand.EDIT, (add, HOST_A), (7, HOST_B), (add, HOST_B))
    assert (answer.arg.merror, answer.arg.dir_count, answer.arg.directives) == (
        MaskError.BAD_DIRECTIVE,
        1,
        (),
    )
    assert not answer.is_error  # reported in MError, not in the AoE header
    assert r.export_state(0, 1).mask_list == (HOST_A,)  # directives before it stay applied
    assert r.stats().errors == 1


def test_mask_list_full() -> None:
    r, _ = make()
    macs = [bytes([2, 0, 0, 0, i >> 8, i & 0xFF]) for i in range(MASK_LIST_MAX)]
    edits = [(MaskDirectiveCommand.ADD, m) for m in [HOST_A, *macs[1:]]]
    assert mask(r, MaskCommand.EDIT, *edits).arg.dir_count == MASK_LIST_MAX
    full = mask(r, MaskCommand.EDIT, (MaskDirectiveCommand.ADD, HOST_B))
    assert (full.arg.merror, full.arg.dir_count) == (MaskError.LIST_FULL, 0)


def test_mask_unknown_mcmd() -> None:
    r, _ = make()
    answer = mask(r, 5)
    assert answer.is_error and answer.error == ErrorCode.BAD_ARGUMENT


# --- reserve / release ------------------------------------------------------------------------


def reserve(r: Responder, rcmd: int, *macs: bytes, **kw) -> AoeFrame:
    return one(r, request(ReserveReleaseArg(rcmd, macs), **kw))


def test_reserve_release_cycle() -> None:
    r, stores = make()
    assert reserve(r, ReserveCommand.READ).arg.macs == ()
    assert reserve(r, ReserveCommand.SET, HOST_A).arg.macs == (HOST_A,)
    blocked = one(r, write(0, b"\1" * 512, src=HOST_B))
    assert blocked.is_error and blocked.error == ErrorCode.TARGET_RESERVED
    assert not any(stores[r.exports[0]].buffer)
    assert one(r, read(0, 1, src=HOST_B)).error == ErrorCode.TARGET_RESERVED
    identify = one(r, ata(AtaCommand.IDENTIFY_DEVICE, 1, src=HOST_B))
    assert not identify.is_error  # sizing the disk stays open
    assert one(r, write(0, b"\1" * 512)).arg.cmd_status == STATUS_DRDY
    refused = reserve(r, ReserveCommand.SET, HOST_B, src=HOST_B)
    assert refused.error == ErrorCode.TARGET_RESERVED and refused.arg.macs == (HOST_A,)
    assert reserve(r, ReserveCommand.SET, HOST_A, HOST_B).arg.macs == (HOST_A, HOST_B)
    assert reserve(r, ReserveCommand.SET, src=HOST_B).arg.macs == ()  # release
    assert reserve(r, ReserveCommand.SET, HOST_B, src=HOST_A).arg.macs == (HOST_B,)
    forced = reserve(r, ReserveCommand.FORCE_SET, HOST_A, src=HOST_A)
    assert not forced.is_error and r.export_state(0, 1).reserve_list == (HOST_A,)


def test_reserve_bad_arguments() -> None:
    r, _ = make(max_sectors=17)
    assert reserve(r, 3).error == ErrorCode.BAD_ARGUMENT
    too_many = [bytes([2, 0, 0, 0, 1, i]) for i in range(249)]
    answer = reserve(r, ReserveCommand.SET, *too_many)
    assert answer.error == ErrorCode.BAD_ARGUMENT and answer.arg.macs == ()


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shelf": 0xFFFF, "slot": 1, "size_sectors": 1},
        {"shelf": 0, "slot": 0xFF, "size_sectors": 1},
        {"shelf": -1, "slot": 0, "size_sectors": 1},
        {"shelf": 0, "slot": 0, "size_sectors": 0},
        {"shelf": 0, "slot": 0, "size_sectors": (1 << 48) + 1},
        {"shelf": 0, "slot": 0, "size_sectors": 1, "config_string": bytes(1025)},
        {"shelf": 0, "slot": 0, "size_sectors": 1, "allowed_macs": frozenset()},
        {"shelf": 0, "slot": 0, "size_sectors": 1, "allowed_macs": frozenset({"nope"})},
        {"shelf": 0, "slot": 0, "size_sectors": 1, "serial": "x" * 21},
    ],
)
def test_invalid_exports(kwargs: dict) -> None:
    with pytest.raises(AoeConfigError):
        Export(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_mac": "01:00:5e:00:00:01"},
        {"target_mac": "garbage"},
        {"max_sectors_per_frame": 0},
        {"max_sectors_per_frame": 256},
        {"buffer_count": 0x10000},
    ],
)
def test_invalid_responders(kwargs: dict) -> None:
    args = {"target_mac": TARGET, "max_sectors_per_frame": 2, **kwargs}
    with pytest.raises(AoeConfigError):
        Responder({Export(0, 1, 1): MemoryBlockStore(512)}, **args)


def test_duplicate_export_address() -> None:
    stores = {Export(0, 1, 1): MemoryBlockStore(512), Export(0, 1, 2): MemoryBlockStore(1024)}
    with pytest.raises(AoeConfigError):
        Responder(stores, target_mac=TARGET, max_sectors_per_frame=2)


# --- property: the disk behaves like a byte array ---------------------------------------------

operations = st.lists(
    st.tuples(st.integers(0, SIZE - 1), st.integers(1, 2), st.binary(min_size=1, max_size=1)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(operations, st.booleans())
def test_random_writes_then_reads_match_a_model(ops, ext) -> None:
    r, _ = make()
    model = bytearray(SIZE * 512)
    for lba, count, fill in ops:
        count = min(count, SIZE - lba)
        data = (fill + bytes([lba & 0xFF])) * (count * 256)
        assert one(r, write(lba, data, ext=ext)).arg.cmd_status == STATUS_DRDY
        model[lba * 512 : (lba + count) * 512] = data
    for lba in range(0, SIZE, 2):
        assert one(r, read(lba, 2, ext=ext)).arg.data == model[lba * 512 : (lba + 2) * 512]
