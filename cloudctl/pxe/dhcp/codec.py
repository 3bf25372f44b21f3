"""Sans-I/O DHCPv4 codec: BOOTP header + options <-> bytes (RFC 2131, 2132, 3396, 3046).

Owns `DhcpMessage`, `decode`, `encode` and `reply_to`. No sockets, no policy: which address or
boot file to offer is decided elsewhere (see bootmethods.py); option value codecs are in options.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from ipaddress import IPv4Address
from typing import TypeVar

from cloudctl.pxe.dhcp.options import (
    END,
    ClientNdi,
    DhcpCodecError,
    DhcpOptions,
    OptionCode,
    decode_client_architectures,
    decode_client_machine_id,
    decode_client_ndi,
    decode_code_list,
    decode_encapsulated,
    decode_ipv4,
    decode_ipv4_list,
    decode_text,
    decode_u8,
    decode_u16,
    decode_u32,
    decode_user_classes,
    describe_option,
    encode_option_instances,
    encode_u8,
    option_wire_size,
    parse_option_area,
)

__all__ = [
    "BROADCAST_FLAG",
    "BootOp",
    "DhcpCodecError",
    "DhcpMessage",
    "DhcpOptions",
    "MessageType",
    "OptionCode",
    "chaddr_for_mac",
    "decode",
    "decode_message_type",
    "encode",
    "encoded_size",
    "reply_size_limit",
    "reply_to",
]

MAGIC_COOKIE = bytes((99, 130, 83, 99))
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_SIZE = _HEADER.size  # 236
MIN_MESSAGE_SIZE = HEADER_SIZE + len(MAGIC_COOKIE)  # 240: header + cookie, no options
BOOTP_MIN_PACKET = 300  # RFC 951 size; some PXE ROMs drop shorter replies
SNAME_SIZE = 64
FILE_SIZE = 128
CHADDR_SIZE = 16
BROADCAST_FLAG = 0x8000
# RFC 2131: every client accepts a 576-byte IP datagram; minus IP (20) and UDP (8) headers.
MIN_DATAGRAM = 576
IP_UDP_HEADERS = 28
MAX_UDP_PAYLOAD = 65507
_OVERLOAD_FILE = 1
_OVERLOAD_SNAME = 2
# Never dropped to fit a client's size limit: RFC 2131 table 3 requires 51/54 in OFFER/ACK, and
# RFC 3046 requires 82 to be echoed.
ALWAYS_SENT_OPTIONS = frozenset(
    {
        OptionCode.MESSAGE_TYPE,
        OptionCode.SERVER_ID,
        OptionCode.LEASE_TIME,
        OptionCode.RELAY_AGENT_INFO,
    }
)
_UNSPECIFIED = IPv4Address(0)


class BootOp(IntEnum):
    REQUEST = 1
    REPLY = 2


class MessageType(IntEnum):
    """Option 53 values (RFC 2132 section 9.6)."""

    DHCPDISCOVER = 1
    DHCPOFFER = 2
    DHCPREQUEST = 3
    DHCPDECLINE = 4
    DHCPACK = 5
    DHCPNAK = 6
    DHCPRELEASE = 7
    DHCPINFORM = 8


def decode_message_type(value: bytes, code: int = OptionCode.MESSAGE_TYPE) -> MessageType:
    number = decode_u8(value, code)
    try:
        return MessageType(number)
    except ValueError:
        raise DhcpCodecError(f"unknown DHCP message type {number} in option 53") from None


def _ipv4(address: object, what: str) -> IPv4Address:
    if isinstance(address, IPv4Address):
        return address
    try:
        return IPv4Address(address)  # type: ignore[arg-type]
    except ValueError as err:
        raise DhcpCodecError(f"{what}: {err}") from None


def chaddr_for_mac(mac: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' (or with '-') -> the 16-byte chaddr field, zero padded."""
    try:
        raw = bytes(int(part, 16) for part in mac.replace("-", ":").split(":"))
    except ValueError:
        raise DhcpCodecError(f"not a MAC address: {mac!r}") from None
    if not 1 <= len(raw) <= CHADDR_SIZE:
        raise DhcpCodecError(f"not a MAC address: {mac!r}")
    return raw.ljust(CHADDR_SIZE, b"\x00")


