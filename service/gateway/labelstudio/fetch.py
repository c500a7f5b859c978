"""Fetching a task's image by URL without becoming an SSRF proxy.

A URL is fetched only when

* its scheme is http or https and it names no user:password;
* its host is Label Studio's own (``ESAM_LABEL_STUDIO_URL``) or matches an entry of
  ``ESAM_FETCH_ALLOWED_HOSTS`` (a host name, ``*.example.com``, an IP address or a CIDR);
* every address the host resolves to is public (``ipaddress``' ``is_global``: no
  loopback, private, link-local — the cloud metadata service at 169.254.169.254 —,
  shared, reserved or multicast address), unless a setting names that address: an IP or
  CIDR entry of the allow-list, or the address of the host ``ESAM_LABEL_STUDIO_URL`` names.

The connection goes to the address that was checked (the Host header and TLS server
name stay the URL's), so a second DNS answer cannot swap in another. Redirects are
followed by hand, at most three, each through the same checks. The body is read up to
``ESAM_MAX_IMAGE_BYTES`` (then 413, as ``/embed``), all within ``ESAM_FETCH_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from service.errors import ImageFetchError, ImageTooLargeError, ImageUrlNotAllowedError

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class FetchPolicy:
    host_names: frozenset[str]  # exact, lower case
    host_suffixes: tuple[str, ...]  # from "*.example.com": ".example.com"
    networks: tuple[IpNetwork, ...]  # named addresses: may be private
    trusted_hosts: frozenset[str]  # named by a setting (Label Studio's): may be private
    max_bytes: int
    timeout_s: float

    @classmethod
    def build(
        cls,
        allowed: Sequence[str],
        *,
        trusted_hosts: Sequence[str] = (),
        max_bytes: int,
        timeout_s: float,
    ) -> FetchPolicy:
        names, suffixes, networks = set(), [], []
        for entry in (e.strip().lower() for e in allowed if e.strip()):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry)
        trusted = frozenset(h.lower() for h in trusted_hosts)
        return cls(
            frozenset(names | trusted),
            tuple(suffixes),
            tuple(networks),
            trusted,
            max_bytes,
            timeout_s,
        )

    def host_allowed(self, host: str) -> bool:
        host = host.lower()
        if host in self.host_names or any(host.endswith(s) for s in self.host_suffixes):
            return True
        literal = _ip(host)
        return literal is not None and self.named(literal)

    def named(self, address: IpAddress) -> bool:
        return any(address in network for network in self.networks)

    def address_allowed(self, host: str, address: IpAddress) -> bool:
        public = address.is_global and not address.is_multicast
        return public or self.named(address) or host.lower() in self.trusted_hosts


def _ip(text: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


async def _resolve(host: str, port: int) -> list[IpAddress]:
    literal = _ip(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ImageFetchError(f"image URL host {host!r} does not resolve: {exc}") from exc
    found: list[IpAddress] = []
    for info in infos:
        address = _ip(str(info[4][0]))
        if address is not None and address not in found:
            found.append(address)
    return found


async def checked_addresses(url: httpx.URL, policy: FetchPolicy) -> list[IpAddress]:
    """The addresses to connect to for ``url`` (all checked), or
    :class:`ImageUrlNotAllowedError` when any of them is not allowed."""
    if url.scheme not in ("http", "https"):
        raise ImageUrlNotAllowedError(f"image URL scheme {url.scheme!r}: only http and https")
    if url.userinfo:
        raise ImageUrlNotAllowedError("image URL with credentials in it")
    host = url.host
    if not host or not policy.host_allowed(host):
        raise ImageUrlNotAllowedError(
            f"image URL host {host!r} is not allowed: add it to ESAM_FETCH_ALLOWED_HOSTS"
        )
    addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80))
    if not addresses:
        raise ImageFetchError(f"image URL host {host!r} resolves to no address")
    refused = [a for a in addresses if not policy.address_allowed(host, a)]
    if refused:
        raise ImageUrlNotAllowedError(
            f"image URL host {host!r} resolves to a non-public address ({refused[0]}); "
            "name the address (or its network) in ESAM_FETCH_ALLOWED_HOSTS to allow it"
        )
    return addresses


def _pinned(url: httpx.URL, address: IpAddress) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The URL with the checked address as host, the Host header, the TLS server name."""
    host = f"[{url.host}]" if ":" in url.host else url.host  # an IPv6 literal: bracketed
    host_header = host if url.port is None else f"{host}:{url.port}"
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return url.copy_with(host=str(address)), {"Host": host_header}, extensions


class UpstreamStatusError(ImageFetchError):
    """The image's host answered, with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.upstream_status = status


class ImageFetcher:
    """GET an image under a :class:`FetchPolicy` (the caller passes any credentials)."""

    def __init__(self, policy: FetchPolicy, client: httpx.AsyncClient | None = None) -> None:
        self.policy = policy
        # the policy's timeout bounds the whole fetch; httpx's own (5 s) must not cut it short
        self._client = client or httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=policy.timeout_s
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> bytes:
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await self._get(httpx.URL(url), dict(headers or {}))
        except TimeoutError as exc:
            raise ImageFetchError(
                f"fetching {url} took longer than {self.policy.timeout_s:g} s "
                "(ESAM_FETCH_TIMEOUT_S)"
            ) from exc
        except httpx.InvalidURL as exc:
            raise ImageUrlNotAllowedError(f"not a valid image URL: {url!r}") from exc

    async def _get(self, url: httpx.URL, headers: dict[str, str]) -> bytes:
        origin = (url.scheme, url.host, url.port)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send(url, headers)
            try:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    url = url.join(response.headers["location"])
                    if (url.scheme, url.host, url.port) != origin:
                        headers = {}  # credentials stay with the host they were meant for
                    continue
                if response.status_code != 200:
                    raise UpstreamStatusError(
                        f"fetching {url}: HTTP {response.status_code}", response.status_code
                    )
                return await self._read(response, url)
            finally:
                await response.aclose()
        raise ImageFetchError(f"fetching {url}: more than {MAX_REDIRECTS} redirects")

    async def _send(self, url: httpx.URL, headers: dict[str, str]) -> httpx.Response:
        """GET ``url`` from the first of its checked addresses that accepts a connection."""
        failure: httpx.HTTPError | None = None
        for address in await checked_addresses(url, self.policy):
            target, host, extensions = _pinned(url, address)
            request = self._client.build_request(
                "GET", target, headers={**headers, **host}, extensions=extensions
            )
            try:
                return await self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                failure = exc  # the next address, as a client would
            except httpx.HTTPError as exc:
                raise ImageFetchError(f"fetching {url}: {type(exc).__name__}: {exc}") from exc
        raise ImageFetchError(f"fetching {url}: no address accepted a connection ({failure})")

    async def _read(self, response: httpx.Response, url: httpx.URL) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageTooLargeError(
                f"image at {url} has {declared} bytes; the limit is {limit} (ESAM_MAX_IMAGE_BYTES)"
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise ImageTooLargeError(
                    f"image at {url} is larger than {limit} bytes (ESAM_MAX_IMAGE_BYTES)"
                )
        return bytes(body)
