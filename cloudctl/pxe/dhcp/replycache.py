"""Answers to registered nodes replayed from the encoding of an earlier, identical request.

A node with a fixed address gets the same OFFER or ACK whenever it sends the same request: only
xid, secs and hops may differ, and the reply copies just the xid. So the policy decides the first
request, its encoded reply is kept, and a repeat gets those bytes with its own xid, skipping
decode, the store's node read, the policy and encode. Any audited change empties the cache (every
node change is audited); boot offers are asked for again on each hit. Pure: no sockets.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import NamedTuple

from cloudctl.pxe.dhcp.bootmethods import BootOffer
from cloudctl.pxe.dhcp.codec import MIN_MESSAGE_SIZE, DhcpCodecError, DhcpMessage, decode, encode
from cloudctl.pxe.dhcp.options import OptionCode
from cloudctl.pxe.dhcp.policy import BindLease, Decision, DhcpPolicy, Effect, is_pxe_client
from cloudctl.state.models import Node

# An entry takes ~1.3 KB: 10,000 nodes doing DISCOVER and REQUEST hold ~26 MB, and this cap
# bounds the cache near 85 MB whatever clients send. The oldest entry goes first, so a flood of
# one-off requests cannot pin memory, it only costs misses.
MAX_ENTRIES = 65_536
_CACHED_OUTCOMES = frozenset({"offer", "ack"})
_XID = slice(4, 8)
_OPTIONS_START = MIN_MESSAGE_SIZE - 4  # the magic cookie, then the options field
_OVERLOAD_BYTE = OptionCode.OVERLOAD.value

Binding = tuple[str, IPv4Address, float, str | None]
"""(mac, ip, expires, hostname), as StateStore.bind_leases takes them."""


class Answer(NamedTuple):
    """What to do with one request: a Decision with its reply already encoded.

    `bindings` are the leases to commit before the reply leaves; `effects` the other durable
    effects (discovery, decline, release). `reply` is bytes, or a DhcpMessage in the one case
    its encoding failed, so that the failure surfaces where the reply is sent, as it did before.
    """

    outcome: str
    reply: bytes | DhcpMessage | None
    destination: tuple[str, int] | None
    bindings: tuple[Binding, ...] = ()
    effects: tuple[Effect, ...] = ()
    detail: str = ""


class _Entry(NamedTuple):
    template: bytes  # the encoded reply to the first request; bytes 4:8 are its xid
    outcome: str
    destination: tuple[str, int]
    detail: str
    binding: Binding | None  # an ACK's lease, with `expires` replaced per request
    lease_time: int
    node: Node
    boot_offer: BootOffer | None  # boot_offer(node) when built; None: not a PXE client


def request_key(data: bytes) -> bytes:
    """Every byte of a request the decision and the reply can depend on.

    That is all of it but hops (3), xid and secs (4:10); sname and file (44:236) count only when
    option 52 may have put options there, which needs a 52 somewhere in the options field. The
    two forms cannot collide: a short key's options would contain the long key's, and its 52.
    """
    options = data[_OPTIONS_START:]
    if _OVERLOAD_BYTE in options:
        return data[:3] + data[10:_OPTIONS_START] + options
    return data[:3] + data[10:44] + options


class ReplyCache:
    """Answers requests from raw bytes: replayed for known requests, else through the policy.

    Call `refresh()` before each batch of requests: it reads the store's change counter (at most
    once) and empties the cache if anything changed, or if the policy's settings were replaced.
    Without a `last_change()` on the policy's lease book nothing is cached, and every request
    goes through the policy.
    """

    def __init__(self, policy: DhcpPolicy, *, max_entries: int = MAX_ENTRIES) -> None:
        self.policy = policy
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._change_counter: Callable[[], int] | None = getattr(policy.book, "last_change", None)
        self._version: int | None = None
        # SqliteStore counts its commits in memory: while that count stands still, nothing was
        # written, so the change counter (an SQL read) need not be asked.
        self._counts_commits = hasattr(policy.book, "commits")
        self._commits: int | None = None
        self._settings = policy.settings
        self._entries: dict[bytes, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def refresh(self) -> None:
        if self._change_counter is None:
            return
        if self.policy.settings is not self._settings:  # replaced: every reply may differ
            self._entries.clear()
            self._settings = self.policy.settings
        if self._counts_commits:
            # Read before the change counter: a commit in between makes the next call read again.
            commits = self.policy.book.commits  # type: ignore[attr-defined]
            if commits == self._commits:
                return
            self._commits = commits
        try:
            version = self._change_counter()
        except Exception:
            # Cannot tell what changed: forget everything, and read again next time.
            self._entries.clear()
            self._version = self._commits = None
            raise
        if version != self._version:
            self._entries.clear()
            self._version = version

    def answer(self, data: bytes, now: float) -> Answer:
        """The answer to one datagram; DhcpCodecError if it does not decode."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._change_counter is None or len(data) < MIN_MESSAGE_SIZE:
            return self._decide(data, None, now)
        key = request_key(data)
        entry = self._entries.get(key)
        if entry is None or (entry.boot_offer is not None and not self._offer_unchanged(entry)):
            return self._decide(data, key, now)
        self.hits += 1
        template = entry.template
        reply = template[: _XID.start] + data[_XID] + template[_XID.stop :]
        if entry.binding is None:
            return Answer(entry.outcome, reply, entry.destination, (), (), entry.detail)
        mac, ip, _, hostname = entry.binding
        self.policy.release_offer(ip)
        binding = (mac, ip, now + entry.lease_time, hostname)
        return Answer(entry.outcome, reply, entry.destination, (binding,), (), entry.detail)

    def _offer_unchanged(self, entry: _Entry) -> bool:
        # boot_offer may consult more than the node (profiles, images): ask it as the policy
        # would for a PXE client, and rebuild the reply if its answer moved.
        try:
            return self.policy.settings.boot_offer(entry.node) == entry.boot_offer
        except Exception:
            return False  # the policy path meets the same failure and reports it

    def _decide(self, data: bytes, key: bytes | None, now: float) -> Answer:
        self.misses += 1
        msg = decode(data)
        decision = self.policy.decide(msg, now)
        reply: bytes | DhcpMessage | None = decision.reply
        if decision.reply is not None:
            # If this fails, the message is kept: encoding it again fails where it is sent.
            with contextlib.suppress(DhcpCodecError):
                reply = encode(decision.reply)
        effects = decision.effects
        bindings = tuple(
            (e.mac, e.ip, e.expires, e.hostname) for e in effects if isinstance(e, BindLease)
        )
        others = tuple(e for e in effects if not isinstance(e, BindLease))
        if key is not None and isinstance(reply, bytes) and decision.outcome in _CACHED_OUTCOMES:
            self._remember(key, msg, decision, reply, bindings, now)
        return Answer(
            decision.outcome, reply, decision.destination, bindings, others, decision.detail
        )

    def _remember(
        self,
        key: bytes,
        msg: DhcpMessage,
        decision: Decision,
        reply: bytes,
        bindings: tuple[Binding, ...],
        now: float,
    ) -> None:
        """Keep the answer if the policy says it came from the node's fixed address only."""
        node = decision.fixed_node
        fixed = self.policy.fixed_lease(node)
        if node is None or fixed is None or decision.reply is None or decision.destination is None:
            return
        ip, lease_time = fixed
        if decision.reply.yiaddr != ip or len(bindings) > 1 or len(decision.effects) > 1:
            return
        if len(bindings) != len(decision.effects):
            return  # an effect besides the lease needs the policy every time
        binding = bindings[0] if bindings else None
        if binding is not None and (binding[1] != ip or binding[2] != now + lease_time):
            return
        try:
            offer = self.policy.settings.boot_offer(node) if is_pxe_client(msg) else None
        except Exception:
            return
        if len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = _Entry(
            reply,
            decision.outcome,
            decision.destination,
            decision.detail,
            binding,
            lease_time,
            node,
            offer,
        )