_Value = TypeVar("_Value")


@dataclass(frozen=True, kw_only=True)
class DhcpMessage:
    """One DHCP/BOOTP message.

    `sname` and `file` hold the C strings up to their first NUL; when option overload (52) put
    options there, decode() moves those options into `options` and leaves the field empty.
    Option 52 itself never appears in `options`: the encoder never overloads.
    """

    op: BootOp = BootOp.REQUEST
    htype: int = 1  # Ethernet
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = _UNSPECIFIED
    yiaddr: IPv4Address = _UNSPECIFIED
    siaddr: IPv4Address = _UNSPECIFIED
    giaddr: IPv4Address = _UNSPECIFIED
    chaddr: bytes = bytes(CHADDR_SIZE)
    sname: bytes = b""
    file: bytes = b""
    options: DhcpOptions = field(default_factory=DhcpOptions)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "op", BootOp(self.op))
        except ValueError:
            raise DhcpCodecError(f"bad op {self.op}: must be 1 (request) or 2 (reply)") from None
        for name, bits in (("htype", 8), ("hops", 8), ("xid", 32), ("secs", 16), ("flags", 16)):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < 1 << bits:
                raise DhcpCodecError(f"{name} {value!r} does not fit in {bits} bits")
        if not isinstance(self.hlen, int) or not 0 <= self.hlen <= CHADDR_SIZE:
            raise DhcpCodecError(f"bad hlen {self.hlen!r}: must be 0..{CHADDR_SIZE}")
        for name in ("ciaddr", "yiaddr", "siaddr", "giaddr"):
            address = getattr(self, name)
            if not isinstance(address, IPv4Address):
                object.__setattr__(self, name, _ipv4(address, name))
        if len(self.chaddr) > CHADDR_SIZE:
            raise DhcpCodecError(f"chaddr is {len(self.chaddr)} bytes, the field holds 16")
        object.__setattr__(self, "chaddr", bytes(self.chaddr).ljust(CHADDR_SIZE, b"\x00"))
        for name, size in (("sname", SNAME_SIZE), ("file", FILE_SIZE)):
            text = bytes(getattr(self, name))
            if len(text) > size or b"\x00" in text:
                raise DhcpCodecError(
                    f"{name} must be at most {size} bytes with no NUL, got {text!r}; "
                    "long boot file names go in option 67 instead"
                )
            object.__setattr__(self, name, text)
        if not isinstance(self.options, DhcpOptions):
            object.__setattr__(self, "options", DhcpOptions(self.options))
        if OptionCode.OVERLOAD in self.options:
            raise DhcpCodecError("option 52 (overload) is framing, not content; remove it")

    @classmethod
    def _trusted(cls, **fields: object) -> DhcpMessage:
        """Build from fields the codec produced or already checked, skipping __post_init__.

        decode() and reply_to() use this on the per-packet path; messages built by callers
        still go through the full validation.
        """
        message = cls.__new__(cls)
        message.__dict__.update(fields)
        return message

    @property
    def mac(self) -> str:
        """The first hlen bytes of chaddr as 'aa:bb:cc:dd:ee:ff'."""
        return self.chaddr[: self.hlen].hex(":")

    @property
    def broadcast(self) -> bool:
        """The client asked for a broadcast reply (RFC 2131 section 4.1)."""
        return bool(self.flags & BROADCAST_FLAG)

    def _option(self, code: int, decoder: Callable[[bytes, int], _Value]) -> _Value | None:
        value = self.options.get(code)
        return None if value is None else decoder(value, code)

    # Typed views of options. Absent -> None; malformed -> DhcpCodecError naming the option.

    @property
    def message_type(self) -> MessageType | None:
        return self._option(OptionCode.MESSAGE_TYPE, decode_message_type)

    @property
    def requested_ip(self) -> IPv4Address | None:
        return self._option(OptionCode.REQUESTED_IP, decode_ipv4)

    @property
    def server_id(self) -> IPv4Address | None:
        return self._option(OptionCode.SERVER_ID, decode_ipv4)

    @property
    def lease_time(self) -> int | None:
        return self._option(OptionCode.LEASE_TIME, decode_u32)

    @property
    def renewal_time(self) -> int | None:
        """T1, option 58."""
        return self._option(OptionCode.RENEWAL_TIME, decode_u32)

    @property
    def rebinding_time(self) -> int | None:
        """T2, option 59."""
        return self._option(OptionCode.REBINDING_TIME, decode_u32)

    @property
    def subnet_mask(self) -> IPv4Address | None:
        return self._option(OptionCode.SUBNET_MASK, decode_ipv4)

    @property
    def routers(self) -> tuple[IPv4Address, ...] | None:
        return self._option(OptionCode.ROUTER, decode_ipv4_list)

    @property
    def dns_servers(self) -> tuple[IPv4Address, ...] | None:
        return self._option(OptionCode.DNS_SERVERS, decode_ipv4_list)

    @property
    def hostname(self) -> str | None:
        return self._option(OptionCode.HOSTNAME, decode_text)

    @property
    def domain_name(self) -> str | None:
        return self._option(OptionCode.DOMAIN_NAME, decode_text)

    @property
    def parameter_request_list(self) -> tuple[int, ...] | None:
        return self._option(OptionCode.PARAMETER_REQUEST_LIST, decode_code_list)

    @property
    def message(self) -> str | None:
        """Option 56: the server's (or a declining client's) human-readable error text."""
        return self._option(OptionCode.MESSAGE, decode_text)

    @property
    def max_message_size(self) -> int | None:
        return self._option(OptionCode.MAX_MESSAGE_SIZE, decode_u16)

    @property
    def vendor_class_id(self) -> bytes | None:
        """Option 60, opaque bytes such as b'PXEClient:Arch:00000:UNDI:002001'."""
        return self.options.get(OptionCode.VENDOR_CLASS_ID)

    @property
    def client_id(self) -> bytes | None:
        """Option 61, raw (usually hardware type then address)."""
        return self.options.get(OptionCode.CLIENT_ID)

    @property
    def user_classes(self) -> tuple[bytes, ...] | None:
        return self._option(OptionCode.USER_CLASS, decode_user_classes)

    @property
    def client_architectures(self) -> tuple[int, ...] | None:
        return self._option(OptionCode.CLIENT_ARCH, decode_client_architectures)

    @property
    def client_ndi(self) -> ClientNdi | None:
        return self._option(OptionCode.CLIENT_NDI, decode_client_ndi)

    @property
    def client_machine_id(self) -> bytes | None:
        return self._option(OptionCode.CLIENT_MACHINE_ID, decode_client_machine_id)

    @property
    def relay_agent_info(self) -> bytes | None:
        """Option 82, raw: a server echoes it byte for byte and never interprets it."""
        return self.options.get(OptionCode.RELAY_AGENT_INFO)

    @property
    def ipxe_options(self) -> DhcpOptions | None:
        """Option 175 parsed into its sub-options (see options.IpxeOption)."""
        return self._option(OptionCode.IPXE_ENCAP, decode_encapsulated)

    @property
    def tftp_server_name(self) -> str | None:
        return self._option(OptionCode.TFTP_SERVER_NAME, decode_text)

    @property
    def bootfile_name(self) -> str | None:
        return self._option(OptionCode.BOOTFILE_NAME, decode_text)


