"""The cloud's authoritative DNS answers: query bytes in, response bytes out, no I/O.

Owns the forward zone `<domain>` and the reverse in-addr.arpa zone enclosing the subnet; names
come from the daemon's inventory through `ZoneView`. The transports live in `server.py`.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.OPT
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.A
import dns.rrset

if TYPE_CHECKING:
    from cloudctl.config import Config

log = logging.getLogger(__name__)

HEADER_SIZE = 12
EDNS_PAYLOAD = 1232  # DNS flag day 2020: large enough for us, small enough never to fragment
CLASSIC_UDP_SIZE = 512
TCP_MAX_SIZE = 65535

# SOA timers. Nobody transfers these zones (we refuse AXFR), so refresh/retry/expire only need to
# be plausible; MINIMUM is the negative-caching TTL (RFC 2308) and is what matters.
SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 604800

IN = dns.rdataclass.IN
# Plain ints: IntFlag arithmetic costs microseconds per query on the hot path.
_QR, _AA, _RD, _CD = (int(f) for f in (dns.flags.QR, dns.flags.AA, dns.flags.RD, dns.flags.CD))
_DO = int(dns.flags.DO)
_OPCODE_MASK = 0x7800
# A label we hand to the inventory: hostname characters only, so a label such as b"a.b" (one wire
# label containing a dot) or raw binary can never alias a real node.
_HOST_LABEL = re.compile(rb"[a-z0-9_-]+")
_REVERSE_SUFFIX = (b"in-addr", b"arpa", b"")


class DnsError(Exception):
    """DNS settings that cannot work, or a listener that cannot start; the message says which."""


class ZoneView(Protocol):
    """What the zone needs from the inventory; the daemon answers from its in-memory index."""

    def address_of(self, label: str) -> ipaddress.IPv4Address | None:
        """The address of the node whose host name (lower-case, one label, e.g. "hn1") is label."""

    def name_of(self, address: ipaddress.IPv4Address) -> str | None:
        """The host-name label of the node holding address, or None."""

    def serial(self) -> int:
        """The SOA serial: must grow whenever any name or address changes."""


@dataclass(frozen=True)
class ZoneSettings:
    """What the zones are: from `network.domain`, `network.server`, `network.subnet`, `dns.ttl`."""

    domain: str
    server_address: ipaddress.IPv4Address
    ttl: int
    subnet: ipaddress.IPv4Network
    # Short, because "not yet" is common here: a node asked for just before it is created must
    # not stay missing from resolvers' caches for a whole ttl.
    negative_ttl: int = 60

    def __post_init__(self) -> None:
        try:
            name = dns.name.from_text(self.domain)
        except dns.exception.DNSException as exc:
            raise DnsError(f"network.domain {self.domain!r} is not a DNS name: {exc}") from None
        if name == dns.name.root:
            raise DnsError("network.domain must not be the root; use e.g. 'cloud.example'")
        for key, value in (("dns.ttl", self.ttl), ("negative_ttl", self.negative_ttl)):
            if not 0 <= value <= 2**31 - 1:
                raise DnsError(f"{key} {value} is out of range; use 0 .. 2147483647 seconds")
        if self.subnet.prefixlen < 8:
            raise DnsError(
                f"network.subnet {self.subnet} is wider than /8; its reverse zone would be all "
                "of in-addr.arpa"
            )

    @classmethod
    def from_config(cls, config: Config) -> ZoneSettings:
        return cls(
            domain=config.network.domain,
            server_address=config.network.server,
            ttl=config.dns.ttl,
            subnet=config.network.subnet,
        )

    @property
    def forward_zone(self) -> dns.name.Name:
        return _compile(self).forward.apex

    @property
    def reverse_zone(self) -> dns.name.Name:
        return _compile(self).reverse.apex


def reverse_zone_name(subnet: ipaddress.IPv4Network) -> dns.name.Name:
    """The in-addr.arpa zone holding the subnet's PTRs: the enclosing octet boundary, at most /24.

    /24 -> 0.20.10.in-addr.arpa., /16 and /20 -> 20.10.in-addr.arpa., /28 -> the /24's zone.
    """
    octets = min(subnet.prefixlen // 8, 3)
    leading = subnet.network_address.packed[:octets]
    return dns.name.Name(
        [str(octet).encode() for octet in reversed(leading)] + list(_REVERSE_SUFFIX)
    )


# --- answering ---


def answer(
    query_wire: bytes, zone: ZoneView, settings: ZoneSettings, *, tcp: bool = False
) -> bytes | None:
    """The response to one DNS message, or None when it must be dropped.

    Never raises. Dropped: shorter than a header, or itself a response. Unparseable with a sound
    header: FORMERR (NOTIMP for other opcodes; NOTAUTH if TSIG-signed, as we hold no keys),
    echoing the ID. UDP responses (`tcp=False`) are cut to 512 bytes or the client's EDNS
    payload (at most 1232) with TC set.
    """
    if len(query_wire) < HEADER_SIZE:
        return None
    query_id, flags = struct.unpack_from("!HH", query_wire)
    if flags & _QR:
        return None  # answering responses invites reflection loops between servers
    try:
        query = dns.message.from_wire(query_wire)
    except dns.message.UnknownTSIGKey:
        response = _header_only(query_id, flags, dns.rcode.NOTAUTH)
        return render(response, CLASSIC_UDP_SIZE)
    except Exception:
        # dnspython's parsers raise more than FormError on garbage (ValueError, UnicodeError,
        # struct.error from individual rdata types); all of it is the sender's format error.
        is_query = dns.opcode.from_flags(flags) == dns.opcode.QUERY
        rcode = dns.rcode.FORMERR if is_query else dns.rcode.NOTIMP
        return render(_header_only(query_id, flags, rcode), CLASSIC_UDP_SIZE)
    response = answer_message(query, zone, settings)
    if response is None:
        return None
    return render(response, TCP_MAX_SIZE if tcp else udp_size_limit(query))


def answer_message(
    query: dns.message.Message, zone: ZoneView, settings: ZoneSettings
) -> dns.message.Message | None:
    """The response to a parsed query (None: drop it). Its RRsets may be shared: read only."""
    if query.flags & _QR:
        return None
    if query.opcode() != dns.opcode.QUERY:
        return _reply(query, dns.rcode.NOTIMP, echo_question=False)
    if len(query.question) != 1:
        return _reply(query, dns.rcode.FORMERR, echo_question=False)
    if query.edns > 0:
        return _bad_version(query)
    question = query.question[0]
    qtype = question.rdtype
    if qtype == dns.rdatatype.OPT:
        return _reply(query, dns.rcode.FORMERR, echo_question=False)  # RFC 6891 section 6.1.1
    if question.rdclass != IN:
        return _reply(query, dns.rcode.REFUSED)  # no CHAOS version.bind and friends
    compiled = _compile(settings)
    labels = tuple(label.lower() for label in question.name.labels)
    found = compiled.find_zone(labels)
    if found is None or qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        return _reply(query, dns.rcode.REFUSED)  # not ours, and we do not recurse or transfer
    our_zone, relative = found
    try:
        records = our_zone.records_at(relative, labels, zone, compiled)
        if records is None:
            response = _reply(query, dns.rcode.NXDOMAIN, authoritative=True)
            response.authority.append(compiled.negative_soa(our_zone, zone))
            return response
        response = _reply(query, dns.rcode.NOERROR, authoritative=True)
        if qtype == dns.rdatatype.ANY:
            response.answer.extend(records)  # everything there is; it is never more than 3 RRsets
        else:
            response.answer.extend(rrset for rrset in records if rrset.rdtype == qtype)
        if not response.answer:
            response.authority.append(compiled.negative_soa(our_zone, zone))  # NODATA
        elif any(rrset.rdtype == dns.rdatatype.NS for rrset in response.answer):
            response.additional.append(compiled.ns_address)  # the glue saves a second query
        return response
    except Exception:
        # The inventory failed us; a resolver will retry elsewhere or later.
        log.exception("DNS: answering %s failed", question.name)
        return _reply(query, dns.rcode.SERVFAIL)


def udp_size_limit(query: dns.message.Message) -> int:
    """How large a UDP response to this query may be (RFC 6891 6.2.5: never below 512)."""
    if query.edns < 0:
        return CLASSIC_UDP_SIZE
    return max(CLASSIC_UDP_SIZE, min(query.payload, EDNS_PAYLOAD))


def render(response: dns.message.Message, max_size: int) -> bytes:
    """Wire format, with whole RRsets left out and TC set if it does not fit in max_size."""
    return response.to_wire(max_size=max_size, prefer_truncation=True)


def _reply(
    query: dns.message.Message,
    rcode: int,
    *,
    authoritative: bool = False,
    echo_question: bool = True,
) -> dns.message.Message:
    response = dns.message.Message(id=query.id)
    # RD and CD are echoed (RFC 1035, RFC 4035 3.1.6); RA never: we do not recurse.
    response.flags = _QR | (query.flags & (_RD | _CD | _OPCODE_MASK)) | rcode
    if authoritative:
        response.flags |= _AA
    if echo_question:
        # The very Name objects from the query, so 0x20 case randomisation comes back as sent.
        response.question = list(query.question)
    if query.opt is not None:
        # A fresh RRset around a shared immutable OPT rdata: set_rcode may edit the RRset's TTL.
        # DO is echoed as RFC 3225 asks, though we have no signatures to give.
        response.opt = dns.rrset.from_rdata(dns.name.root, query.ednsflags & _DO, _OPT_RDATA)
    return response


def _bad_version(query: dns.message.Message) -> dns.message.Message:
    response = _reply(query, dns.rcode.NOERROR)
    response.set_rcode(dns.rcode.BADVERS)  # upper bits go in the OPT TTL, version 0
    return response


def _header_only(query_id: int, flags: int, rcode: int) -> dns.message.Message:
    response = dns.message.Message(id=query_id)
    response.flags = _QR | (flags & (_RD | _CD | _OPCODE_MASK)) | rcode
    return response


_OPT_RDATA = dns.rdtypes.ANY.OPT.OPT(EDNS_PAYLOAD, dns.rdatatype.OPT, ())


# --- the zones, compiled once per settings ---


class _Zone(NamedTuple):
    """One of our two zones: its apex, the lower-case labels, and how names below it resolve."""

    apex: dns.name.Name
    labels: tuple[bytes, ...]
    apex_ns: dns.rrset.RRset
    forward: bool
    subnet: ipaddress.IPv4Network

    def records_at(
        self,
        relative: tuple[bytes, ...],
        owner: tuple[bytes, ...],
        zone: ZoneView,
        compiled: _Compiled,
    ) -> list[dns.rrset.RRset] | None:
        """All RRsets at the name (lower-case labels, relative and whole); None: no such name."""
        if not relative:
            return [compiled.soa(self, zone), self.apex_ns]
        if self.forward:
            return _forward_records(relative, owner, zone, compiled)
        return _reverse_records(relative, owner, zone, compiled, self)


@dataclass
class _Compiled:
    settings: ZoneSettings
    forward: _Zone
    reverse: _Zone
    ns_name: dns.name.Name
    ns_address: dns.rrset.RRset
    soa_cache: dict[tuple[int, bool, bool], dns.rrset.RRset] = field(default_factory=dict)

    def find_zone(self, labels: tuple[bytes, ...]) -> tuple[_Zone, tuple[bytes, ...]] | None:
        # Deeper apex first, in case one zone is nested inside the other.
        for candidate in self._by_depth:
            depth = len(candidate.labels)
            if labels[-depth:] == candidate.labels:
                return candidate, labels[:-depth]
        return None

    @functools.cached_property
    def _by_depth(self) -> tuple[_Zone, ...]:
        return tuple(sorted((self.forward, self.reverse), key=lambda z: -len(z.labels)))

    def soa(self, owner: _Zone, zone: ZoneView) -> dns.rrset.RRset:
        return self._soa(owner, zone, negative=False)

    def negative_soa(self, owner: _Zone, zone: ZoneView) -> dns.rrset.RRset:
        return self._soa(owner, zone, negative=True)

    def _soa(self, owner: _Zone, zone: ZoneView, *, negative: bool) -> dns.rrset.RRset:
        serial = zone.serial() & 0xFFFFFFFF  # RFC 1982 serial arithmetic is modulo 2**32
        key = (serial, owner.forward, negative)
        cached = self.soa_cache.get(key)
        if cached is not None:
            return cached
        if len(self.soa_cache) >= 8:
            self.soa_cache.clear()  # the serial moved on; old ones are not asked for again
        settings = self.settings
        rdata = dns.rdtypes.ANY.SOA.SOA(
            IN,
            dns.rdatatype.SOA,
            self.ns_name,
            dns.name.Name((b"hostmaster", *self.forward.apex.labels)),
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            settings.negative_ttl,
        )
        # RFC 2308 section 5: a negative answer's SOA TTL is min(SOA TTL, MINIMUM).
        ttl = min(settings.ttl, settings.negative_ttl) if negative else settings.ttl
        rrset = dns.rrset.from_rdata(owner.apex, ttl, rdata)
        self.soa_cache[key] = rrset
        return rrset


@functools.lru_cache(maxsize=16)
def _compile(settings: ZoneSettings) -> _Compiled:
    forward_apex = dns.name.from_text(settings.domain)
    reverse_apex = reverse_zone_name(settings.subnet)
    ns_name = dns.name.Name((b"ns", *forward_apex.labels))
    ns_rdata = dns.rdtypes.ANY.NS.NS(IN, dns.rdatatype.NS, ns_name)
    forward = _Zone(
        apex=forward_apex,
        labels=tuple(label.lower() for label in forward_apex.labels),
        apex_ns=dns.rrset.from_rdata(forward_apex, settings.ttl, ns_rdata),
        forward=True,
        subnet=settings.subnet,
    )
    reverse = _Zone(
        apex=reverse_apex,
        labels=reverse_apex.labels,
        apex_ns=dns.rrset.from_rdata(reverse_apex, settings.ttl, ns_rdata),
        forward=False,
        subnet=settings.subnet,
    )
    return _Compiled(
        settings=settings,
        forward=forward,
        reverse=reverse,
        ns_name=ns_name,
        ns_address=_a_rrset(ns_name.labels, settings.ttl, settings.server_address),
    )


def _forward_records(
    relative: tuple[bytes, ...], owner: tuple[bytes, ...], zone: ZoneView, compiled: _Compiled
) -> list[dns.rrset.RRset] | None:
    if len(relative) != 1:
        return None  # node names are single labels; nothing lives deeper
    label = relative[0]
    if label == b"ns":
        address: ipaddress.IPv4Address | None = compiled.settings.server_address
    elif _HOST_LABEL.fullmatch(label):
        address = zone.address_of(label.decode("ascii"))
    else:
        return None
    if address is None:
        return None
    return [_a_rrset(owner, compiled.settings.ttl, address)]


def _reverse_records(
    relative: tuple[bytes, ...],
    owner: tuple[bytes, ...],
    zone: ZoneView,
    compiled: _Compiled,
    reverse: _Zone,
) -> list[dns.rrset.RRset] | None:
    fixed = len(reverse.labels) - len(_REVERSE_SUFFIX)  # octets named by the apex
    if len(relative) > 4 - fixed:
        return None
    octets = [_octet(label) for label in reversed(relative)]
    if None in octets:
        return None  # "05" or "x" is a different, nonexistent name
    leading = list(reverse.subnet.network_address.packed[:fixed]) + octets
    if len(leading) < 4:
        # An interior name such as 0.20.10.in-addr.arpa. in a /16 zone. NXDOMAIN would tell
        # RFC 8020 resolvers that nothing below exists, hiding every PTR there; so any prefix the
        # subnet overlaps is an empty non-terminal (NODATA).
        block = ipaddress.IPv4Network((bytes(leading + [0] * (4 - len(leading))), len(leading) * 8))
        return [] if block.overlaps(reverse.subnet) else None
    address = ipaddress.IPv4Address(bytes(leading))
    if address not in reverse.subnet:
        return None
    label = zone.name_of(address)
    if label is not None:
        target = dns.name.Name((label.encode("ascii"), *compiled.forward.apex.labels))
    elif address == compiled.settings.server_address:
        target = compiled.ns_name
    else:
        return None
    return [_ptr_rrset(owner, compiled.settings.ttl, target)]


def _octet(label: bytes) -> int | None:
    if not label.isdigit() or len(label) > 3 or (len(label) > 1 and label[0] == 0x30):
        return None
    value = int(label)
    return value if value <= 255 else None


# Answer RRsets are cached whole. Their owners are lower-case, yet the asker still sees its own
# spelling: on the wire the owner compresses to a pointer at the question, which is echoed as sent.


@functools.lru_cache(maxsize=8192)
def _a_rrset(owner: tuple[bytes, ...], ttl: int, address: ipaddress.IPv4Address) -> dns.rrset.RRset:
    rdata = dns.rdtypes.IN.A.A(IN, dns.rdatatype.A, str(address))
    return dns.rrset.from_rdata(dns.name.Name(owner), ttl, rdata)


@functools.lru_cache(maxsize=8192)
def _ptr_rrset(owner: tuple[bytes, ...], ttl: int, target: dns.name.Name) -> dns.rrset.RRset:
    rdata = dns.rdtypes.ANY.PTR.PTR(IN, dns.rdatatype.PTR, target)
    return dns.rrset.from_rdata(dns.name.Name(owner), ttl, rdata)
