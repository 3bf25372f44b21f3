"""cloudctld's DNS transports: UDP and TCP (RFC 1035 4.2, RFC 7766) on each listen address.

Only moves bytes and keeps counters; every answer comes from `zone.answer`. A bad packet costs
at most one FORMERR or a drop, never the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import asdict, dataclass
from typing import Any, cast

from cloudctl.dns.zone import DnsError, ZoneSettings, ZoneView, answer

log = logging.getLogger(__name__)

TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 6.2.3: seconds, not minutes, for a server with many clients
MAX_TCP_CONNECTIONS = 256
UDP_RECEIVE_BUFFER = 1 << 20  # a rack of nodes booting at once; the kernel caps it at rmem_max
# Replies queued for a socket that cannot keep up are dropped past this, rather than buffered
# without bound for a flood of (possibly spoofed) queries.
UDP_SEND_BACKLOG = 1 << 20
_EPHEMERAL_ATTEMPTS = 20

_RCODE_FORMERR, _RCODE_SERVFAIL, _RCODE_NXDOMAIN, _RCODE_NOTIMP, _RCODE_REFUSED = 1, 2, 3, 4, 5
_TC = 0x02  # in the third header byte


@dataclass
class DnsCounters:
    """Since start: messages received (UDP datagrams and TCP frames) and what became of them."""

    queries: int = 0
    answered: int = 0
    dropped: int = 0  # received, not answered: shorter than a header, a response, unsendable
    formerr: int = 0
    refused: int = 0
    notimp: int = 0
    servfail: int = 0
    nxdomain: int = 0
    truncated: int = 0
    tcp_connections: int = 0
    tcp_rejected: int = 0  # connections turned away at MAX_TCP_CONNECTIONS

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DnsServer:
    """Serves the zone on UDP and TCP at each (host, port); port 0 picks one free for both."""

    def __init__(
        self,
        zone: ZoneView,
        settings: ZoneSettings,
        listen: list[tuple[str, int]],
        *,
        tcp_idle_timeout: float = TCP_IDLE_TIMEOUT,
        max_tcp_connections: int = MAX_TCP_CONNECTIONS,
    ) -> None:
        self.zone = zone
        self.settings = settings
        self.listen = list(listen)
        self.tcp_idle_timeout = tcp_idle_timeout
        self.max_tcp_connections = max_tcp_connections
        self.counters = DnsCounters()
        self.addresses: list[tuple[str, int]] = []  # as bound, same port for UDP and TCP
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._connections: set[asyncio.Task] = set()

    async def start(self) -> None:
        try:
            for host, port in self.listen:
                await self._listen(host, port)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._tcp:
            await server.wait_closed()
        self._udp.clear()
        self._tcp.clear()
        self.addresses.clear()

    async def _listen(self, host: str, port: int) -> None:
        attempts = _EPHEMERAL_ATTEMPTS if port == 0 else 1
        for attempt in range(attempts):
            udp = await self._bind_udp(host, port)
            bound_port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._tcp_connection, host, bound_port)
            except OSError as exc:
                udp.close()
                if exc.errno == errno.EADDRINUSE and attempt + 1 < attempts:
                    continue  # the ephemeral UDP port is taken for TCP; draw another
                raise DnsError(
                    f"cannot listen for DNS on tcp {host}:{bound_port}: {exc.strerror}"
                    f"{_hint(bound_port)}"
                ) from None
            self._udp.append(udp)
            self._tcp.append(tcp)
            self.addresses.append((host, bound_port))
            log.info("DNS listening on %s:%d (udp, tcp)", host, bound_port)
            return

    async def _bind_udp(self, host: str, port: int) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        try:
            transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
        except OSError as exc:
            raise DnsError(
                f"cannot listen for DNS on udp {host}:{port}: {exc.strerror}{_hint(port)}"
            ) from None
        with contextlib.suppress(OSError):
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        return transport

    def _respond(self, message: bytes, *, tcp: bool) -> bytes | None:
        counters = self.counters
        counters.queries += 1
        try:
            reply = answer(message, self.zone, self.settings, tcp=tcp)
        except Exception:
            # answer() promises not to raise; if it ever does, one query is lost, not the server.
            log.exception("DNS: answering a %d-byte message failed", len(message))
            reply = None
        if reply is None:
            counters.dropped += 1
            return None
        rcode = reply[3] & 0x0F
        if rcode == _RCODE_FORMERR:
            counters.formerr += 1
        elif rcode == _RCODE_REFUSED:
            counters.refused += 1
        elif rcode == _RCODE_NXDOMAIN:
            counters.nxdomain += 1
        elif rcode == _RCODE_NOTIMP:
            counters.notimp += 1
        elif rcode == _RCODE_SERVFAIL:
            counters.servfail += 1
        if reply[2] & _TC:
            counters.truncated += 1
        return reply

    def _datagram(self, transport: asyncio.DatagramTransport, data: bytes, addr: Any) -> None:
        reply = self._respond(data, tcp=False)
        if reply is None:
            return
        if addr[1] == 0 or transport.get_write_buffer_size() > UDP_SEND_BACKLOG:
            self.counters.dropped += 1  # port 0 cannot be answered; a full queue will not drain
            return
        self.counters.answered += 1  # before sending, so a client that has its answer sees it
        transport.sendto(reply, addr)

    async def _tcp_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if len(self._connections) >= self.max_tcp_connections:
            self.counters.tcp_rejected += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.counters.tcp_connections += 1
        try:
            while True:
                # The idle timeout covers a whole message, so a peer dribbling one byte at a
                # time cannot hold a connection slot forever.
                async with asyncio.timeout(self.tcp_idle_timeout):
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    message = await reader.readexactly(length)
                reply = self._respond(message, tcp=True)
                if reply is None:
                    continue  # framing is intact, so the next message can still be read
                self.counters.answered += 1
                writer.write(len(reply).to_bytes(2, "big") + reply)
                async with asyncio.timeout(self.tcp_idle_timeout):
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client closed, went quiet, or stopped reading
        except asyncio.CancelledError:
            pass  # close() is shutting us down
        finally:
            self._connections.discard(task)
            writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's UDP transport is not a DatagramTransport subclass, only in spirit.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.server._datagram(self.transport, data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port-unreachable from a client that gave up; nothing to do for anyone else.
        log.debug("DNS: udp error %s", exc)


def _hint(port: int) -> str:
    if port == 53:
        return " (is another DNS server, e.g. dnsmasq or systemd-resolved, using port 53?)"
    return ""