_BOOT_OPS = {op.value: op for op in BootOp}
_ZERO_ADDRESS = bytes(4)


def _address(packed: bytes) -> IPv4Address:
    # Most header addresses of a request are 0.0.0.0: share one object rather than parse it.
    return _UNSPECIFIED if packed == _ZERO_ADDRESS else IPv4Address(packed)


def _c_string(field_bytes: bytes) -> bytes:
    return field_bytes.split(b"\x00", 1)[0]


def decode(data: bytes) -> DhcpMessage:
    """Parse one DHCP message; any malformation raises DhcpCodecError saying what was wrong."""
    data = bytes(data)
    if len(data) < MIN_MESSAGE_SIZE:
        raise DhcpCodecError(
            f"truncated message: {len(data)} bytes, a DHCP message needs at least "
            f"{MIN_MESSAGE_SIZE} (236-byte BOOTP header + 4-byte magic cookie)"
        )
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = _HEADER.unpack_from(data)  # fmt: skip
    if op not in (BootOp.REQUEST, BootOp.REPLY):
        raise DhcpCodecError(f"bad op {op}: must be 1 (request) or 2 (reply)")
    if hlen > CHADDR_SIZE:
        raise DhcpCodecError(f"bad hlen {hlen}: chaddr holds at most {CHADDR_SIZE} bytes")
    cookie = data[HEADER_SIZE:MIN_MESSAGE_SIZE]
    if cookie != MAGIC_COOKIE:
        raise DhcpCodecError(f"bad magic cookie {cookie.hex('.')}: expected 63.82.53.63")

    instances = parse_option_area(data[MIN_MESSAGE_SIZE:], "the options field")
    overload = _overload_flags(instances)
    # RFC 2131 section 4.1: the file field is read before sname; RFC 3396 joins in that order.
    if overload & _OVERLOAD_FILE:
        instances += _overloaded_area(file, "the file field (overloaded)")
        file = b""
    if overload & _OVERLOAD_SNAME:
        instances += _overloaded_area(sname, "the sname field (overloaded)")
        sname = b""
    content = (pair for pair in instances if pair[0] != OptionCode.OVERLOAD)
    # Every field comes from the fixed-size header just unpacked, so it is in range already.
    return DhcpMessage._trusted(
        op=_BOOT_OPS[op], htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs, flags=flags,
        ciaddr=_address(ciaddr), yiaddr=_address(yiaddr), siaddr=_address(siaddr),
        giaddr=_address(giaddr), chaddr=chaddr, sname=_c_string(sname), file=_c_string(file),
        options=DhcpOptions.joining(content),
    )  # fmt: skip


