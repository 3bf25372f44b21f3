"""DHCPv4 option layer: option codes, the immutable options mapping, TLV areas and value codecs.

Owns how option bytes are split, joined (RFC 3396) and turned into typed values (RFC 2132, 3004,
4578, iPXE's option 175). Knows nothing of the BOOTP header; that lives in codec.py.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

PAD = 0
END = 255
MAX_OPTION_CHUNK = 255  # one length byte per instance; longer values repeat the code (RFC 3396)


class DhcpCodecError(ValueError):
    """A DHCP message or option is malformed, or cannot be represented on the wire."""


class OptionCode(IntEnum):
    """Option codes cloudctl reads or writes (RFC 2132 unless noted)."""

    SUBNET_MASK = 1
    ROUTER = 3
    DNS_SERVERS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS_ID = 60
    CLIENT_ID = 61
    TFTP_SERVER_NAME = 66
    BOOTFILE_NAME = 67
    USER_CLASS = 77  # RFC 3004
    RELAY_AGENT_INFO = 82  # RFC 3046
    CLIENT_ARCH = 93  # RFC 4578
    CLIENT_NDI = 94  # RFC 4578
    CLIENT_MACHINE_ID = 97  # RFC 4578
    IPXE_ENCAP = 175  # iPXE ("Etherboot") encapsulated options


class IpxeOption(IntEnum):
    """Sub-options inside option 175, as iPXE's include/ipxe/dhcp.h numbers them."""

    PRIORITY = 1
    KEEP_SAN = 8
    SKIP_SAN_BOOT = 9
    # 16..79 are feature markers: the client sets them to 1 to say what it was built with.
    FEATURE_PXE_EXT = 16
    FEATURE_ISCSI = 17
    FEATURE_AOE = 18
    FEATURE_HTTP = 19
    FEATURE_HTTPS = 20
    FEATURE_TFTP = 21
    FEATURE_FTP = 22
    FEATURE_DNS = 23
    FEATURE_BZIMAGE = 24
    FEATURE_MULTIBOOT = 25
    FEATURE_SLAM = 26
    FEATURE_SRP = 27
    FEATURE_NBI = 32
    FEATURE_PXE = 33
    FEATURE_ELF = 34
    FEATURE_COMBOOT = 35
    FEATURE_EFI = 36
    FEATURE_FCOE = 37
    FEATURE_VLAN = 38
    FEATURE_MENU = 39
    FEATURE_SDI = 40
    FEATURE_NFS = 41
    SCRIPTLET = 81
    NO_PXEDHCP = 176
    BUS_ID = 177
    BIOS_DRIVE = 189
    VERSION = 235


def describe_option(code: int) -> str:
    """'option 50 (requested ip)' for known codes, 'option 200' otherwise (for error messages)."""
    try:
        name = OptionCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"option {code}"
    return f"option {code} ({name})"


