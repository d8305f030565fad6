"""Webhooks: which events go out, how they are signed, and where they may go. No torch, no I/O but DNS.

Signing follows the Standard Webhooks specification (standardwebhooks.com): three headers,
`webhook-id` (the same on every retry of one event, so receivers can de-duplicate), `webhook-timestamp`
(Unix seconds of this attempt) and `webhook-signature` = `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")),
the key being the base64 part of a `whsec_...` secret (any other secret is used as its UTF-8 bytes).

Destinations: webhooks are off unless the operator lists where they may go (`GENSERVICE_WEBHOOK_ALLOW`:
host names, `*.domain` suffixes, networks in CIDR notation). A URL's host is resolved when each event is
sent, and every address it resolves to is checked: it must be on the list (by its host name or a network),
and a private, loopback, link-local or otherwise non-global address only passes inside a listed network.
The sender then connects to the address it checked (no second lookup an attacker could answer differently).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

WEBHOOK_EVENTS = ("start", "progress", "completed")
EVENT_OF_KIND = {  # job event kind (shared/service/events.py) -> the webhook event it triggers
    "started": "start",
    "progress": "progress",
    "finished": "completed",
    "failed": "completed",
    "canceled": "completed",
}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedDestinationError(ValueError):
    """The URL may not be called: bad scheme, not on the allow-list, or an address that is not allowed."""


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value of one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


@dataclass(frozen=True)
class AllowList:
    hosts: tuple[str, ...]  # lower-case names; "*.example.com" matches any name under example.com
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Sequence[str]) -> AllowList:
        hosts, networks = [], []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.append(entry.strip().lower().rstrip("."))
        return cls(tuple(hosts), tuple(networks))

    def host_listed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.hosts)

    def network_of(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.networks)


def parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL with a host; RefusedDestinationError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RefusedDestinationError(f"not a URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedDestinationError("a webhook is an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise RefusedDestinationError("a webhook URL carries no user name or password")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _global(address: IPAddress) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_global and not (mapped or address).is_multicast


def check_addresses(host: str, addresses: Sequence[IPAddress], allow: AllowList) -> None:
    """RefusedDestinationError unless every address `host` resolved to may be called."""
    if not addresses:
        raise RefusedDestinationError(f"{host} resolves to no address")
    listed_host = allow.host_listed(host)
    for address in addresses:
        in_network = allow.network_of(address)
        if not _global(address) and not in_network:
            raise RefusedDestinationError(
                f"{host} resolves to {address}, a private, loopback or link-local address that is not allowed"
            )
        if not (listed_host or in_network):
            raise RefusedDestinationError(f"{host} ({address}) is not on the webhook allow-list")


Resolver = Callable[[str, int], list[IPAddress]]


def check_url(url: str, allow_entries: Sequence[str], resolver: Resolver | None = None) -> None:
    """The submit-time check: the URL's form, and the addresses its host resolves to now (blocking DNS: call it
    from a thread). A name on the list that does not resolve now passes (the send-time check decides)."""
    if not allow_entries:
        raise RefusedDestinationError("webhooks are off on this service (no destinations are allowed)")
    _, host, port = parse_url(url)
    allow = AllowList.parse(allow_entries)
    if not allow.networks and not allow.host_listed(host):
        raise RefusedDestinationError(f"{host} is not on the webhook allow-list")  # no lookup needed to know
    try:
        addresses = (resolver or resolve)(host, port)
    except OSError as exc:
        if allow.host_listed(host):
            return
        raise RefusedDestinationError(f"{host} does not resolve: {exc}") from exc
    check_addresses(host, addresses, allow)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address of `host` (blocking: call it from a thread)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
