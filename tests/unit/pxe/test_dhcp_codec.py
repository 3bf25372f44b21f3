"""Unit tests for cloudctl.pxe.dhcp.codec and .options: real client packets, RFC corner cases
and every DhcpCodecError path (generated-input tests are in test_dhcp_fuzz.py)."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address

import pytest

from cloudctl.pxe.dhcp.codec import (
    BROADCAST_FLAG,
    BootOp,
    DhcpCodecError,
    DhcpMessage,
    DhcpOptions,
    MessageType,
    OptionCode,
    chaddr_for_mac,
    decode,
    encode,
    encoded_size,
    reply_size_limit,
    reply_to,
)
from cloudctl.pxe.dhcp.options import (
    IPXE_NO_PXEDHCP,
    ClientNdi,
    IpxeOption,
    decode_encapsulated,
    decode_user_classes,
    describe_option,
    encode_client_architectures,
    encode_code_list,
    encode_encapsulated,
    encode_ipv4,
    encode_ipv4_list,
    encode_text,
    encode_u8,
    encode_u16,
    encode_u32,
    encode_user_classes,
    option_wire_size,
)


def packet(*hex_parts: str, pad_to: int = 0) -> bytes:
    """Join hex fragments (spaces allowed) into bytes, zero-padded to `pad_to`."""
    return bytes.fromhex(" ".join(hex_parts)).ljust(pad_to, b"\x00")


def zeros(count: int) -> str:
    return "00" * count


def text(value: str) -> str:
    return value.encode().hex()


def field(size: int, *hex_parts: str) -> str:
    """Hex for a fixed-size header field holding `hex_parts`, zero-filled."""
    return packet(*hex_parts, pad_to=size).hex()


# --- byte-exact DISCOVERs as real clients send them ---

# busybox udhcpc 1.36: client id 61 by default, 57 = 576 (the whole IP datagram), PRL, vendor
# class "udhcp 1.36.1"; the packet is trimmed to the 300-byte BOOTP minimum.
UDHCPC_DISCOVER = packet(
    "01 01 06 00",  # op BOOTREQUEST, htype Ethernet, hlen 6, hops 0
    "3d 1f 4a 9c",  # xid
    "00 00 00 00",  # secs 0, flags 0 (unicast replies are fine)
    zeros(16),  # ciaddr yiaddr siaddr giaddr
    "52 54 00 12 34 56",
    zeros(10),  # chaddr
    zeros(64 + 128),  # sname, file
    "63 82 53 63",  # magic cookie
    "35 01 01",  # 53 DHCPDISCOVER
    "3d 07 01 52 54 00 12 34 56",  # 61 client id: htype 1 + MAC
    "39 02 02 40",  # 57 max message size 576
    "37 07 01 03 06 0c 0f 1c 2a",  # 55 PRL
    "3c 0c " + text("udhcp 1.36.1"),  # 60 vendor class
    "ff",
    pad_to=300,
)

# ISC dhclient 4.4 (Debian): re-requests its old address (50), sends its hostname (12) and the
# default dhclient.conf request list; padded to 300 bytes.
DHCLIENT_DISCOVER = packet(
    "01 01 06 00",
    "5e 1c 2a 07",  # xid
    "00 03 00 00",  # secs 3, flags 0
    zeros(16),
    "52 54 00 ab cd ef",
    zeros(10),
    zeros(64 + 128),
    "63 82 53 63",
    "35 01 01",
    "32 04 c0 a8 7a 0a",  # 50 requested 192.168.122.10
    "0c 05 " + text("node3"),  # 12 hostname
    "37 0d 01 1c 02 03 0f 06 77 0c 2c 2f 1a 79 2a",  # 55 PRL
    "ff",
    pad_to=300,
)

IPXE_FEATURES = packet(
    "b1 05 01 1a f4 10 00",  # 177 bus id: PCI 1af4:1000 (virtio-net)
    "eb 03 01 00 00",  # 235 version 1.0.0
    "17 01 01",  # DNS
    "13 01 01",  # HTTP
    "11 01 01",  # iSCSI
    "12 01 01",  # AoE
    "15 01 01",  # TFTP
    "22 01 01",  # ELF
    "19 01 01",  # multiboot
    "18 01 01",  # bzImage
    "27 01 01",  # menu
    "23 01 01",  # COMBOOT
)
MACHINE_GUID = bytes.fromhex("5b0c3a1e2f4d4e6a8b9c0d1e2f3a4b5c")

# qemu's iPXE ROM (BIOS): broadcast flag, 57 = 1472 (payload only), 93 = 0, 94 UNDI 2.1, PXE
# vendor class, bare user class "iPXE", 175 feature markers, 61, 97; not padded.
IPXE_DISCOVER = packet(
    "01 01 06 00",
    "8c 2d 1a 3b",  # xid
    "00 00 80 00",  # secs 0, flags BROADCAST
    zeros(16),
    "52 54 00 12 34 56",
    zeros(10),
    zeros(64 + 128),
    "63 82 53 63",
    "35 01 01",
    "39 02 05 c0",  # 57: 1472
    "5d 02 00 00",  # 93: BIOS x86
    "5e 03 01 02 01",  # 94: UNDI 2.1
    "3c 20 " + text("PXEClient:Arch:00000:UNDI:002001"),  # 60
    "4d 04 " + text("iPXE"),  # 77, bare (not RFC 3004)
    "37 17 01 03 06 07 0c 0f 11 1a 2b 3c 42 43 77 80 81 82 83 84 85 86 87 af cb",  # 55
    f"af {len(IPXE_FEATURES):02x} {IPXE_FEATURES.hex()}",  # 175
    "3d 07 01 52 54 00 12 34 56",  # 61
    "61 11 00 " + MACHINE_GUID.hex(),  # 97: type 0 + GUID
    "ff",
)

# A DHCPREQUEST forwarded by a relay: giaddr set, hops 1, option 82 appended last.
RELAY_INFO = packet("01 06", text("eth0/7"), "02 08 00 06 52 54 00 99 88 77")
RELAYED_REQUEST = packet(
    "01 01 06 01",  # hops 1
    "11 22 33 44",
    "00 00 00 00",
    zeros(12),
    "0a 01 00 01",  # giaddr 10.1.0.1
    "52 54 00 12 34 56",
    zeros(10),
    zeros(64 + 128),
    "63 82 53 63",
    "35 01 03",
    "32 04 0a 01 00 32",  # 50 requested 10.1.0.50
    "36 04 0a 00 00 01",  # 54 server id 10.0.0.1
    "37 04 01 03 06 2a",
    f"52 {len(RELAY_INFO):02x} {RELAY_INFO.hex()}",
    "ff",
    pad_to=300,
)

# An ACK using option overload 3: hostname split across options, file and sname (RFC 3396 joins
# them in that order: "abc" + "def" + "gh"), bootfile in the file field, TFTP server in sname.
OVERLOADED_ACK = packet(
    "02 01 06 00",
    "01 02 03 04",
    "00 00 00 00",
    "00 00 00 00",
    "0a 00 00 32",  # yiaddr 10.0.0.50
    "0a 00 00 01",  # siaddr
    "00 00 00 00",
    "52 54 00 12 34 56",
    zeros(10),
    field(64, "0c 02", text("gh"), "42 04", text("tftp"), "ff"),  # sname: options
    field(128, "0c 03", text("def"), "43 08", text("boot.efi"), "ff"),  # file: options
    "63 82 53 63",
    "35 01 05",
    "34 01 03",  # 52 overload: file and sname
    "36 04 0a 00 00 01",
    "33 04 00 00 0e 10",
    "0c 03 " + text("abc"),
    "ff",
    pad_to=300,
)


def test_fixture_sizes_are_what_the_clients_send() -> None:
    assert len(UDHCPC_DISCOVER) == 300
    assert len(DHCLIENT_DISCOVER) == 300
    assert len(IPXE_DISCOVER) == 240 + 3 + 4 + 4 + 5 + 34 + 6 + 25 + 44 + 9 + 19 + 1
    assert len(OVERLOADED_ACK) == 300
    assert OVERLOADED_ACK[44 : 44 + 64].endswith(b"\x00")
    assert OVERLOADED_ACK[108 : 108 + 128].endswith(b"\x00")


def test_decode_udhcpc_discover() -> None:
    msg = decode(UDHCPC_DISCOVER)
    assert msg.op is BootOp.REQUEST
    assert (msg.htype, msg.hlen, msg.hops) == (1, 6, 0)
    assert msg.xid == 0x3D1F4A9C
    assert (msg.secs, msg.flags, msg.broadcast) == (0, 0, False)
    assert msg.ciaddr == msg.yiaddr == msg.siaddr == msg.giaddr == IPv4Address("0.0.0.0")
    assert msg.chaddr == bytes.fromhex("525400123456") + bytes(10)
    assert msg.mac == "52:54:00:12:34:56"
    assert (msg.sname, msg.file) == (b"", b"")
    assert list(msg.options) == [53, 61, 57, 55, 60]
    assert msg.message_type is MessageType.DHCPDISCOVER
    assert msg.client_id == bytes.fromhex("01525400123456")
    assert msg.max_message_size == 576
    assert msg.parameter_request_list == (1, 3, 6, 12, 15, 28, 42)
    assert msg.vendor_class_id == b"udhcp 1.36.1"
    assert msg.client_architectures is None
    assert msg.user_classes is None
    assert msg.ipxe_options is None
    assert msg.hostname is None
    assert reply_size_limit(msg) == 548


def test_decode_dhclient_discover() -> None:
    msg = decode(DHCLIENT_DISCOVER)
    assert msg.xid == 0x5E1C2A07
    assert msg.secs == 3
    assert msg.mac == "52:54:00:ab:cd:ef"
    assert list(msg.options) == [53, 50, 12, 55]
    assert msg.message_type is MessageType.DHCPDISCOVER
    assert msg.requested_ip == IPv4Address("192.168.122.10")
    assert msg.hostname == "node3"
    assert msg.parameter_request_list == (1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42)
    assert msg.client_id is None
    assert msg.max_message_size is None
    assert reply_size_limit(msg) == 548


def test_decode_ipxe_discover() -> None:
    msg = decode(IPXE_DISCOVER)
    assert msg.op is BootOp.REQUEST
    assert msg.xid == 0x8C2D1A3B
    assert msg.flags == BROADCAST_FLAG and msg.broadcast
    assert msg.mac == "52:54:00:12:34:56"
    assert list(msg.options) == [53, 57, 93, 94, 60, 77, 55, 175, 61, 97]
    assert msg.message_type is MessageType.DHCPDISCOVER
    assert msg.max_message_size == 1472
    assert msg.client_architectures == (0,)
    assert msg.client_ndi == ClientNdi(interface_type=1, major=2, minor=1)
    assert msg.vendor_class_id == b"PXEClient:Arch:00000:UNDI:002001"
    assert msg.user_classes == (b"iPXE",)
    assert msg.client_id == bytes.fromhex("01525400123456")
    assert msg.client_machine_id == MACHINE_GUID
    assert msg.parameter_request_list is not None and 175 in msg.parameter_request_list
    ipxe = msg.ipxe_options
    assert ipxe is not None
    assert ipxe[IpxeOption.BUS_ID] == bytes.fromhex("011af41000")
    assert ipxe[IpxeOption.VERSION] == b"\x01\x00\x00"
    for feature in (IpxeOption.FEATURE_HTTP, IpxeOption.FEATURE_AOE, IpxeOption.FEATURE_TFTP):
        assert ipxe[feature] == b"\x01"
    assert len(ipxe) == 12
    assert reply_size_limit(msg) == 1444


def test_decode_relayed_request_and_echo_option_82_byte_for_byte() -> None:
    request = decode(RELAYED_REQUEST)
    assert request.hops == 1
    assert request.giaddr == IPv4Address("10.1.0.1")
    assert request.message_type is MessageType.DHCPREQUEST
    assert request.requested_ip == IPv4Address("10.1.0.50")
    assert request.server_id == IPv4Address("10.0.0.1")
    assert request.relay_agent_info == RELAY_INFO

    ack = reply_to(
        request,
        MessageType.DHCPACK,
        yiaddr="10.1.0.50",
        options={
            OptionCode.SERVER_ID: encode_ipv4("10.0.0.1"),
            OptionCode.LEASE_TIME: encode_u32(3600),
        },
    )
    wire = encode(ack)
    option_82 = bytes((82, len(RELAY_INFO))) + RELAY_INFO
    assert wire[240:].rstrip(b"\x00").endswith(option_82 + b"\xff")
    assert list(ack.options) == [53, 54, 51, 82]
    assert ack.giaddr == IPv4Address("10.1.0.1")
    assert ack.hops == 0
    decoded = decode(wire)
    assert decoded == ack
    assert decoded.relay_agent_info == RELAY_INFO


def test_reply_to_copies_header_fields() -> None:
    request = decode(IPXE_DISCOVER)
    offer = reply_to(
        request,
        MessageType.DHCPOFFER,
        yiaddr=IPv4Address("10.0.0.50"),
        siaddr="10.0.0.1",
        file=b"undionly.kpxe",
        options=[(OptionCode.SERVER_ID, encode_ipv4("10.0.0.1"))],
    )
    assert offer.op is BootOp.REPLY
    assert (offer.xid, offer.flags, offer.htype, offer.hlen) == (request.xid, 0x8000, 1, 6)
    assert offer.chaddr == request.chaddr
    assert offer.yiaddr == IPv4Address("10.0.0.50")
    assert offer.siaddr == IPv4Address("10.0.0.1")
    assert offer.ciaddr == IPv4Address("0.0.0.0")
    assert offer.file == b"undionly.kpxe"
    assert offer.message_type is MessageType.DHCPOFFER
    assert offer.relay_agent_info is None
    assert list(offer.options) == [53, 54]


def test_reply_to_copies_ciaddr_only_for_ack() -> None:
    renewing = DhcpMessage(
        ciaddr=IPv4Address("10.0.0.50"),
        options={OptionCode.MESSAGE_TYPE: encode_u8(MessageType.DHCPREQUEST)},
    )
    assert reply_to(renewing, MessageType.DHCPACK).ciaddr == IPv4Address("10.0.0.50")
    assert reply_to(renewing, MessageType.DHCPNAK).ciaddr == IPv4Address("0.0.0.0")


def test_encoded_reply_starts_with_message_type_and_is_padded() -> None:
    reply = reply_to(decode(UDHCPC_DISCOVER), MessageType.DHCPOFFER)
    wire = encode(reply)
    assert len(wire) == 300
    assert wire[236:240] == bytes((99, 130, 83, 99))
    assert wire[240:244] == b"\x35\x01\x02\xff"


def test_decode_overloaded_file_and_sname() -> None:
    msg = decode(OVERLOADED_ACK)
    assert msg.op is BootOp.REPLY
    assert msg.message_type is MessageType.DHCPACK
    assert msg.yiaddr == IPv4Address("10.0.0.50")
    assert msg.hostname == "abcdefgh"
    assert msg.bootfile_name == "boot.efi"
    assert msg.tftp_server_name == "tftp"
    assert msg.lease_time == 3600
    assert msg.server_id == IPv4Address("10.0.0.1")
    # The fields carried options, not names; option 52 is framing and is consumed.
    assert (msg.sname, msg.file) == (b"", b"")
    assert OptionCode.OVERLOAD not in msg.options
    assert list(msg.options) == [53, 54, 51, 12, 67, 66]
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize(("flag", "fields"), [(1, ("file",)), (2, ("sname",))])
def test_overload_of_one_field_leaves_the_other_as_a_name(flag: int, fields: tuple[str]) -> None:
    data = bytearray(OVERLOADED_ACK)
    data[240 + 3 + 2] = flag  # value byte of option 52
    if flag == 1:
        data[44:48] = b"srv\x00"
    else:
        data[108:113] = b"x.efi"
        data[113] = 0
    msg = decode(bytes(data))
    if flag == 1:
        assert msg.sname == b"srv"
        assert msg.hostname == "abcdef"
        assert msg.bootfile_name == "boot.efi"
    else:
        assert msg.file == b"x.efi"
        assert msg.hostname == "abcgh"
        assert msg.tftp_server_name == "tftp"


def test_sname_and_file_are_c_strings() -> None:
    data = bytearray(UDHCPC_DISCOVER)
    data[44:53] = b"srv\x00junk!"
    data[108:126] = b"pxelinux.0\x00garbage"
    msg = decode(bytes(data))
    assert (msg.sname, msg.file) == (b"srv", b"pxelinux.0")
    full = bytearray(UDHCPC_DISCOVER)
    full[108:236] = b"f" * 128  # no NUL at all: the whole field is the name
    assert decode(bytes(full)).file == b"f" * 128


def test_split_option_is_concatenated_in_order_rfc3396() -> None:
    wire = packet(
        "01 01 06 00",
        zeros(8),
        zeros(16),
        zeros(16),
        zeros(192),
        "63 82 53 63",
        "0c 03 " + text("abc"),
        "35 01 01",
        "0c 02 " + text("de"),
        "00 00",  # pads between instances are allowed
        "0c 00",  # an empty instance contributes nothing
        "0c 01 " + text("f"),
        "ff",
    )
    msg = decode(wire)
    assert msg.hostname == "abcdef"
    assert list(msg.options) == [12, 53]


def test_long_option_is_split_into_255_byte_instances_rfc3396() -> None:
    value = bytes(range(256)) * 2 + b"tail"  # 516 bytes
    wire = encode(DhcpMessage(options={43: value}))
    body = wire[240:]
    assert body[0:2] == bytes((43, 255))
    assert body[2:257] == value[:255]
    assert body[257:259] == bytes((43, 255))
    assert body[259:514] == value[255:510]
    assert body[514:516] == bytes((43, 6))
    assert body[516:522] == value[510:]
    assert body[522] == 255
    assert len(wire) == 240 + 523
    assert decode(wire).options[43] == value


def test_empty_option_value_round_trips() -> None:
    msg = DhcpMessage(options={80: b""})  # rapid commit is zero-length
    wire = encode(msg)
    assert wire[240:243] == b"\x50\x00\xff"
    assert decode(wire) == msg


def test_missing_end_option_is_tolerated() -> None:
    wire = packet("01 01 06 00", zeros(8 + 16 + 16 + 192), "63 82 53 63", "35 01 01")
    assert decode(wire).message_type is MessageType.DHCPDISCOVER


def test_bytes_after_end_are_ignored() -> None:
    wire = UDHCPC_DISCOVER[:-5] + b"\x0c\x09abc"  # junk in the padding after END
    assert decode(wire) == decode(UDHCPC_DISCOVER)


def test_decode_accepts_bytearray_and_memoryview() -> None:
    assert decode(bytearray(IPXE_DISCOVER)) == decode(memoryview(IPXE_DISCOVER))


def test_encode_orders_message_type_first_and_relay_info_last() -> None:
    msg = DhcpMessage(options=[(82, b"\x01\x01x"), (12, b"n"), (53, b"\x03"), (61, b"\x01a")])
    wire = encode(msg)
    assert wire[240:].startswith(b"\x35\x01\x03\x0c\x01n\x3d\x02\x01a\x52\x03\x01\x01x\xff")
    assert list(decode(wire).options) == [53, 12, 61, 82]


def test_byte_exact_reencode_of_client_packets() -> None:
    # udhcpc and dhclient already use our layout (53 first, END, 300-byte pad).
    assert encode(decode(UDHCPC_DISCOVER)) == UDHCPC_DISCOVER
    assert encode(decode(DHCLIENT_DISCOVER)) == DHCLIENT_DISCOVER
    assert encode(decode(IPXE_DISCOVER)) == IPXE_DISCOVER.ljust(300, b"\x00")


# --- option values ---


def test_value_encoders() -> None:
    assert encode_u8(5) == b"\x05"
    assert encode_u16(1472) == b"\x05\xc0"
    assert encode_u32(3600) == b"\x00\x00\x0e\x10"
    assert encode_ipv4("10.0.0.1") == b"\x0a\x00\x00\x01"
    assert encode_ipv4_list(["10.0.0.1", IPv4Address("10.0.0.2")]) == bytes.fromhex(
        "0a0000010a000002"
    )
    assert encode_text("node-1.cloud.test") == b"node-1.cloud.test"
    assert encode_code_list([1, 3, 6]) == b"\x01\x03\x06"
    assert encode_user_classes([b"iPXE", b"x"]) == b"\x04iPXE\x01x"
    assert encode_client_architectures([7, 0x10]) == b"\x00\x07\x00\x10"
    assert IPXE_NO_PXEDHCP == b"\xb0\x01\x01"
    assert encode_encapsulated({1: b"\x05", 176: b"\x01"}) == b"\x01\x01\x05\xb0\x01\x01"


def test_typed_accessors_on_a_full_offer() -> None:
    options = {
        OptionCode.MESSAGE_TYPE: encode_u8(MessageType.DHCPOFFER),
        OptionCode.SERVER_ID: encode_ipv4("10.0.0.1"),
        OptionCode.LEASE_TIME: encode_u32(86400),
        OptionCode.RENEWAL_TIME: encode_u32(43200),
        OptionCode.REBINDING_TIME: encode_u32(75600),
        OptionCode.SUBNET_MASK: encode_ipv4("255.255.255.0"),
        OptionCode.ROUTER: encode_ipv4_list(["10.0.0.254"]),
        OptionCode.DNS_SERVERS: encode_ipv4_list(["10.0.0.1", "9.9.9.9"]),
        OptionCode.HOSTNAME: encode_text("node-7"),
        OptionCode.DOMAIN_NAME: encode_text("cloud.test"),
        OptionCode.MESSAGE: encode_text("hello"),
        OptionCode.TFTP_SERVER_NAME: encode_text("10.0.0.1"),
        OptionCode.BOOTFILE_NAME: encode_text("http://10.0.0.1/boot/ipxe/52:54:00:12:34:56"),
        OptionCode.IPXE_ENCAP: IPXE_NO_PXEDHCP,
        OptionCode.USER_CLASS: encode_user_classes([b"a", b"bc"]),
    }
    msg = decode(encode(DhcpMessage(op=BootOp.REPLY, options=options)))
    assert msg.message_type is MessageType.DHCPOFFER
    assert msg.server_id == IPv4Address("10.0.0.1")
    assert (msg.lease_time, msg.renewal_time, msg.rebinding_time) == (86400, 43200, 75600)
    assert msg.subnet_mask == IPv4Address("255.255.255.0")
    assert msg.routers == (IPv4Address("10.0.0.254"),)
    assert msg.dns_servers == (IPv4Address("10.0.0.1"), IPv4Address("9.9.9.9"))
    assert (msg.hostname, msg.domain_name, msg.message) == ("node-7", "cloud.test", "hello")
    assert msg.tftp_server_name == "10.0.0.1"
    assert msg.bootfile_name == "http://10.0.0.1/boot/ipxe/52:54:00:12:34:56"
    assert msg.ipxe_options == DhcpOptions({IpxeOption.NO_PXEDHCP: b"\x01"})
    assert msg.user_classes == (b"a", b"bc")


@pytest.mark.parametrize(
    ("raw", "classes"),
    [
        (b"\x04iPXE", (b"iPXE",)),  # RFC 3004
        (b"iPXE", (b"iPXE",)),  # bare string, as iPXE sends it
        (b"\x01a\x02bc", (b"a", b"bc")),
        (b"\x01a\x05bc", (b"\x01a\x05bc",)),  # prefixes do not tile: one bare class
        (b"\x00abc", (b"\x00abc",)),  # zero-length class is not RFC 3004
        (b"", ()),
    ],
)
def test_user_class_forms(raw: bytes, classes: tuple[bytes, ...]) -> None:
    assert decode_user_classes(raw) == classes


def test_text_options_drop_trailing_nuls() -> None:
    msg = DhcpMessage(options={OptionCode.HOSTNAME: b"win-pc\x00"})
    assert msg.hostname == "win-pc"


def test_chaddr_and_mac() -> None:
    assert chaddr_for_mac("52-54-00-AB-CD-EF") == bytes.fromhex("525400abcdef") + bytes(10)
    msg = DhcpMessage(chaddr=bytes.fromhex("525400abcdef"))  # short chaddr is zero-padded
    assert msg.chaddr == bytes.fromhex("525400abcdef") + bytes(10)
    assert msg.mac == "52:54:00:ab:cd:ef"
    assert DhcpMessage(hlen=0).mac == ""
    infiniband = DhcpMessage(htype=32, hlen=16, chaddr=bytes(range(16)))
    assert infiniband.mac == ":".join(f"{i:02x}" for i in range(16))


def test_options_mapping_behaviour() -> None:
    options = DhcpOptions([(12, b"a"), (53, b"\x01")])
    assert list(options) == [12, 53]
    assert options == DhcpOptions({53: b"\x01", 12: b"a"})  # order-insensitive, like dict
    assert hash(options) == hash(DhcpOptions({53: b"\x01", 12: b"a"}))
    assert list(options.replacing(12, b"b").items()) == [(12, b"b"), (53, b"\x01")]
    assert list(options.replacing(1, b"x")) == [12, 53, 1]
    assert list(options.without(12, 99)) == [53]
    assert DhcpOptions.joining([(12, b"a"), (1, b"m"), (12, b"b")]) == {12: b"ab", 1: b"m"}
    assert "12: b'a'" in repr(options)
    assert describe_option(50) == "option 50 (requested ip)"
    assert describe_option(200) == "option 200"
    assert option_wire_size(b"") == 2
    assert option_wire_size(bytes(255)) == 257
    assert option_wire_size(bytes(256)) == 260


# --- maximum message size (57) ---


def request_with(max_size: int | None, requested: list[int]) -> DhcpMessage:
    options = {OptionCode.MESSAGE_TYPE: encode_u8(MessageType.DHCPDISCOVER)}
    if max_size is not None:
        options[OptionCode.MAX_MESSAGE_SIZE] = encode_u16(max_size)
    options[OptionCode.PARAMETER_REQUEST_LIST] = encode_code_list(requested)
    return DhcpMessage(options=options)


@pytest.mark.parametrize(
    ("advertised", "limit"), [(None, 548), (300, 548), (576, 548), (1500, 1472), (65535, 65507)]
)
def test_reply_size_limit(advertised: int | None, limit: int) -> None:
    assert reply_size_limit(request_with(advertised, [])) == limit


def test_malformed_max_size_falls_back_to_the_rfc_minimum() -> None:
    request = DhcpMessage(options={OptionCode.MAX_MESSAGE_SIZE: b"\x05"})
    assert reply_size_limit(request) == 548


def test_reply_drops_unrequested_options_last_first_to_fit() -> None:
    request = request_with(576, [1, 3, 43])
    offer = reply_to(
        request,
        MessageType.DHCPOFFER,
        options=[
            (OptionCode.SERVER_ID, encode_ipv4("10.0.0.1")),
            (OptionCode.LEASE_TIME, encode_u32(60)),
            (1, encode_ipv4("255.255.255.0")),
            (100, bytes(100)),  # unrequested, kept: fits once 101 is gone
            (43, bytes(150)),  # requested
            (101, bytes(200)),  # unrequested, added last: dropped first
        ],
    )
    assert list(offer.options) == [53, 54, 51, 1, 100, 43]
    assert len(encode(offer)) <= 548


def test_reply_refuses_when_requested_options_alone_are_too_big() -> None:
    request = request_with(None, [43])
    with pytest.raises(DhcpCodecError, match=r"reply needs \d+ bytes .* at most 548"):
        reply_to(request, MessageType.DHCPOFFER, options={43: bytes(400), 12: b"x"})


def test_reply_that_fits_is_untouched() -> None:
    request = decode(IPXE_DISCOVER)  # 1472 -> 1444 bytes allowed
    offer = reply_to(request, MessageType.DHCPOFFER, options={200: bytes(1000)})
    assert list(offer.options) == [53, 200]
    assert encoded_size(offer) == len(encode(offer))


# --- every DhcpCodecError path ---

HEADER = packet("01 01 06 00", zeros(8 + 16 + 16 + 192), "63 82 53 63")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"truncated message: 0 bytes, .* at least 240"),
        (UDHCPC_DISCOVER[:239], r"truncated message: 239 bytes"),
        (b"\x03" + UDHCPC_DISCOVER[1:], r"bad op 3"),
        (b"\x00" + UDHCPC_DISCOVER[1:], r"bad op 0"),
        (UDHCPC_DISCOVER[:2] + b"\x11" + UDHCPC_DISCOVER[3:], r"bad hlen 17"),
        (UDHCPC_DISCOVER[:236] + b"\x63\x82\x53\x64" + UDHCPC_DISCOVER[240:], r"bad magic cookie"),
        (UDHCPC_DISCOVER[:236], r"truncated message: 236 bytes"),
        (HEADER + b"\x35", r"truncated option 53 at byte 0 of the options field: no length byte"),
        (HEADER + b"\x35\x01\x01\x0c", r"truncated option 12 at byte 3 .*no length byte"),
        (HEADER + b"\x0c\x05abc", r"truncated option 12 at byte 0 .*length 5 but only 3"),
        (HEADER + b"\x0c\x05abcd", r"length 5 but only 4 bytes left"),
        (HEADER + b"\x34\x02\x01\x01", r"bad length: option 52 \(overload\) must be 1 byte, got 2"),
        (HEADER + b"\x34\x00", r"option 52 \(overload\) must be 1 byte, got 0"),
        (HEADER + b"\x34\x01\x04", r"bad option 52 \(overload\) value 4"),
        (HEADER + b"\x34\x01\x00", r"bad option 52 \(overload\) value 0"),
    ],
)
def test_decode_errors(data: bytes, message: str) -> None:
    with pytest.raises(DhcpCodecError, match=message):
        decode(data)


def _overloaded(sname: bytes, file: bytes, flag: int = 3) -> bytes:
    header = bytearray(HEADER)
    header[44 : 44 + len(sname)] = sname
    header[108 : 108 + len(file)] = file
    return bytes(header) + bytes((52, 1, flag, 255))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_overloaded(b"", b"\x0c\x7f" + b"a" * 126), r"the file field .*: length 127 but only 126"),
        (_overloaded(b"", bytes(127) + b"\x0c"), r"option 12 at byte 127 of the file field"),
        (_overloaded(b"\x0c\x3f", b""), r"truncated option 12 at byte 0 of the sname field"),
        (_overloaded(b"\x00" * 63 + b"\x0c", b""), r"byte 63 of the sname field .*no length"),
        (_overloaded(b"\x34\x01\x01", b""), r"option 52 \(overload\) inside the sname field"),
        (_overloaded(b"", b"\x34\x01\x02"), r"option 52 \(overload\) inside the file field"),
    ],
)
def test_decode_errors_in_overloaded_fields(data: bytes, message: str) -> None:
    with pytest.raises(DhcpCodecError, match=message):
        decode(data)


def test_overloaded_file_without_end_uses_the_whole_field() -> None:
    msg = decode(_overloaded(b"", b"\x0c\x7e" + b"a" * 126, flag=1))
    assert msg.hostname == "a" * 126


@pytest.mark.parametrize(
    ("code", "value", "accessor", "message"),
    [
        (53, b"", "message_type", r"option 53 \(message type\) must be 1 byte, got 0"),
        (53, b"\x01\x01", "message_type", r"must be 1 byte, got 2"),
        (53, b"\x09", "message_type", r"unknown DHCP message type 9"),
        (53, b"\x00", "message_type", r"unknown DHCP message type 0"),
        (50, b"\x0a\x00\x00", "requested_ip", r"option 50 \(requested ip\) must be 4 bytes, got 3"),
        (54, b"", "server_id", r"option 54 \(server id\) must be 4 bytes"),
        (51, b"\x00\x00\x0e", "lease_time", r"option 51 \(lease time\) must be 4 bytes"),
        (58, b"\x00", "renewal_time", r"option 58"),
        (59, b"\x00", "rebinding_time", r"option 59"),
        (1, b"\xff" * 5, "subnet_mask", r"option 1 \(subnet mask\)"),
        (3, b"\x0a" * 6, "routers", r"option 3 \(router\) must be a non-empty multiple of 4"),
        (6, b"", "dns_servers", r"option 6 .* multiple of 4 bytes, got 0"),
        (12, b"\xff\xfe", "hostname", r"option 12 \(hostname\) is not valid text"),
        (15, b"a\x80", "domain_name", r"option 15 \(domain name\) is not valid text"),
        (56, b"\xc3", "message", r"option 56"),
        (66, b"\xe2\x82", "tftp_server_name", r"option 66"),
        (67, b"\x80", "bootfile_name", r"option 67"),
        (57, b"\x05\xc0\x00", "max_message_size", r"option 57 .* must be 2 bytes, got 3"),
        (93, b"\x00", "client_architectures", r"option 93 .* multiple of 2 bytes, got 1"),
        (93, b"", "client_architectures", r"option 93 .* got 0"),
        (94, b"\x01\x02", "client_ndi", r"option 94 \(client ndi\) must be 3 bytes, got 2"),
        (97, bytes(16), "client_machine_id", r"option 97 .* must be 17 bytes, got 16"),
        (97, b"\x01" + bytes(16), "client_machine_id", r"option 97 .* has type 1"),
        (
            175,
            b"\xb0\x02\x01",
            "ipxe_options",
            r"truncated option 176 .* option 175 \(ipxe encap\)",
        ),
        (175, b"\xb0", "ipxe_options", r"truncated option 176 .* no length byte"),
    ],
)
def test_malformed_option_values(code: int, value: bytes, accessor: str, message: str) -> None:
    msg = decode(encode(DhcpMessage(options={code: value})))  # framing is fine, content is not
    with pytest.raises(DhcpCodecError, match=message):
        getattr(msg, accessor)


def test_encapsulated_options_accept_pad_and_end() -> None:
    assert decode_encapsulated(b"\x00\xb0\x01\x01\xff\x99", 175) == {176: b"\x01"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"op": 3}, r"bad op 3"),
        ({"hlen": 17}, r"bad hlen 17"),
        ({"htype": 256}, r"htype 256 does not fit in 8 bits"),
        ({"hops": -1}, r"hops -1"),
        ({"xid": 1 << 32}, r"xid \d+ does not fit in 32 bits"),
        ({"secs": 65536}, r"secs"),
        ({"flags": 1 << 16}, r"flags"),
        ({"chaddr": bytes(17)}, r"chaddr is 17 bytes"),
        ({"sname": b"s" * 65}, r"sname must be at most 64 bytes"),
        ({"file": b"f" * 129}, r"file must be at most 128 bytes"),
        ({"file": b"a\x00b"}, r"file must be at most 128 bytes with no NUL"),
        ({"giaddr": "10.0.0.256"}, r"giaddr: .*10.0.0.256"),
        ({"options": {52: b"\x01"}}, r"option 52 \(overload\) is framing"),
        ({"options": {0: b""}}, r"option code must be an int in 1..254, got 0"),
        ({"options": {255: b""}}, r"got 255"),
        ({"options": {256: b""}}, r"got 256"),
        ({"options": [(12, b"a"), (12, b"b")]}, r"option 12 \(hostname\) given twice"),
        ({"options": {12: "text"}}, r"option 12 \(hostname\) value must be bytes"),
    ],
)
def test_invalid_messages_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(DhcpCodecError, match=message):
        DhcpMessage(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: encode_u8(256), r"256 does not fit in an unsigned 8-bit"),
        (lambda: encode_u16(-1), r"unsigned 16-bit"),
        (lambda: encode_u32(1 << 32), r"unsigned 32-bit"),
        (lambda: encode_ipv4_list([]), r"at least one address"),
        (lambda: encode_ipv4("10.0.0"), r"not an IPv4 address"),
        (lambda: reply_to(DhcpMessage(), 9), r"unknown DHCP message type 9"),  # type: ignore[arg-type]
        (lambda: reply_to(DhcpMessage(), MessageType.DHCPOFFER, yiaddr="x"), r"yiaddr: "),
        (lambda: encode_text("a\x00"), r"contains a NUL"),
        (lambda: encode_user_classes([b""]), r"user class must be 1..255 bytes, got 0"),
        (lambda: encode_user_classes([bytes(256)]), r"got 256"),
        (lambda: encode_code_list([300]), r"8-bit"),
        (lambda: encode_client_architectures([70000]), r"16-bit"),
        (lambda: encode_encapsulated([(176, b"\x01"), (176, b"\x01")]), r"given twice"),
        (lambda: chaddr_for_mac("not-a-mac"), r"not a MAC address"),
        (lambda: chaddr_for_mac(":".join(["00"] * 17)), r"not a MAC address"),
        (lambda: reply_to(DhcpMessage(), MessageType.DHCPACK, options={53: b"\x05"}), r"53"),
        (lambda: reply_to(DhcpMessage(), MessageType.DHCPACK, options={82: b"x"}), r"option 82"),
    ],
)
def test_invalid_values_are_refused(call: Callable[[], object], message: str) -> None:
    with pytest.raises(DhcpCodecError, match=message):
        call()


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(DhcpCodecError, ValueError)
