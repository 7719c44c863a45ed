"""The input policy's judgement of names and addresses: which remote URLs a submission may
make the service or a run reach (no link-local or cloud-metadata address ever; under a
bare-scheme prefix such as the default https://, public addresses only), and which
attachment names may land in a run. Shared by staging, TRS and DRS resolution."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import PurePosixPath
from urllib.parse import urlparse

from wes_gateway.config import Settings
from wes_gateway.errors import BadRequest

# Linux's limits, less room for the run directory the name lands in.
NAME_MAX = 255
PATH_MAX = 3072


def safe_relative_name(name: str) -> PurePosixPath:
    """An attachment name as a relative path inside the run, verbatim but for '.' parts."""
    if not name or "\0" in name:
        raise BadRequest("workflow_attachment: every part needs a non-empty filename")
    if (
        name.startswith("/")
        or name.startswith("\\")
        or (len(name) > 1 and name[1] == ":" and name[0].isalpha() and name[2:3] in ("/", "\\"))
    ):
        raise BadRequest(f"workflow_attachment: absolute file name {name!r} is not allowed")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts) or not parts:
        raise BadRequest(f"workflow_attachment: file name {name!r} would land outside the run directory")
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in parts) or len(name) > PATH_MAX:
        raise BadRequest(
            f"workflow_attachment: file name {name[:80]!r}... is too long "
            f"(at most {NAME_MAX} bytes a component, {PATH_MAX} in all)"
        )
    return PurePosixPath(*parts)


# Cloud instance-metadata endpoints that no run may be pointed at, by name or address.
METADATA_HOSTS = {"metadata.google.internal", "metadata", "instance-data", "metadata.azure.com"}


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA_ADDRESSES = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}


def _carried(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address that an IPv4-mapped or NAT64 IPv6 address stands for, else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def blocked_address(text: str) -> bool:
    """Link-local and cloud-metadata addresses, in every spelling of them."""
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    for form in {address, _carried(address)}:
        if form.is_link_local or form in _METADATA_ADDRESSES:
            return True
    return False


def check_remote(url: str, what: str, admitted_by_prefix: bool = False) -> None:
    """Refuse URLs that reach link-local or metadata addresses (SSRF through the leader). A
    host that does not resolve now could resolve to anything later, so it is refused unless
    the deployment's own prefix allowlist admitted the URL."""

    try:
        host = (urlparse(url).hostname or "").lower()
    except ValueError:
        raise BadRequest(f"{what}: {url!r} is not a valid URL") from None
    if not host:
        raise BadRequest(f"{what}: {url!r} has no host")
    if host in METADATA_HOSTS:
        raise BadRequest(f"{what}: {host} is a metadata service and may not be used")
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        addresses = set()
        if not admitted_by_prefix and not _is_address(host):
            raise BadRequest(f"{what}: the host of {url!r} does not resolve") from None
    for candidate in addresses | {host}:
        if blocked_address(candidate):
            raise BadRequest(f"{what}: {url!r} points at a link-local or metadata address")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True


def _bare_scheme(prefix: str) -> bool:
    """A prefix that names no host (``https://``): it admits public hosts only."""
    scheme, sep, rest = prefix.partition("://")
    return bool(sep) and not rest and scheme.isalpha()


def _private_address(text: str) -> bool:
    try:
        address = _carried(ipaddress.ip_address(text.split("%")[0]))
    except ValueError:
        return False
    return not address.is_global


def check_public(url: str, what: str) -> None:
    """A URL that only a bare-scheme prefix admitted must reach a public host: never a
    private, loopback or link-local address (nor a name that does not resolve)."""

    host = (urlparse(url).hostname or "").lower()
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        raise BadRequest(f"{what}: the host of {url!r} does not resolve") from None
    if any(_private_address(address) for address in addresses | {host}):
        raise BadRequest(
            f"{what}: {url!r} is at a private or loopback address, which allowed_url_prefixes admits only "
            "when a prefix names that host"
        )


def check_prefixed(url: str, what: str, subject: str, settings: Settings, advice: str = "") -> None:
    """A remote document (workflow_url, $import, run:, WDL import) only under the deployment's
    allowed prefixes, and then still never at a blocked address; under a bare-scheme prefix
    (the default https://) only at a public one."""
    admitting = [prefix for prefix in settings.allowed_url_prefixes if url.startswith(prefix)]
    if not admitting:
        raise BadRequest(
            f"{subject} is not under an allowed URL prefix "
            f"({', '.join(settings.allowed_url_prefixes) or 'none are configured'}){advice}"
        )
    check_remote(url, what, admitted_by_prefix=True)
    if all(_bare_scheme(prefix) for prefix in admitting):
        check_public(url, what)
