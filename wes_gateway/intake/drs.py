"""Inputs named by GA4GH DRS URIs, fetched at submission into the run's attachments.

Accepted wherever a file may be named in ``workflow_params`` (CWL ``location``/``path``, WDL
``File`` inputs, in arrays and records too: every reference goes through the input policy,
``staging.Admission.input``):

- ``drs://HOST/ID``: through the ``drs_resolvers`` entry named HOST (a host name, with port
  if any); a host with no entry through ``https://HOST/ga4gh/drs/v1``, as the DRS spec says,
  and only where ``allowed_url_prefixes`` admits that URL;
- ``drs://NAME:ID`` (a compact id): through the ``drs_resolvers`` entry NAME.

The object is read with DRS 1.x, ``GET BASE/objects/ID``; its bytes come from an
``access_url`` or, for an ``access_id``, the URL ``BASE/objects/ID/access/ACCESS_ID`` hands
out. Every access URL, and every redirect from it, must pass ``allowed_url_prefixes`` as any
http input does. The bytes are checked against the object's sha-256 (else md5) checksum,
written among the run's attachments under ``.drs/N/NAME`` (counted against
``max_attachment_bytes`` and ``max_attachment_file_bytes``), and the reference in the params
becomes that file. What was fetched (URI, file, checksum) is kept in the run's control
directory and shown in the RunLog's ``system_logs``. Bundles (objects with ``contents``) are
refused: they are not supported.

Why at submission, in the web request's thread, and not a Toil ``url_access`` plugin for the
``drs`` scheme in the leader: a bearer token of ``drs_credentials`` must never reach a run,
and the leader runs sandboxed as the run's own unprivileged user, where anything the plugin
could read the workflow's steps could read too; the plugin would also have to be importable
and registered in every leader and every batch job that imports files (Toil's CWL front end
imports inputs in the leader, its WDL front end may do so in a job), where here one code path
serves both languages. At submission a client learns at once, as a 400, that an object is
unknown, a host not allowed or a checksum wrong (a 503 with Retry-After while the DRS server
is down), instead of a run that fails later; the run is then made of files like any other and
never depends on the DRS server again (a restart, a retry). As with TRS (``trs.py``), the
handler runs in a WSGI thread, never the event loop, and the whole resolution is bounded:
``drs_timeout`` seconds for all of a submission's objects, and the attachment byte limits.
The token is sent only to its own DRS server's API (``BASE/...``), never to an access URL nor
across a redirect that leaves ``BASE``, and is never logged nor written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlparse

import requests

from wes_gateway.config import Settings
from wes_gateway.errors import BadRequest, PayloadTooLarge, Unavailable
from wes_gateway.files.paths import RunPaths
from wes_gateway.intake.inputpolicy import check_prefixed

SCHEME = "drs://"
DEFAULT_BASE = "https://{host}/ga4gh/drs/v1"
MAX_REDIRECTS = 5
SOCKET_TIMEOUT = 5.0
RETRY_AFTER = "30"
CHUNK = 1024 * 1024
MAX_JSON = 1024 * 1024
NAME_MAX = 255


def is_drs(reference: str) -> bool:
    return reference[: len(SCHEME)].lower() == SCHEME


@dataclass(frozen=True)
class Target:
    uri: str
    base: str  # the DRS API base URL
    object_id: str
    name: str | None  # the drs_resolvers entry, if one names the server


@dataclass
class Fetched:
    """One DRS input as the run got it; kept in the run's control directory."""

    uri: str
    server: str
    object_id: str
    file: str  # relative to the run's attachments
    size: int
    sha256: str
    checksum: str  # the checksum verified, "TYPE:VALUE", or "" when the object gave none usable


def _resolvers(settings: Settings) -> dict[str, str]:
    return {name.lower(): base.rstrip("/") for name, base in settings.drs_resolvers.items()}


