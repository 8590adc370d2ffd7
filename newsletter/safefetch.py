"""HTTP GETs of addresses that editors type: only to the public internet, within one deadline.

A feed's address is chosen by whoever edits a newsletter; fetched blindly it would let them
read the service's own network (a database's HTTP port, a cloud's metadata service at
169.254.169.254). Every name is resolved here, every address it resolves to is checked, and
the connection goes to the checked address itself, so a second lookup (DNS rebinding) cannot
swap it. Redirects are followed by hand and checked the same way. One deadline covers the
whole fetch: a server that trickles a byte at a time is cut off when it passes.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from newsletter.errors import UserError

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(UserError):
    """The address cannot or may not be fetched; the message says why, fit for an editor."""

    message = "The address could not be fetched."


@dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str
    url: str  # after redirects


@dataclass(frozen=True)
class Internal:
    """Hosts whose addresses may be private: names as typed, or networks (10.1.0.0/16)."""

    names: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Internal:
        names, networks = set(), []
        for entry in entries:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        return host.lower().rstrip(".") in self.names or any(
            address in network for network in self.networks
        )


def public(address: IPAddress) -> bool:
    """Whether an address is on the public internet (not loopback, private, link-local, …)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise FetchError(f"The server took longer than {self.seconds:g} s to answer.")
        return left


def _resolve(host: str, port: int, deadline: _Deadline) -> list[IPAddress]:
    """The host's addresses, looked up once, within the deadline."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    found: list[object] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)

    # getaddrinfo has no timeout of its own.
    thread = threading.Thread(target=lookup, daemon=True, name="safefetch-dns")
    thread.start()
    thread.join(deadline.left())
    if not found:
        deadline.left()
        raise FetchError(f"The name {host} could not be looked up in time.")
    result = found[0]
    if isinstance(result, OSError):
        raise FetchError(f"The name {host} could not be looked up.")
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in result:  # type: ignore[attr-defined]
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _checked(host: str, port: int, internal: Internal, deadline: _Deadline) -> IPAddress:
    """The first address of `host` that may be fetched; refuses the host if any may not."""
    addresses = _resolve(host, port, deadline)
    if not addresses:
        raise FetchError(f"The name {host} has no address.")
    for address in addresses:
        if not public(address) and not internal.allows(host, address):
            raise FetchError(
                f"{host} is on a private or local network ({address}); feeds are fetched from "
                "the public internet only (an operator can allow a host with "
                "NEWSLETTER_FEED_INTERNAL_HOSTS)."
            )
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand, not to a second lookup's."""

    def __init__(self, host: str, port: int, address: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((str(self.address), self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a checked address; the certificate is still checked against the host name."""

    def __init__(self, host: str, port: int, address: IPAddress, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        raw = socket.create_connection((str(self.address), self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def get(
    url: str,
    *,
    headers: dict[str, str],
    max_bytes: int,
    deadline: float,
    internal: Internal,
) -> Fetched:
    """GET `url` following redirects; the body, its type and the final address."""
    clock = _Deadline(deadline)
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(f"{url[:200]} is not an http or https address.")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise FetchError(f"{url[:200]} has a bad port.") from exc
        host = parts.hostname
        address = _checked(host, port, internal, clock)
        kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
        conn = kind(host, port, address, timeout=clock.left())
        # The watchdog: whatever the connection is waiting for when the deadline passes ends.
        watchdog = threading.Timer(clock.left(), _cut, args=(conn,))
        watchdog.daemon = True
        watchdog.start()
        try:
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            conn.request("GET", target, headers={**headers, "Connection": "close"})
            response = conn.getresponse()
            if response.status in _REDIRECTS and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location", ""))
                continue
            if response.status != 200:
                raise FetchError(f"The server answered {response.status} {response.reason}.")
            body = _read(response, max_bytes, clock)
            return Fetched(body, response.getheader("Content-Type", ""), url)
        except FetchError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            clock.left()  # the deadline is the reason when it has passed
            raise FetchError(f"The address could not be fetched: {_reason(exc)}.") from exc
        finally:
            watchdog.cancel()
            conn.close()
    raise FetchError(f"More than {MAX_REDIRECTS} redirects.")


def _read(response: http.client.HTTPResponse, max_bytes: int, clock: _Deadline) -> bytes:
    length = response.getheader("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise TooLarge()
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read1(64 * 1024)
        clock.left()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge()
        chunks.append(chunk)


class TooLarge(FetchError):
    message = "The answer is larger than allowed."


def _cut(conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not valid ({exc.verify_message})"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time"
    return str(exc) or type(exc).__name__