def _overload_flags(instances: list[tuple[int, bytes]]) -> int:
    values = [value for code, value in instances if code == OptionCode.OVERLOAD]
    if not values:
        return 0
    flags = decode_u8(b"".join(values), OptionCode.OVERLOAD)
    if flags not in (1, 2, 3):
        raise DhcpCodecError(f"bad option 52 (overload) value {flags}: must be 1, 2 or 3")
    return flags


def _overloaded_area(area: bytes, where: str) -> list[tuple[int, bytes]]:
    instances = parse_option_area(area, where)
    if any(code == OptionCode.OVERLOAD for code, _ in instances):
        raise DhcpCodecError(f"option 52 (overload) inside {where}: it may only be in options")
    return instances


def _wire_order(options: DhcpOptions) -> list[tuple[int, bytes]]:
    """Message type first (clients look for it early), relay info last (RFC 3046 2.2)."""
    edges = (OptionCode.MESSAGE_TYPE, OptionCode.RELAY_AGENT_INFO)
    first = [(c, v) for c, v in options.items() if c == OptionCode.MESSAGE_TYPE]
    middle = [(c, v) for c, v in options.items() if c not in edges]
    last = [(c, v) for c, v in options.items() if c == OptionCode.RELAY_AGENT_INFO]
    return first + middle + last


def encode(msg: DhcpMessage) -> bytes:
    """Serialise a message: options in insertion order (53 first, 82 last), END, pad to 300."""
    header = _HEADER.pack(
        msg.op, msg.htype, msg.hlen, msg.hops, msg.xid, msg.secs, msg.flags,
        msg.ciaddr.packed, msg.yiaddr.packed, msg.siaddr.packed, msg.giaddr.packed,
        msg.chaddr, msg.sname, msg.file,
    )  # fmt: skip
    body = encode_option_instances(_wire_order(msg.options))
    packet = b"".join((header, MAGIC_COOKIE, body, bytes((END,))))
    return packet.ljust(BOOTP_MIN_PACKET, b"\x00")


def encoded_size(msg: DhcpMessage) -> int:
    """len(encode(msg)) without building the bytes."""
    body = sum(option_wire_size(value) for value in msg.options.values())
    return max(BOOTP_MIN_PACKET, MIN_MESSAGE_SIZE + body + 1)