def usable(settings: Settings) -> bool:
    """Whether a drs:// input can resolve here at all: some DRS server may be reached (one in
    drs_resolvers, or https://HOST/ga4gh/drs/v1 under an https prefix) and an access URL may
    pass allowed_url_prefixes (every one is held to it)."""
    prefixes = settings.allowed_url_prefixes
    return bool(prefixes) and (
        bool(settings.drs_resolvers) or any(prefix.lower().startswith("https://") for prefix in prefixes)
    )


def parse(uri: str, settings: Settings) -> Target:
    """The server and object a DRS URI names, under the input policy; nothing is fetched."""

    resolvers = _resolvers(settings)
    rest = uri[len(SCHEME) :]
    netloc, slash, object_id = rest.partition("/")
    if slash and netloc.lower() in resolvers:
        return Target(uri, resolvers[netloc.lower()], unquote(object_id), netloc.lower())
    prefix, colon, accession = rest.partition(":")
    if colon and prefix.lower() in resolvers and accession:
        return Target(uri, resolvers[prefix.lower()], unquote(accession), prefix.lower())
    if not slash or not object_id or not netloc:
        raise BadRequest(
            f"workflow_params: {uri!r} is neither drs://HOST/ID nor drs://NAME:ID with NAME in drs_resolvers "
            f"({', '.join(resolvers) or 'none are configured'})"
        )
    try:
        parsed = urlparse(f"https://{netloc}/")
        valid = bool(parsed.hostname) and parsed.username is None and (parsed.port or 0) >= 0
    except ValueError:
        valid = False
    if not valid:
        raise BadRequest(f"workflow_params: {uri!r} does not name a DRS host")
    base = DEFAULT_BASE.format(host=netloc)
    check_prefixed(
        f"{base}/objects/{quote(unquote(object_id), safe='')}",
        "workflow_params",
        f"the DRS server of {uri!r} ({base})",
        settings,
        "; name it in drs_resolvers to allow it",
    )
    return Target(uri, base, unquote(object_id), None)


def _credentials(settings: Settings) -> dict[str, str]:
    """DRS server name -> bearer token, from the drs_credentials file (never logged)."""
    if not settings.drs_credentials:
        return {}
    try:
        found = json.loads(Path(settings.drs_credentials).read_text())
    except (OSError, ValueError):
        raise Unavailable(
            "workflow_params: the service's drs_credentials file cannot be read", {"Retry-After": RETRY_AFTER}
        ) from None
    tokens: dict[str, str] = {}
    for name, entry in found.items() if isinstance(found, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("bearer"), str):
            tokens[str(name).lower()] = entry["bearer"]
    return tokens


