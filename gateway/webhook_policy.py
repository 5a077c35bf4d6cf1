"""Which addresses a webhook may reach (security review M6): by default only public ones.

A webhook URL may not carry credentials, and its host may not be (or resolve to) a loopback,
link-local (169.254.169.254 included), private, unique-local, shared, multicast or otherwise
non-global address, unless the gateway's `webhook_allow` setting names that host or a network
holding it. The check runs at submit (422) and again at each delivery, which connects to the
address it checked (the URL's host stays in the Host header and the TLS name), so a name that
resolves elsewhere by then does not lead inside the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
RESOLVE_TIMEOUT_S = 2.0


class WebhookRefused(ValueError):
    """The URL may not be called from this gateway."""


class Unresolvable(WebhookRefused):
    """The URL's host does not resolve (now): nothing can be said about where it leads."""


class WebhookPolicy:
    def __init__(self, allow: list[str]) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: set[str] = set()
        for item in allow:
            try:
                self.networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                self.hosts.add(item.strip().lower())

    def _allowed(self, host: str, address: Address) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_global and not address.is_multicast:
            return True
        return host.lower() in self.hosts or any(address in net for net in self.networks)

    @staticmethod
    def host_of(url: str) -> tuple[str, int]:
        """(host, port) of an http(s) URL without credentials, or WebhookRefused."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise WebhookRefused(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookRefused("must be an http or https URL with a host")
        if parts.username is not None or parts.password is not None:
            raise WebhookRefused("may not carry credentials (user:password@); sign with the webhook secret instead")
        try:
            parts.hostname.encode("idna")  # what the resolver will do with it (the fuzzer sent '\x8a')
        except UnicodeError:
            raise WebhookRefused(f"host {parts.hostname!r} is not a valid host name") from None
        return parts.hostname, port

    async def addresses(self, url: str) -> tuple[str, list[Address]]:
        """The URL's host and the addresses it may be reached at now; WebhookRefused when
        any address it resolves to is not allowed, Unresolvable when it resolves to none."""
        host, port = self.host_of(url)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise Unresolvable(f"host {host!r} does not resolve: {exc}") from None
        found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        refused = [a for a in found if not self._allowed(host, a)]
        if refused:
            raise WebhookRefused(f"host {host!r} resolves to {refused[0]}, which is not a public address "
                                 "(the gateway setting webhook_allow opens it)")
        return host, found
