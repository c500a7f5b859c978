"""``ESAM_TRITON_URL``'s entries, parsed by the one parser that Settings validates with at
start-up and the Triton client connects by."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

#: a host name, an IPv4 address or a bracketed IPv6 one
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)$")


@dataclass(frozen=True)
class Target:
    """One entry of ``ESAM_TRITON_URL``: scheme, host (a name or an address), port."""

    protocol: str
    host: str
    port: int

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse_targets(urls: str) -> list[Target]:
    """``grpc://a:8001,grpc://b:8001`` → targets; one scheme for all of them."""
    targets = []
    for raw in (u.strip() for u in urls.split(",")):
        if not raw:
            continue
        scheme, sep, rest = raw.partition("://")
        protocol, hostport = (scheme, rest) if sep else ("grpc", raw)
        if protocol not in ("grpc", "http"):
            raise ValueError(f"unknown scheme {protocol!r} in {raw!r} (grpc:// or http://)")
        host, colon, port = hostport.rpartition(":")
        if not colon or not port.isdigit() or not host or not 0 < int(port) < 65536:
            raise ValueError(f"{raw!r} needs host:port")
        if not _HOST.match(host):
            raise ValueError(f"{raw!r}: {host!r} is neither a host name nor an address")
        targets.append(Target(protocol, host.strip("[]"), int(port)))
    if not targets:
        raise ValueError("no Triton address given")
    if len({t.protocol for t in targets}) > 1:
        raise ValueError("use one scheme (grpc:// or http://) for every Triton address")
    return targets