def _safe_name(text: str) -> str | None:
    name = text.replace("\\", "/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\0" in name or len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return None
    return name


class Resolver:
    """The DRS inputs of one submission: one deadline, the attachments' byte budget."""

    def __init__(self, attachments: Path, settings: Settings) -> None:
        self.attachments = attachments
        self.settings = settings
        self.deadline = time.monotonic() + settings.drs_timeout
        self.fetched: dict[str, Fetched] = {}
        self._tokens: dict[str, str] | None = None
        self._budget: int | None = None

    # -- HTTP --------------------------------------------------------------------------------

    def _down(self, target: Target, why: str) -> Unavailable:
        return Unavailable(
            f"workflow_params: DRS object {target.uri!r}: {why}; try again later", {"Retry-After": RETRY_AFTER}
        )

    def _late(self, target: Target) -> Unavailable:
        return self._down(target, f"not fetched within {self.settings.drs_timeout:g} s (drs_timeout)")

    def _open(
        self, target: Target, url: str, headers: dict[str, str], api: bool, consume: Callable[[requests.Response], Any]
    ) -> tuple[int, Any]:
        """GET ``url`` following redirects by hand: the token only to the server's own API, every
        other URL (an access URL, a redirect away from the API) under allowed_url_prefixes."""

        session = requests.Session()
        session.trust_env = False  # no ~/.netrc credentials sent anywhere
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                own = api and url.startswith(target.base + "/")
                sent = dict(headers)
                if own and target.name is not None:
                    if self._tokens is None:
                        self._tokens = _credentials(self.settings)
                    token = self._tokens.get(target.name)
                    if token:
                        sent["Authorization"] = f"Bearer {token}"
                if not own or target.name is None:
                    check_prefixed(url, "workflow_params", f"DRS object {target.uri!r}: URL {url!r}", self.settings)
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise self._late(target)
                try:
                    response = session.get(
                        url, headers=sent, timeout=min(remaining, SOCKET_TIMEOUT), stream=True, allow_redirects=False
                    )
                    with response:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        return response.status_code, consume(response)
                except requests.Timeout:
                    raise self._late(target) from None
                except requests.RequestException as exc:
                    raise self._down(
                        target, f"{urlparse(url).netloc} could not be reached ({type(exc).__name__})"
                    ) from None
            raise self._down(target, f"redirected more than {MAX_REDIRECTS} times")
        finally:
            session.close()

    def _json(self, target: Target, url: str, what: str) -> Any:
        def read(response: requests.Response) -> bytes:
            body = bytearray()
            for chunk in response.iter_content(64 * 1024):
                body.extend(chunk)
                if len(body) > MAX_JSON:
                    raise BadRequest(
                        f"workflow_params: DRS object {target.uri!r}: {what} is larger than {MAX_JSON} bytes"
                    )
                if time.monotonic() > self.deadline:
                    raise self._late(target)
            return bytes(body)

        status, body = self._open(target, url, {"Accept": "application/json"}, True, read)
        if status >= 500:
            raise self._down(target, f"the DRS server {target.base} answered {status} for {what}")
        if status == 404:
            raise BadRequest(f"workflow_params: DRS object {target.object_id!r} is not known to {target.base} (404)")
        if status in (401, 403):
            raise BadRequest(
                f"workflow_params: the DRS server {target.base} refused {what} of {target.uri!r} ({status})"
            )
        if status != 200:
            raise BadRequest(
                f"workflow_params: the DRS server {target.base} answered {status} for {what} of {target.uri!r}"
            )
        try:
            return json.loads(body)
        except ValueError:
            raise BadRequest(f"workflow_params: the DRS server {target.base} sent no JSON for {what}") from None

    # -- resolution --------------------------------------------------------------------------

    def input(self, uri: str) -> str:
        """The local path of the DRS object ``uri`` names, fetched and verified (once a submission)."""
        if uri not in self.fetched:
            self.fetched[uri] = self._fetch(parse(uri, self.settings))
        return str(self.attachments / self.fetched[uri].file)

    def _access(self, target: Target, document: dict[str, Any]) -> tuple[str, dict[str, str]]:
        methods = document.get("access_methods")
        usable = [m for m in methods if isinstance(m, dict)] if isinstance(methods, list) else []
        object_url = f"{target.base}/objects/{quote(target.object_id, safe='')}"
        for method in usable:
            access = method.get("access_url")
            if isinstance(access, dict) and isinstance(access.get("url"), str):
                if urlparse(access["url"]).scheme.lower() in ("http", "https"):
                    return access["url"], _headers(access.get("headers"))
        for method in usable:
            access_id = method.get("access_id")
            if (
                isinstance(access_id, str)
                and access_id
                and str(method.get("type", "")).lower() in ("http", "https", "")
            ):
                found = self._json(target, f"{object_url}/access/{quote(access_id, safe='')}", "the access URL")
                if isinstance(found, dict) and isinstance(found.get("url"), str):
                    if urlparse(found["url"]).scheme.lower() in ("http", "https"):
                        return found["url"], _headers(found.get("headers"))
        kinds = sorted({str(m.get("type")) for m in usable})
        raise BadRequest(
            f"workflow_params: DRS object {target.uri!r} has no http(s) access method "
            f"(it offers {', '.join(kinds) or 'none'})"
        )

    def _remaining_bytes(self) -> int:
        if self._budget is None:
            used = sum(p.stat().st_size for p in self.attachments.rglob("*") if p.is_file() and not p.is_symlink())
            self._budget = self.settings.max_attachment_bytes - used
        return self._budget

    def _new_directory(self) -> Path:
        """A directory of its own for one fetched object (two objects may share a name)."""
        index = 0
        while True:
            directory = self.attachments / ".drs" / str(index)
            try:
                directory.mkdir(parents=True)
                return directory
            except FileExistsError:
                index += 1

    def _fetch(self, target: Target) -> Fetched:
        object_url = f"{target.base}/objects/{quote(target.object_id, safe='')}"
        document = self._json(target, object_url, "the object")
        if not isinstance(document, dict):
            raise BadRequest(f"workflow_params: the DRS server {target.base} sent no object for {target.uri!r}")
        if document.get("contents"):
            raise BadRequest(
                f"workflow_params: DRS object {target.uri!r} is a bundle; bundles are not supported, "
                "name each of its objects instead"
            )
        url, headers = self._access(target, document)
        name = _safe_name(str(document.get("name") or "")) or _safe_name(target.object_id) or "object"
        destination = self._new_directory() / name
        limit = min(self.settings.max_attachment_file_bytes, self._remaining_bytes())
        sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)

        def download(response: requests.Response) -> int:
            if response.status_code != 200:
                return 0
            size = 0
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as out:
                for chunk in response.iter_content(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"workflow_params: DRS object {target.uri!r} is larger than the attachments may hold "
                            f"({self.settings.max_attachment_file_bytes} bytes a file, "
                            f"{self.settings.max_attachment_bytes} in all)"
                        )
                    if time.monotonic() > self.deadline:
                        raise self._late(target)
                    sha256.update(chunk)
                    md5.update(chunk)
                    out.write(chunk)
            return size

        status, size = self._open(target, url, headers, False, download)
        if status >= 500:
            raise self._down(target, f"its access URL answered {status}")
        if status != 200:
            raise BadRequest(f"workflow_params: DRS object {target.uri!r}: its access URL answered {status}")
        assert self._budget is not None
        self._budget -= size
        checksum = _verify(target, document, {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()})
        return Fetched(
            uri=target.uri,
            server=target.base,
            object_id=target.object_id,
            file=str(destination.relative_to(self.attachments)),
            size=size,
            sha256=sha256.hexdigest(),
            checksum=checksum,
        )


