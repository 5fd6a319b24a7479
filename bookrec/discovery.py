"""Serving instances behind one DNS name: ``dns+http://name:port`` stands for every address
the name resolves to.

In production each API task registers an A record under one private name (AWS Cloud Map,
multivalue), and the reload flow must reach every task, not whichever one a load balancer
picks; so ``BOOKREC_SERVING_URLS`` names the service once and is expanded here, at the
moment the flow runs. Plain ``http(s)://`` URLs pass through unchanged.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

_PREFIX = "dns+"


class DiscoveryError(RuntimeError):
    """A ``dns+`` URL is malformed or its name does not resolve."""


def expand_urls(urls: list[str]) -> list[str]:
    """``urls`` with each ``dns+http(s)://name:port`` replaced by one URL per address of
    ``name`` (sorted, no duplicates); other URLs are kept as they are, in order."""
    expanded: list[str] = []
    for url in urls:
        found = _expand(url) if url.startswith(_PREFIX) else [url]
        expanded.extend(u for u in found if u not in expanded)
    return expanded


def _expand(url: str) -> list[str]:
    parts = urlsplit(url[len(_PREFIX) :])
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise DiscoveryError(f"{url}: expected dns+http://name:port or dns+https://name:port")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DiscoveryError(f"{url}: {parts.hostname} does not resolve ({exc})") from exc
    addresses = sorted({info[4][0] for info in infos}, key=ipaddress.ip_address)
    rest = parts.path.rstrip("/")
    return [f"{parts.scheme}://{f'[{a}]' if ':' in a else a}:{parts.port}{rest}" for a in addresses]
