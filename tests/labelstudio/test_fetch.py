"""Fetching images by URL: only allowed hosts, only public addresses unless named, no
redirect off the allow-list, credentials kept to their host, size and time limits."""

from __future__ import annotations

import ipaddress

import pytest

from service.errors import ImageFetchError, ImageTooLargeError, ImageUrlNotAllowedError
from service.gateway.labelstudio.fetch import FetchPolicy, ImageFetcher, UpstreamStatusError
from tests.labelstudio.image_server import image_server

IMAGE = b"\x89PNG not really, bytes are bytes"


def policy(*allowed: str, trusted: tuple[str, ...] = (), max_bytes: int = 1 << 20) -> FetchPolicy:
    return FetchPolicy.build(allowed, trusted_hosts=trusted, max_bytes=max_bytes, timeout_s=2)


async def fetch(p: FetchPolicy, url: str, headers: dict[str, str] | None = None) -> bytes:
    fetcher = ImageFetcher(p)
    try:
        return await fetcher.get(url, headers)
    finally:
        await fetcher.close()


async def test_a_named_address_is_fetched() -> None:
    with image_server() as server:
        server.files["/a.png"] = IMAGE
        assert await fetch(policy("127.0.0.1"), f"{server.url}/a.png") == IMAGE
        assert [s.path for s in server.seen] == ["/a.png"]


@pytest.mark.parametrize(
    ("allowed", "host", "why"),
    [
        ((), "127.0.0.1", "not allowed"),  # no allow-list at all
        (("images.example.com", "*.example.org"), "127.0.0.1", "not allowed"),  # others only
        (("localhost",), "localhost", "non-public address"),  # the name, not its address
        (("10.0.0.0/8",), "127.0.0.1", "not allowed"),  # another private network named
    ],
)
async def test_loopback_is_refused_unless_named(
    allowed: tuple[str, ...], host: str, why: str
) -> None:
    with image_server() as server:
        server.files["/a.png"] = IMAGE
        with pytest.raises(ImageUrlNotAllowedError, match=why):
            await fetch(policy(*allowed), f"http://{host}:{server.port}/a.png")
        assert server.seen == []  # refused before any connection


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
    ],
)
def test_non_public_addresses_need_a_setting_that_names_them(address: str) -> None:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    by_name = policy("images.example.com")
    assert not by_name.address_allowed("images.example.com", ip)
    assert policy(f"{ip}").address_allowed("images.example.com", ip)  # named: allowed
    trusted = policy(trusted=("labelstudio.internal",))
    assert trusted.address_allowed("labelstudio.internal", ip)  # ESAM_LABEL_STUDIO_URL's host
    assert policy("images.example.com").address_allowed("x", ipaddress.ip_address("8.8.8.8"))


async def test_a_literal_metadata_address_is_refused() -> None:
    with pytest.raises(ImageUrlNotAllowedError):
        await fetch(policy("*.amazonaws.com"), "http://169.254.169.254/latest/meta-data/")


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://127.0.0.1/a.png", "http://user:pw@127.0.0.1/a.png", "gopher://x"],
)
async def test_other_schemes_and_credentials_in_urls_are_refused(url: str) -> None:
    with pytest.raises(ImageUrlNotAllowedError):
        await fetch(policy("127.0.0.1"), url)


async def test_redirects_stay_on_the_allow_list_and_credentials_stay_home() -> None:
    with image_server("127.0.0.1") as home, image_server("127.0.0.2") as other:
        home.files["/a.png"] = IMAGE
        other.files["/b.png"] = IMAGE + b"b"
        # within the allowed host: followed, with its credentials
        same = f"{home.url}/redirect?to=/a.png"
        auth = {"Authorization": "Token secret"}
        assert await fetch(policy("127.0.0.1"), same, auth) == IMAGE
        assert [s.authorization for s in home.seen] == ["Token secret", "Token secret"]
        # to a host off the list: refused, never contacted
        off = f"{home.url}/redirect?to={other.url}/b.png"
        with pytest.raises(ImageUrlNotAllowedError):
            await fetch(policy("127.0.0.1"), off, auth)
        assert other.seen == []
        # to another allowed host: followed, without the first host's credentials
        assert await fetch(policy("127.0.0.1", "127.0.0.2"), off, auth) == IMAGE + b"b"
        assert [s.authorization for s in other.seen] == [None]


async def test_the_size_limit_holds_with_and_without_content_length() -> None:
    with image_server() as server:
        server.files["/big.png"] = b"\0" * 5000
        with pytest.raises(ImageTooLargeError):
            await fetch(policy("127.0.0.1", max_bytes=4096), f"{server.url}/big.png")
        with pytest.raises(ImageTooLargeError):
            await fetch(policy("127.0.0.1", max_bytes=4096), f"{server.url}/chunked?bytes=200000")
        body = await fetch(policy("127.0.0.1", max_bytes=4096), f"{server.url}/chunked?bytes=4000")
        assert body == b"\0" * 4000


@pytest.mark.slow
async def test_a_slow_host_times_out_and_an_error_status_is_reported() -> None:
    with image_server() as server:
        with pytest.raises(ImageFetchError, match="longer than 2 s"):
            await fetch(policy("127.0.0.1"), f"{server.url}/slow?s=5")
        with pytest.raises(UpstreamStatusError) as missing:
            await fetch(policy("127.0.0.1"), f"{server.url}/nothing.png")
        assert missing.value.upstream_status == 404
        assert missing.value.code == "image_fetch_failed"


async def test_the_connection_goes_to_the_checked_address_with_the_urls_host() -> None:
    with image_server() as server:
        server.files["/a.png"] = IMAGE
        # "localhost" named as a host and its address named too: allowed; the request
        # still says Host: localhost:<port> (virtual hosts, TLS names keep working)
        p = policy("localhost", "127.0.0.1", "::1")
        assert await fetch(p, f"http://localhost:{server.port}/a.png") == IMAGE
        assert server.seen[-1].host == f"localhost:{server.port}"


@pytest.mark.slow
async def test_a_slow_host_within_the_timeout_is_waited_for() -> None:
    # longer than httpx's own default (5 s): the policy's timeout is the one that counts
    with image_server() as server:
        server.files["/a.png"] = IMAGE
        p = FetchPolicy.build(["127.0.0.1"], max_bytes=1 << 20, timeout_s=9)
        assert await fetch(p, f"{server.url}/slow?s=5.5&then=/a.png") == IMAGE