def reply_size_limit(request: DhcpMessage) -> int:
    """Largest DHCP payload (bytes) the client will accept, from its option 57.

    Clients disagree on whether 57 counts the IP and UDP headers (udhcpc sends 576 meaning the
    whole datagram, iPXE 1472 meaning the payload), so we take the conservative reading and
    subtract 28. Below-minimum or malformed values fall back to the RFC 2131 minimum of 576.
    """
    try:
        advertised = request.max_message_size or MIN_DATAGRAM
    except DhcpCodecError:
        advertised = MIN_DATAGRAM
    return min(max(advertised, MIN_DATAGRAM) - IP_UDP_HEADERS, MAX_UDP_PAYLOAD)


def reply_to(
    request: DhcpMessage,
    message_type: MessageType,
    *,
    yiaddr: IPv4Address | str = _UNSPECIFIED,
    siaddr: IPv4Address | str = _UNSPECIFIED,
    sname: bytes = b"",
    file: bytes = b"",
    options: Mapping[int, bytes] | Iterable[tuple[int, bytes]] = (),
) -> DhcpMessage:
    """Build the server's reply to `request`, fitted to the client's maximum message size.

    Copies xid, flags, giaddr, htype/hlen and chaddr (and ciaddr for an ACK, RFC 2131 table 3);
    puts option 53 first and echoes the request's option 82 unchanged last (RFC 3046). If the
    reply is larger than reply_size_limit(request), options the client did not ask for in its
    parameter request list (55) are dropped, last added first; options in ALWAYS_SENT_OPTIONS
    are kept. If it still does not fit, DhcpCodecError is raised.
    """
    try:
        message_type = MessageType(message_type)
    except ValueError:
        raise DhcpCodecError(f"unknown DHCP message type {message_type!r}") from None
    body = DhcpOptions(options)
    for reserved in (OptionCode.MESSAGE_TYPE, OptionCode.RELAY_AGENT_INFO):
        if reserved in body:
            raise DhcpCodecError(f"{describe_option(reserved)} is set by reply_to; do not pass it")
    values = {OptionCode.MESSAGE_TYPE.value: encode_u8(message_type)}
    values.update(body.items())
    if request.relay_agent_info is not None:
        values[OptionCode.RELAY_AGENT_INFO.value] = request.relay_agent_info
    for name, text, size in (("sname", sname, SNAME_SIZE), ("file", file, FILE_SIZE)):
        if len(text) > size or b"\x00" in text:
            raise DhcpCodecError(f"{name} must be at most {size} bytes with no NUL, got {text!r}")
    # The header fields come from a decoded (or validated) request; options were checked above.
    reply = DhcpMessage._trusted(
        op=BootOp.REPLY,
        htype=request.htype,
        hlen=request.hlen,
        hops=0,
        xid=request.xid,
        secs=0,
        flags=request.flags,
        ciaddr=request.ciaddr if message_type == MessageType.DHCPACK else _UNSPECIFIED,
        yiaddr=_ipv4(yiaddr, "yiaddr"),
        siaddr=_ipv4(siaddr, "siaddr"),
        giaddr=request.giaddr,
        chaddr=request.chaddr,
        sname=bytes(sname),
        file=bytes(file),
        options=DhcpOptions._adopt(values),
    )
    return _fit_to_client(reply, request)


def _fit_to_client(reply: DhcpMessage, request: DhcpMessage) -> DhcpMessage:
    limit = reply_size_limit(request)
    if encoded_size(reply) <= limit:
        return reply
    keep = ALWAYS_SENT_OPTIONS | set(request.parameter_request_list or ())
    options = reply.options
    for code in reversed([code for code in options if code not in keep]):
        options = options.without(code)
        if encoded_size(DhcpMessage(options=options)) <= limit:
            return replace(reply, options=options)
    raise DhcpCodecError(
        f"reply needs {encoded_size(DhcpMessage(options=options))} bytes even without "
        f"unrequested options, but the client accepts at most {limit}; send fewer or shorter "
        "requested options"
    )
