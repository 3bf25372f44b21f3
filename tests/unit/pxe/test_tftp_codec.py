"""Tests for cloudctl.pxe.tftp.codec: every packet type both ways and every malformed-input path."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudctl.pxe.tftp.codec import (
    MAX_BLKSIZE,
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
    encode_ack,
    encode_data,
    encode_error,
)

# -- well-formed packets: exact wire bytes -------------------------------------------------------

WIRE_EXAMPLES = [
    (ReadRequest("pxelinux.0", "octet"), b"\x00\x01pxelinux.0\x00octet\x00"),
    (
        ReadRequest("pxelinux.0", "octet", {"blksize": "1468", "tsize": "0"}),
        b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00",
    ),
    (WriteRequest("upload.bin", "octet"), b"\x00\x02upload.bin\x00octet\x00"),
    (
        WriteRequest("upload.bin", "netascii", {"windowsize": "8"}),
        b"\x00\x02upload.bin\x00netascii\x00windowsize\x008\x00",
    ),
    (Data(1, b"hello"), b"\x00\x03\x00\x01hello"),
    (Data(0, b""), b"\x00\x03\x00\x00"),
    (Data(65535, b"x"), b"\x00\x03\xff\xffx"),
    (Ack(0), b"\x00\x04\x00\x00"),
    (Ack(65535), b"\x00\x04\xff\xff"),
    (Error(ErrorCode.FILE_NOT_FOUND, "no such file"), b"\x00\x05\x00\x01no such file\x00"),
    (Error(ErrorCode.NOT_DEFINED, ""), b"\x00\x05\x00\x00\x00"),
    (Error(42, "custom"), b"\x00\x05\x00\x2acustom\x00"),
    (OptionAck({"blksize": "1468"}), b"\x00\x06blksize\x001468\x00"),
    (
        OptionAck({"tsize": "1024", "windowsize": "16"}),
        b"\x00\x06tsize\x001024\x00windowsize\x0016\x00",
    ),
]


@pytest.mark.parametrize(("packet", "wire"), WIRE_EXAMPLES)
def test_encode_produces_exact_wire_bytes(packet, wire):
    assert encode(packet) == wire


@pytest.mark.parametrize(("packet", "wire"), WIRE_EXAMPLES)
def test_decode_parses_exact_wire_bytes(packet, wire):
    assert decode(wire) == packet


def test_decode_accepts_bytearray_and_memoryview():
    wire = b"\x00\x03\x00\x07abc"
    assert decode(bytearray(wire)) == Data(7, b"abc")
    assert decode(memoryview(wire)) == Data(7, b"abc")


def test_request_mode_and_option_names_are_lowercased_but_filename_is_not():
    packet = decode(b"\x00\x01PXELinux.0\x00OCTET\x00BlkSize\x001468\x00TSIZE\x000\x00")
    assert packet == ReadRequest("PXELinux.0", "octet", {"blksize": "1468", "tsize": "0"})


def test_request_options_keep_client_order():
    packet = decode(b"\x00\x01f\x00octet\x00tsize\x000\x00blksize\x00512\x00timeout\x003\x00")
    assert isinstance(packet, ReadRequest)
    assert list(packet.options) == ["tsize", "blksize", "timeout"]


def test_request_option_values_are_kept_verbatim():
    packet = decode(b"\x00\x01f\x00octet\x00blksize\x00 0512x\x00")
    assert packet.options == {"blksize": " 0512x"}


def test_request_trailing_nul_padding_is_tolerated():
    assert decode(b"\x00\x01pxelinux.0\x00octet\x00\x00\x00\x00") == ReadRequest("pxelinux.0")


def test_error_codes_decode_to_enum_members_when_known():
    packet = decode(b"\x00\x05\x00\x08refused\x00")
    assert packet == Error(ErrorCode.OPTION_REFUSED, "refused")
    assert isinstance(packet.code, ErrorCode)
    unknown = decode(b"\x00\x05\x01\x00x\x00")
    assert unknown.code == 256 and not isinstance(unknown.code, ErrorCode)


def test_error_message_with_non_ascii_bytes_is_decoded_with_replacement():
    packet = decode(b"\x00\x05\x00\x00caf\xc3\xa9\x00")
    assert isinstance(packet, Error)
    assert packet.message.startswith("caf") and "\ufffd" in packet.message


def test_error_code_values_follow_rfc():
    assert [int(code) for code in ErrorCode] == list(range(9))
    assert ErrorCode.ACCESS_VIOLATION == 2
    assert ErrorCode.ILLEGAL_OPERATION == 4
    assert ErrorCode.OPTION_REFUSED == 8


def test_data_payload_of_max_blksize_round_trips():
    payload = bytes(range(256)) * (MAX_BLKSIZE // 256) + b"\x00" * (MAX_BLKSIZE % 256)
    assert decode(encode(Data(9, payload))) == Data(9, payload)


def test_encode_helpers_match_encode():
    assert encode_data(3, memoryview(b"abc")) == encode(Data(3, b"abc"))
    assert encode_ack(5) == encode(Ack(5))
    assert encode_error(ErrorCode.ACCESS_VIOLATION, "x") == encode(Error(2, "x"))


def test_encode_error_replaces_non_ascii_and_nul():
    assert encode_error(0, "caf\u00e9\x00!") == b"\x00\x05\x00\x00caf??!\x00"


# -- malformed input: always TftpCodecError ------------------------------------------------------

MALFORMED = {
    "empty": b"",
    "one byte": b"\x00",
    "opcode 0": b"\x00\x00abc\x00",
    "opcode 7": b"\x00\x07abc\x00",
    "opcode 0xffff": b"\xff\xff\x00\x01",
    "rrq without body": b"\x00\x01",
    "rrq missing final nul": b"\x00\x01file\x00octet",
    "rrq filename only": b"\x00\x01file\x00",
    "rrq empty filename": b"\x00\x01\x00octet\x00",
    "rrq empty mode": b"\x00\x01file\x00\x00blksize\x00512\x00",
    "rrq non-ascii filename": b"\x00\x01f\xc3\xa9\x00octet\x00",
    "rrq non-ascii option": b"\x00\x01f\x00octet\x00blksize\x00\xff\x00",
    "rrq option without value": b"\x00\x01f\x00octet\x00blksize\x00",
    "rrq option with empty value": b"\x00\x01f\x00octet\x00blksize\x00\x00tsize\x000\x00",
    "rrq empty option name": b"\x00\x01f\x00octet\x00\x00512\x00",
    "rrq duplicated option": b"\x00\x01f\x00octet\x00blksize\x00512\x00blksize\x001024\x00",
    "rrq duplicated option other case": b"\x00\x01f\x00octet\x00tsize\x000\x00TSize\x000\x00",
    "wrq missing final nul": b"\x00\x02file\x00oct",
    "wrq filename only": b"\x00\x02file\x00",
    "data 3 bytes": b"\x00\x03\x00",
    "data 2 bytes": b"\x00\x03",
    "data payload too long": b"\x00\x03\x00\x01" + b"x" * (MAX_BLKSIZE + 1),
    "ack 2 bytes": b"\x00\x04",
    "ack 3 bytes": b"\x00\x04\x00",
    "ack 5 bytes": b"\x00\x04\x00\x01\x00",
    "error 4 bytes": b"\x00\x05\x00\x01",
    "error missing nul": b"\x00\x05\x00\x01oops",
    "error bytes after nul": b"\x00\x05\x00\x01oops\x00more\x00",
    "oack empty": b"\x00\x06",
    "oack only nul": b"\x00\x06\x00",
    "oack option without value": b"\x00\x06blksize\x00",
    "oack missing final nul": b"\x00\x06blksize\x00512",
    "oack duplicated option": b"\x00\x06tsize\x001\x00tsize\x002\x00",
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_decode_rejects_malformed_datagrams(wire):
    with pytest.raises(TftpCodecError):
        decode(wire)


def test_codec_error_is_a_value_error():
    assert issubclass(TftpCodecError, ValueError)


UNENCODABLE = {
    "data block negative": Data(-1, b""),
    "data block 65536": Data(65536, b""),
    "data payload too long": Data(1, b"x" * (MAX_BLKSIZE + 1)),
    "ack block 65536": Ack(65536),
    "error code 65536": Error(65536, ""),
    "error code negative": Error(-1, ""),
    "rrq empty filename": ReadRequest(""),
    "rrq empty mode": ReadRequest("f", ""),
    "rrq non-ascii filename": ReadRequest("caf\u00e9"),
    "rrq nul in filename": ReadRequest("a\x00b"),
    "rrq nul in mode": ReadRequest("f", "oct\x00et"),
    "rrq empty option name": ReadRequest("f", "octet", {"": "1"}),
    "rrq empty option value": ReadRequest("f", "octet", {"blksize": ""}),
    "rrq option names equal ignoring case": ReadRequest("f", "octet", {"a": "1", "A": "2"}),
    "wrq nul in option": WriteRequest("f", "octet", {"blk\x00size": "1"}),
    "oack empty": OptionAck({}),
    "oack non-ascii value": OptionAck({"tsize": "\u0663"}),
}


@pytest.mark.parametrize("packet", UNENCODABLE.values(), ids=UNENCODABLE.keys())
def test_encode_rejects_values_the_wire_cannot_carry(packet):
    with pytest.raises(TftpCodecError):
        encode(packet)


def test_encode_rejects_non_packets():
    with pytest.raises(TftpCodecError):
        encode("not a packet")  # type: ignore[arg-type]


# -- property: decode(encode(p)) == p ------------------------------------------------------------

_ascii_text = st.text(
    alphabet=st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=30
)
_option_names = _ascii_text.map(str.lower)
_options = st.dictionaries(_option_names, _ascii_text, max_size=6)
_u16 = st.integers(0, 0xFFFF)

packets = st.one_of(
    st.builds(ReadRequest, _ascii_text, _ascii_text.map(str.lower), _options),
    st.builds(WriteRequest, _ascii_text, _ascii_text.map(str.lower), _options),
    st.builds(Data, _u16, st.binary(max_size=2000)),
    st.builds(Ack, _u16),
    st.builds(Error, _u16, st.text(st.characters(min_codepoint=1, max_codepoint=127))),
    st.builds(OptionAck, st.dictionaries(_option_names, _ascii_text, min_size=1, max_size=6)),
)


@given(packets)
def test_decode_inverts_encode(packet):
    assert decode(encode(packet)) == packet