class DhcpOptions(Mapping[int, bytes]):
    """Immutable option code -> raw value mapping that remembers insertion order.

    Each code appears once: split instances are joined when decoding (RFC 3396) and split again
    when encoding. Codes 0 (pad) and 255 (end) are framing, not options, so they are refused.
    Equality ignores order, like dict; iteration follows insertion order.
    """

    __slots__ = ("_values",)

    def __init__(self, items: Mapping[int, bytes] | Iterable[tuple[int, bytes]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        values: dict[int, bytes] = {}
        for code, value in pairs:
            _check_code(code)
            if code in values:
                raise DhcpCodecError(
                    f"{describe_option(code)} given twice; join the values into one "
                    "(DhcpOptions.joining does that for wire instances)"
                )
            values[code] = _as_bytes(value, code)
        self._values = values

    @classmethod
    def joining(cls, instances: Iterable[tuple[int, bytes]]) -> DhcpOptions:
        """Build from wire instances, concatenating repeated codes in order (RFC 3396)."""
        joined: dict[int, bytes] = {}
        for code, value in instances:
            joined[code] = joined[code] + value if code in joined else bytes(value)
        for code in joined:
            _check_code(code)
        return cls._adopt(joined)

    @classmethod
    def _adopt(cls, values: dict[int, bytes]) -> DhcpOptions:
        """Wrap a dict whose codes and bytes values are already checked (hot path: no copy)."""
        options = cls.__new__(cls)
        options._values = values
        return options

    def __getitem__(self, code: int) -> bytes:
        return self._values[code]

    # The Mapping mixins would go through __iter__ and __getitem__ per key; the server calls
    # these for every packet, so hand them straight to the dict.
    def get(self, code: int, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        return self._values.get(code, default)

    def __contains__(self, code: object) -> bool:
        return code in self._values

    def keys(self):  # type: ignore[override]
        return self._values.keys()

    def items(self):  # type: ignore[override]
        return self._values.items()

    def values(self):  # type: ignore[override]
        return self._values.values()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DhcpOptions):
            return self._values == other._values
        return Mapping.__eq__(self, other)

    def __iter__(self) -> Iterator[int]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(frozenset(self._values.items()))

    def __repr__(self) -> str:
        body = ", ".join(f"{code}: {value!r}" for code, value in self._values.items())
        return f"DhcpOptions({{{body}}})"

    def replacing(self, code: int, value: bytes) -> DhcpOptions:
        """A copy with `code` set to `value`: in place if present, else appended."""
        updated = dict(self._values)
        updated[code] = value
        return DhcpOptions(updated)

    def without(self, *codes: int) -> DhcpOptions:
        """A copy with the given codes removed (absent codes are ignored)."""
        return DhcpOptions._adopt({c: v for c, v in self._values.items() if c not in codes})


def _check_code(code: object) -> None:
    if not isinstance(code, int) or isinstance(code, bool) or not PAD < code < END:
        raise DhcpCodecError(f"option code must be an int in 1..254, got {code!r}")


def _as_bytes(value: object, code: int) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise DhcpCodecError(f"{describe_option(code)} value must be bytes, got {type(value)}")
    return bytes(value)


# --- TLV areas: the options field, overloaded file/sname fields, encapsulated options ---


def parse_option_area(area: bytes, where: str) -> list[tuple[int, bytes]]:
    """Split a TLV area into (code, value) wire instances, stopping at END.

    A missing END is tolerated (the area simply runs out), because the length bytes already
    frame every option; an option running past the end of the area is an error.
    """
    instances: list[tuple[int, bytes]] = []
    size = len(area)
    index = 0
    while index < size:
        code = area[index]
        if code == PAD:
            index += 1
            continue
        if code == END:
            break
        if index + 1 >= size:
            raise DhcpCodecError(
                f"truncated option {code} at byte {index} of {where}: no length byte"
            )
        length = area[index + 1]
        value_end = index + 2 + length
        if value_end > size:
            raise DhcpCodecError(
                f"truncated option {code} at byte {index} of {where}: length {length} "
                f"but only {size - index - 2} bytes left"
            )
        instances.append((code, area[index + 2 : value_end]))
        index = value_end
    return instances


def encode_option_instances(options: Iterable[tuple[int, bytes]]) -> bytes:
    """TLV-encode options in the given order, splitting values over 255 bytes (RFC 3396)."""
    parts: list[bytes] = []
    for code, value in options:
        if not value:
            parts.append(bytes((code, 0)))
        for start in range(0, len(value), MAX_OPTION_CHUNK):
            chunk = value[start : start + MAX_OPTION_CHUNK]
            parts.append(bytes((code, len(chunk))))
            parts.append(chunk)
    return b"".join(parts)


def option_wire_size(value: bytes) -> int:
    """Bytes one option takes on the wire, counting a code and length byte per instance."""
    instances = max(1, -(-len(value) // MAX_OPTION_CHUNK))
    return len(value) + 2 * instances


# --- value decoders: (raw value, code) -> typed value, DhcpCodecError when malformed ---


def _need_length(value: bytes, code: int, length: int) -> None:
    if len(value) != length:
        raise DhcpCodecError(
            f"bad length: {describe_option(code)} must be {length} byte"
            f"{'' if length == 1 else 's'}, got {len(value)}"
        )


def decode_u8(value: bytes, code: int) -> int:
    _need_length(value, code, 1)
    return value[0]


def decode_u16(value: bytes, code: int) -> int:
    _need_length(value, code, 2)
    return int.from_bytes(value, "big")


def decode_u32(value: bytes, code: int) -> int:
    _need_length(value, code, 4)
    return int.from_bytes(value, "big")


def decode_ipv4(value: bytes, code: int) -> IPv4Address:
    _need_length(value, code, 4)
    return IPv4Address(value)


def decode_ipv4_list(value: bytes, code: int) -> tuple[IPv4Address, ...]:
    if not value or len(value) % 4:
        raise DhcpCodecError(
            f"bad length: {describe_option(code)} must be a non-empty multiple of 4 bytes, "
            f"got {len(value)}"
        )
    return tuple(IPv4Address(value[i : i + 4]) for i in range(0, len(value), 4))


def decode_text(value: bytes, code: int) -> str:
    """NVT-ASCII/UTF-8 text; trailing NULs are dropped because some clients NUL-terminate."""
    try:
        return value.rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError as err:
        raise DhcpCodecError(f"{describe_option(code)} is not valid text: {err.reason}") from None


def decode_code_list(value: bytes, code: int) -> tuple[int, ...]:
    """A list of one-byte option codes, as in the parameter request list (55)."""
    return tuple(value)


def decode_user_classes(value: bytes, code: int = OptionCode.USER_CLASS) -> tuple[bytes, ...]:
    """Option 77: RFC 3004 length-prefixed opaque strings, else one bare string.

    Some clients (iPXE among them) send a bare string such as b"iPXE" rather than the RFC 3004
    form. When the length prefixes do not tile the value exactly, the whole value is taken as one
    class. That fallback makes this decoder total: it never raises.
    """
    classes: list[bytes] = []
    index = 0
    while index < len(value):
        length = value[index]
        if length == 0 or index + 1 + length > len(value):
            return (value,)
        classes.append(value[index + 1 : index + 1 + length])
        index += 1 + length
    return tuple(classes)


def decode_client_architectures(
    value: bytes, code: int = OptionCode.CLIENT_ARCH
) -> tuple[int, ...]:
    """Option 93 (RFC 4578): one or more 16-bit architecture types, client's preference first."""
    if not value or len(value) % 2:
        raise DhcpCodecError(
            f"bad length: {describe_option(code)} must be a non-empty multiple of 2 bytes, "
            f"got {len(value)}"
        )
    return struct.unpack(f"!{len(value) // 2}H", value)


@dataclass(frozen=True)
class ClientNdi:
    """Option 94 (RFC 4578): network interface type (1 = UNDI) and its version."""

    interface_type: int
    major: int
    minor: int


def decode_client_ndi(value: bytes, code: int = OptionCode.CLIENT_NDI) -> ClientNdi:
    _need_length(value, code, 3)
    return ClientNdi(value[0], value[1], value[2])


def decode_client_machine_id(value: bytes, code: int = OptionCode.CLIENT_MACHINE_ID) -> bytes:
    """Option 97 (RFC 4578): type 0 then a 16-byte GUID; returns the 16 bytes as sent.

    The GUID is kept raw: PXE ROMs disagree on its byte order (SMBIOS mixed-endian or not).
    """
    _need_length(value, code, 17)
    if value[0] != 0:
        raise DhcpCodecError(f"{describe_option(code)} has type {value[0]}, only 0 (GUID) exists")
    return value[1:]


def decode_encapsulated(value: bytes, code: int) -> DhcpOptions:
    """Sub-options in DHCP option syntax (pad 0, end 255), as in options 43 and 175."""
    return DhcpOptions.joining(parse_option_area(value, describe_option(code)))


# --- value encoders: typed value -> raw option bytes ---


def _check_range(number: int, bits: int) -> int:
    if not isinstance(number, int) or not 0 <= number < 1 << bits:
        raise DhcpCodecError(f"{number!r} does not fit in an unsigned {bits}-bit option value")
    return number


def encode_u8(number: int) -> bytes:
    return _check_range(number, 8).to_bytes(1, "big")


def encode_u16(number: int) -> bytes:
    return _check_range(number, 16).to_bytes(2, "big")


def encode_u32(number: int) -> bytes:
    return _check_range(number, 32).to_bytes(4, "big")


def encode_ipv4(address: IPv4Address | str) -> bytes:
    if isinstance(address, ipaddress.IPv4Address):
        return address.packed  # IPv4Address(IPv4Address) would re-parse it as a string
    try:
        return ipaddress.IPv4Address(address).packed
    except ValueError as err:
        raise DhcpCodecError(f"not an IPv4 address: {err}") from None


def encode_ipv4_list(addresses: Iterable[IPv4Address | str]) -> bytes:
    packed = b"".join(encode_ipv4(address) for address in addresses)
    if not packed:
        raise DhcpCodecError("an address-list option needs at least one address")
    return packed


def encode_text(text: str) -> bytes:
    """UTF-8 without a terminating NUL (RFC 2132 says string options carry none)."""
    if "\x00" in text:
        raise DhcpCodecError(f"text option value {text!r} contains a NUL")
    return text.encode("utf-8")


def encode_code_list(codes: Iterable[int]) -> bytes:
    return bytes(_check_range(code, 8) for code in codes)


def encode_user_classes(classes: Iterable[bytes]) -> bytes:
    """Option 77 in RFC 3004 form: each class prefixed by its length (1..255)."""
    parts: list[bytes] = []
    for user_class in classes:
        if not 1 <= len(user_class) <= 255:
            raise DhcpCodecError(f"a user class must be 1..255 bytes, got {len(user_class)}")
        parts.append(bytes((len(user_class),)) + bytes(user_class))
    return b"".join(parts)


def encode_client_architectures(arch_codes: Iterable[int]) -> bytes:
    return b"".join(encode_u16(arch) for arch in arch_codes)


def encode_encapsulated(sub_options: Mapping[int, bytes] | Iterable[tuple[int, bytes]]) -> bytes:
    """TLV-encode sub-options (no trailing END: iPXE and PXE ROMs stop at the value's end)."""
    return encode_option_instances(DhcpOptions(sub_options).items())


# Option 175 value that stops iPXE waiting ~3 s for ProxyDHCP offers (sub-option 176 = 1).
IPXE_NO_PXEDHCP = encode_encapsulated({IpxeOption.NO_PXEDHCP: b"\x01"})