def _headers(value: Any) -> dict[str, str]:
    """An access URL's headers, given by the DRS server for that URL (``"Name: value"``)."""
    headers: dict[str, str] = {}
    for item in value if isinstance(value, list) else []:
        if isinstance(item, str) and ":" in item:
            key, _, text = item.partition(":")
            headers[key.strip()] = text.strip()
    return headers


def _verify(target: Target, document: dict[str, Any], computed: dict[str, str]) -> str:
    given: dict[str, str] = {}
    checksums = document.get("checksums")
    for item in checksums if isinstance(checksums, list) else []:
        if isinstance(item, dict) and isinstance(item.get("checksum"), str) and isinstance(item.get("type"), str):
            given[item["type"].lower().replace("-", "").replace("_", "")] = item["checksum"].lower()
    for kind, label in (("sha256", "sha-256"), ("md5", "md5")):
        if kind in given:
            if given[kind] != computed[kind]:
                raise BadRequest(
                    f"workflow_params: DRS object {target.uri!r}: checksum mismatch, its {label} is {given[kind]} "
                    f"but the bytes fetched have {computed[kind]}"
                )
            return f"{label}:{given[kind]}"
    return ""


def record_path(paths: RunPaths) -> Path:
    return paths.control / "drs.json"


def save(paths: RunPaths, fetched: list[Fetched]) -> None:
    if fetched:
        record_path(paths).write_text(json.dumps([asdict(item) for item in fetched]))


def load(paths: RunPaths) -> list[dict[str, Any]]:
    try:
        found = json.loads(record_path(paths).read_text())
    except (OSError, ValueError):
        return []
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def system_logs(paths: RunPaths) -> list[str]:
    """Each DRS input as a line of the RunLog's system_logs."""
    return [
        f"drs: {item.get('uri')} -> {item.get('file')} ({item.get('size')} bytes, sha256 {item.get('sha256')}, "
        + (f"checksum {item['checksum']} verified)" if item.get("checksum") else "no checksum given)")
        for item in load(paths)
    ]
