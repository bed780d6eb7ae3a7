"""What the gateway accepts, and how it refuses the rest. Plain module: no Dagster.

Every refusal is an :class:`InputError` carrying an HTTP status and a message that names the
input; nothing here echoes a URL's query string or credentials (a presigned URL's signature is a
secret), only ``scheme://host[:port]/path``.

URLs: ``http``/``https`` only, no credentials in them; the host is resolved here and every address
checked (loopback, link-local such as the cloud metadata service at 169.254.169.254, private,
reserved and multicast addresses are refused unless ``allow_private``); the request then goes to
the checked address (so a second DNS answer cannot swap it), with the original name as ``Host``
and TLS server name. Redirects are followed by hand, each hop checked the same way. Size and
time are capped for the whole download.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass

from .. import layout
from ..core.storage import ObjectStore

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
ID_MAX = 2**63 - 1  # ids (and a copy's number) are 64-bit integers wherever they are stored
DIGEST = re.compile(r"[0-9a-f]{1,64}")  # an augmented set's spec hash


class InputError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = DEFAULT_TIMEOUT_S
    allow_private: bool = False  # every address allowed: tests and in-cluster sources only
    allowed_networks: tuple[str, ...] = ()  # or just these (CIDR), e.g. an in-cluster image server

    def refuses(self, address: str) -> str | None:
        """Why ``address`` may not be fetched from under this policy; None when it may."""
        if self.allow_private:
            return None
        ip = ipaddress.ip_address(address)
        if any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_networks):
            return None
        return forbidden_reason(address)


def shown_url(url) -> str:
    """``scheme://host[:port]/path`` of an ``httpx.URL``: never the query, fragment or user info."""
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


def forbidden_reason(address: str) -> str | None:
    """Why an address may not be fetched from by default; None when it is a public one."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for reason, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                         ("private", ip.is_private), ("multicast", ip.is_multicast),
                         ("unspecified", ip.is_unspecified), ("reserved", ip.is_reserved)):
        if flag:
            return reason
    return None if ip.is_global else "not a public"


async def resolve_checked(host: str, port: int, policy: FetchPolicy) -> str:
    """The first address ``host`` resolves to, once every address it resolves to is allowed."""
    import anyio

    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InputError(400, f"cannot resolve host {host!r}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise InputError(400, f"cannot resolve host {host!r}")
    for address in addresses:
        reason = policy.refuses(address)
        if reason:
            raise InputError(403, f"host {host!r} resolves to {address}, a {reason} address: not fetched")
    return addresses[0]


async def fetch_url(client, raw_url: str, policy: FetchPolicy) -> bytes:
    """The body at ``raw_url`` (an ``httpx.AsyncClient`` does the HTTP), within the policy."""
    import anyio
    import httpx

    try:
        with anyio.fail_after(policy.timeout_s):
            return await _fetch(client, raw_url, policy)
    except TimeoutError:
        shown = shown_url(httpx.URL(raw_url)) if isinstance(raw_url, str) else "url"
        raise InputError(408, f"{shown}: download did not finish within {policy.timeout_s:g} s") from None


async def _fetch(client, raw_url: str, policy: FetchPolicy) -> bytes:
    import httpx

    if not isinstance(raw_url, str) or not raw_url:
        raise InputError(400, "'url' must be a non-empty string")
    try:
        url = httpx.URL(raw_url)
    except Exception:
        raise InputError(400, "'url' is not a valid URL") from None
    for _ in range(MAX_REDIRECTS + 1):
        if url.scheme not in ("http", "https"):
            raise InputError(400, f"only http and https URLs are fetched, not {url.scheme or 'no scheme'!r}")
        if not url.host:
            raise InputError(400, "the URL has no host")
        if url.userinfo:
            raise InputError(400, f"{shown_url(url)}: credentials in URLs are not accepted")
        port = url.port or (443 if url.scheme == "https" else 80)
        address = await resolve_checked(url.host, port, policy)
        pinned = url.copy_with(host=address)
        headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*"}
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
        try:
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise InputError(400, f"{shown_url(url)}: cannot download ({type(exc).__name__})") from None
        try:
            if response.is_redirect and "location" in response.headers:
                url = url.join(response.headers["location"])
                continue
            if response.status_code != 200:
                raise InputError(400, f"{shown_url(url)}: answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise InputError(413, f"{shown_url(url)}: {int(declared):,} bytes is over the "
                                      f"{policy.max_bytes:,}-byte limit")
            chunks, total = [], 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > policy.max_bytes:
                    raise InputError(413, f"{shown_url(url)}: more than the {policy.max_bytes:,}-byte limit")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()
    raise InputError(400, f"more than {MAX_REDIRECTS} redirects")


def shown_key(key: str) -> str:
    """``key`` as error messages show it: whole up to 100 characters, else its ends."""
    return repr(key) if len(key) <= 100 else f"{key[:60]!r}...{key[-20:]!r} ({len(key):,} characters)"


def key_problem(key: str) -> str | None:
    """Why an image key (``layout.is_image_key``) cannot name anything the pipeline stores: a set
    name that is not a query name, a spec hash over 64 digits, or an id or copy number beyond 64
    bits. None when it can."""
    parts = key.split("/")
    if parts[0] == "image-sets" and not layout.QUERY_NAME.fullmatch(parts[1]):
        return f"{parts[1][:70]!r} is not a set's name (1-64 lower-case letters, digits and '-')"
    if len(parts) == 5 and not DIGEST.fullmatch(parts[3]):
        return "an augmented set's folder is a spec hash of at most 64 hex digits"
    for digits in re.findall(r"[0-9]+", parts[-1].split(".")[0]):
        if len(digits) > 19 or int(digits) > ID_MAX:
            return (f"the {len(digits):,}-digit number in its name is outside the range of ids "
                    f"(64-bit integers, at most {ID_MAX:,})")
    return None


def read_key(store: ObjectStore, key, max_bytes: int) -> bytes:
    """A product image from the store by key; only image keys (``layout.is_image_key``) whose
    names fit what the pipeline stores (``key_problem``) are read."""
    if not isinstance(key, str) or not key:
        raise InputError(400, "'key' must be a non-empty string")
    if not layout.is_image_key(key):
        raise InputError(400, f"key {shown_key(key)} does not name a product image in the store "
                              "(catalog/images/<id>.jpg, or an image set's images)")
    problem = key_problem(key)
    if problem:
        raise InputError(400, f"key {shown_key(key)} cannot name a product image: {problem}")
    try:
        if not store.exists(key):
            raise InputError(404, f"no object {key!r} in the store")
        data = store.get_bytes(key)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # a path the local store's file system cannot hold
            raise InputError(400, f"key {shown_key(key)} is too long for the store's file system") from None
        raise
    if len(data) > max_bytes:
        raise InputError(413, f"key {key!r}: {len(data):,} bytes is over the {max_bytes:,}-byte limit")
    return data
