"""A workflow named by GA4GH TRS (Dockstore and the like), fetched whole at submission.

Accepted as ``workflow_url`` (``FORMS``):

- ``trs://HOST/ID/VERSION``: through the ``trs_roots`` entry whose host (and port) is HOST;
- a Dockstore id, ``#workflow/...:VERSION`` or ``#tool/...:VERSION``, and a Dockstore page URL,
  ``https://dockstore.org/workflows/...:VERSION``: through the first entry;
- a TRS v2 URL, ``ROOT/tools/ID/versions/VERSION/TYPE/descriptor``, under an entry.

The type is the submission's ``workflow_type`` (CWL or WDL, as ``CWL``/``PLAIN_CWL``...).
Every file of the version (primary and secondary descriptors, and files of type OTHER) is
fetched, ``files?format=zip`` where the server offers it, else one by one, and written among
the run's attachments: a restarted run, its outputs, its RO-Crate and /ui see the same files,
and the leader reaches no TRS server. What was fetched is pinned (id, version, descriptor URL,
sha-256 of each file) in the run's control directory, shown in the RunLog's ``system_logs``
and in the RO-Crate.

Why at submission, not at run start: a client learns at once, as a 400, that an id or version
is unknown (or, as a 503 with Retry-After, that the server is down) instead of a run that
fails later; the run is then made of files like any other and never depends on the TRS
server again (a restart, a retry). The handler runs in a WSGI thread of the worker's pool,
never in its event loop, so /health and the event streams go on while a TRS server is slow;
and the whole fetch is bounded (``trs_timeout`` seconds, ``trs_max_bytes`` bytes, the
attachment count), so no thread is held longer than that.

Why not ``toil.lib.trs`` for the fetch (its id parsing, ``parse_trs_spec``, is used): it reads
one root from ``TOIL_TRS_ROOT`` at import, where a deployment here lists several and ``trs://``
names one by host; it retries without a deadline through a shared session, where a submission
must end in bounded time; it caches in a directory of its own and gives back a path, where the
files must land among the run's attachments under the input policy (each redirect re-checked
against ``allowed_url_prefixes``).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlparse

import requests
from toil.lib.trs import parse_trs_spec

from wes_gateway.config import Settings
from wes_gateway.errors import BadRequest, Forbidden, Unavailable
from wes_gateway.files.paths import RunPaths
from wes_gateway.intake.inputpolicy import check_prefixed, safe_relative_name

FORMS = (
    "trs://HOST/ID/VERSION",
    "#workflow/ID:VERSION",
    "#tool/ID:VERSION",
    "https://dockstore.org/workflows/ID:VERSION",
    "ROOT/tools/ID/versions/VERSION/TYPE/descriptor",
)
TYPES = {"CWL": ("CWL", "PLAIN_CWL"), "WDL": ("WDL", "PLAIN_WDL")}
DOCKSTORE_HOSTS = ("dockstore.org", "www.dockstore.org")
DOCKSTORE_PAGES = ("/workflows/", "/my-workflows/")
FETCHED = ("PRIMARY_DESCRIPTOR", "SECONDARY_DESCRIPTOR", "OTHER")
MAX_REDIRECTS = 5
# The longest a single socket operation may block: the deadline is checked between them.
SOCKET_TIMEOUT = 5.0
RETRY_AFTER = "30"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Reference:
    root: str
    tool_id: str
    version: str | None


@dataclass
class Pin:
    """What a run's workflow was fetched as; kept in the run's control directory."""

    trs_id: str
    version: str
    root: str
    descriptor_type: str
    descriptor_url: str
    trs_uri: str
    primary: str
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha-256


def _roots(settings: Settings) -> list[str]:
    return [root.rstrip("/") for root in settings.trs_roots]


def _refused(url: str, settings: Settings, why: str) -> BadRequest:
    return BadRequest(f"workflow_url {url!r}: {why}; trs_roots allows {', '.join(_roots(settings)) or 'no TRS server'}")


def parse(url: str, settings: Settings) -> Reference | None:
    """The TRS workflow ``url`` names, or None when it is not a TRS form at all."""
    roots = _roots(settings)
    if url.startswith("trs://"):
        netloc, _, path = url[len("trs://") :].partition("/")
        root = next((r for r in roots if urlparse(r).netloc.lower() == netloc.lower()), None)
        if root is None:
            raise _refused(url, settings, f"no TRS root is at {netloc!r}")
        tool, slash, version = path.rpartition("/")
        if not slash or not tool or not version:
            raise BadRequest(f"workflow_url {url!r} is not trs://HOST/ID/VERSION")
        return Reference(root, unquote(tool), unquote(version))
    if url.startswith(("#workflow/", "#tool/")):
        if not roots:
            raise _refused(url, settings, "a Dockstore id needs a TRS root")
        tool_id, version = parse_trs_spec(url)
        return Reference(roots[0], tool_id, version)
    parsed = urlparse(url)
    if parsed.scheme.lower() not in ("http", "https"):
        return None
    page_hosts = {*DOCKSTORE_HOSTS, *(urlparse(r).netloc.lower() for r in roots[:1])}
    path = unquote(parsed.path)
    page = next((prefix for prefix in DOCKSTORE_PAGES if path.startswith(prefix)), None)
    if parsed.netloc.lower() in page_hosts and page is not None:
        if not roots:
            raise _refused(url, settings, "a Dockstore page needs a TRS root")
        tool_id, version = parse_trs_spec("#workflow/" + path[len(page) :])
        return Reference(roots[0], tool_id, version)
    root = next((r for r in roots if url.startswith(r + "/tools/")), None)
    if root is None:
        if "/ga4gh/trs/v2/tools/" in url:
            raise _refused(url, settings, "it is a TRS URL under no allowed TRS root")
        return None
    parts = url[len(root) + len("/tools/") :].split("?", 1)[0].split("/")
    if len(parts) < 3 or parts[1] != "versions" or not parts[0] or not parts[2]:
        raise BadRequest(f"workflow_url {url!r} is not a TRS URL of the form {FORMS[-1]}")
    return Reference(root, unquote(parts[0]), unquote(parts[2]))


def check_allowed(url: str, reference: Reference | None, settings: Settings) -> None:
    """A curated deployment (``allowed_workflows``) runs only the TRS ids (any version, or the
    one named) and the workflow_url prefixes it lists; checked before anything is fetched."""
    entries = settings.allowed_workflows
    if not entries:
        return
    if any("://" in entry and url.startswith(entry) for entry in entries):
        return
    if reference is not None:
        for entry in entries:
            if "://" in entry:
                continue
            tool_id, version = parse_trs_spec(entry)
            if tool_id == reference.tool_id and (version is None or version == reference.version):
                return
    raise Forbidden(
        f"workflow_url {url!r} is not among the workflows this service runs "
        f"(allowed_workflows: {', '.join(entries)})"
        + (
            "; name one of its allowed versions (ID:VERSION)"
            if reference is not None and reference.version is None
            else ""
        )
    )


class _Fetch:
    """GETs against one TRS server within one deadline, one byte budget and the input policy."""

    def __init__(self, reference: Reference, settings: Settings) -> None:
        self.reference = reference
        self.settings = settings
        self.deadline = time.monotonic() + settings.trs_timeout
        self.budget = settings.trs_max_bytes
        self.session = requests.Session()
        self.session.trust_env = False  # no ~/.netrc credentials sent anywhere

    def _admit(self, url: str) -> None:
        """The TRS root's own URLs are admitted by trs_roots; any other place it redirects to
        is held to the input policy as any http input is."""
        if url.startswith(self.reference.root + "/"):
            return

        check_prefixed(url, "workflow_url", f"the TRS server's redirect to {url!r}", self.settings)

    def _down(self, why: str) -> Unavailable:
        return Unavailable(
            f"workflow_url: the TRS server {self.reference.root} {why}; try again later",
            {"Retry-After": RETRY_AFTER},
        )

    def get(self, url: str, accept: str = "application/json") -> tuple[int, str, bytes]:
        for _hop in range(MAX_REDIRECTS + 1):
            self._admit(url)
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise self._down(f"did not answer within {self.settings.trs_timeout:g} s (trs_timeout)")
            timeout = min(remaining, SOCKET_TIMEOUT)
            try:
                response = self.session.get(
                    url, headers={"Accept": accept}, timeout=timeout, stream=True, allow_redirects=False
                )
                with response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    body = bytearray()
                    for chunk in response.iter_content(CHUNK):
                        body.extend(chunk)
                        if len(body) > self.budget:
                            raise BadRequest(
                                f"workflow_url: the workflow's files on {self.reference.root} are larger than "
                                f"{self.settings.trs_max_bytes} bytes (trs_max_bytes)"
                            )
                        if time.monotonic() > self.deadline:
                            raise self._down(f"did not answer within {self.settings.trs_timeout:g} s (trs_timeout)")
                    self.budget -= len(body)
                    return response.status_code, response.headers.get("content-type", ""), bytes(body)
            except requests.Timeout:
                raise self._down(f"did not answer within {self.settings.trs_timeout:g} s (trs_timeout)") from None
            except requests.RequestException as exc:
                raise self._down(f"could not be reached ({type(exc).__name__})") from None
        raise self._down(f"redirected more than {MAX_REDIRECTS} times")

    def json(self, url: str, what: str) -> tuple[int, Any]:
        status, _type, body = self.get(url)
        if status >= 500:
            raise self._down(f"answered {status} for {what}")
        if status != 200:
            return status, None
        try:
            return status, json.loads(body)
        except ValueError:
            raise BadRequest(f"workflow_url: the TRS server {self.reference.root} sent no JSON for {what}") from None


def _tool_url(reference: Reference) -> str:
    return f"{reference.root}/tools/{quote(reference.tool_id, safe='')}"


def _version_names(document: Any, kind: str) -> list[str]:
    versions = document.get("versions") if isinstance(document, dict) else None
    names = []
    for item in versions if isinstance(versions, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name") or item.get("id"), str):
            types = item.get("descriptor_type")
            if not isinstance(types, list) or kind in types:
                names.append(str(item.get("name") or item.get("id")))
    return names


def _choose_version(fetch: _Fetch, kind: str) -> str:
    """The version the reference names, checked to exist; or the only one there is of ``kind``."""
    reference = fetch.reference
    if reference.version is not None:
        status, _doc = fetch.json(f"{_tool_url(reference)}/versions/{quote(reference.version, safe='')}", "the version")
        if status == 200:
            return reference.version
    status, document = fetch.json(_tool_url(reference), "the tool")
    if status != 200:
        raise BadRequest(f"workflow_url: TRS id {reference.tool_id!r} is not known to {reference.root} ({status})")
    names = _version_names(document, kind)
    if reference.version is not None:
        raise BadRequest(
            f"workflow_url: {reference.tool_id!r} has no version {reference.version!r} on {reference.root}; "
            f"its {kind} versions: {', '.join(names) or 'none'}"
        )
    if len(names) != 1:
        raise BadRequest(
            f"workflow_url: name a version of {reference.tool_id!r} (ID:VERSION); "
            f"its {kind} versions: {', '.join(names) or 'none'}"
        )
    return names[0]


def _listing(fetch: _Fetch, version_url: str, kind: str) -> tuple[str, list[str]]:
    """The primary descriptor's path and the paths of every file to fetch."""
    status, listing = fetch.json(f"{version_url}/{kind}/files", f"the {kind} files")
    if status != 200 or not isinstance(listing, list):
        raise BadRequest(
            f"workflow_url: {fetch.reference.tool_id!r} has no {kind} descriptor on {fetch.reference.root} ({status})"
        )
    primary: list[str] = []
    paths: list[str] = []
    for item in listing:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            continue
        if item.get("file_type") not in FETCHED:
            continue
        path = posixpath.normpath(item["path"].lstrip("/"))
        paths.append(path)
        if item.get("file_type") == "PRIMARY_DESCRIPTOR":
            primary.append(path)
    if len(primary) != 1:
        raise BadRequest(
            f"workflow_url: {fetch.reference.tool_id!r} lists {len(primary)} primary {kind} descriptors "
            "on its TRS server (one is needed)"
        )
    if len(paths) > fetch.settings.max_attachment_count:
        raise BadRequest(
            f"workflow_url: the workflow has more than {fetch.settings.max_attachment_count} files "
            "(max_attachment_count)"
        )
    return primary[0], paths


def _from_zip(fetch: _Fetch, version_url: str, kind: str, paths: list[str]) -> dict[str, bytes] | None:
    status, content_type, body = fetch.get(f"{version_url}/{kind}/files?format=zip", "application/zip")
    if status != 200 or not body.startswith(b"PK"):
        return None
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        sizes = {posixpath.normpath(info.filename.lstrip("/")): info.file_size for info in archive.infolist()}
        if sum(sizes.get(path, 0) for path in paths) > fetch.settings.trs_max_bytes:
            raise BadRequest(
                f"workflow_url: the workflow's files are larger than {fetch.settings.trs_max_bytes} bytes "
                "(trs_max_bytes)"
            )
        names = {posixpath.normpath(info.filename.lstrip("/")): info.filename for info in archive.infolist()}
        if not all(path in names for path in paths):
            return None  # not laid out as the listing says: fetched one by one instead
        return {path: archive.read(names[path]) for path in paths}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return None


def _one_by_one(fetch: _Fetch, version_url: str, plain: str, primary: str, paths: list[str]) -> dict[str, bytes]:
    base = posixpath.dirname(primary)
    files: dict[str, bytes] = {}
    for path in paths:
        relative = posixpath.relpath(path, base or ".")
        url = f"{version_url}/{plain}/descriptor" + ("" if path == primary else "/" + quote(relative, safe="/"))
        status, _type, body = fetch.get(url, "text/plain")
        if status >= 500:
            raise fetch._down(f"answered {status} for {path}")
        if status != 200:
            raise BadRequest(f"workflow_url: the TRS server {fetch.reference.root} has no file {path!r} ({status})")
        files[path] = body
    return files


def fetch(reference: Reference, workflow_type: str, target: Path, settings: Settings) -> Pin:
    """Fetch the version's files into ``target`` (the run's attachments), within the bounds."""

    kind, plain = TYPES[workflow_type]
    session = _Fetch(reference, settings)
    try:
        version = _choose_version(session, kind)
        version_url = f"{_tool_url(reference)}/versions/{quote(version, safe='')}"
        primary, paths = _listing(session, version_url, kind)
        files = _from_zip(session, version_url, kind, paths) or _one_by_one(session, version_url, plain, primary, paths)
    finally:
        session.session.close()
    pin = Pin(
        trs_id=reference.tool_id,
        version=version,
        root=reference.root,
        descriptor_type=kind,
        descriptor_url=f"{version_url}/{plain}/descriptor",
        trs_uri=f"trs://{urlparse(reference.root).netloc}/{quote(reference.tool_id, safe='')}/{quote(version, safe='')}",
        primary=primary,
    )
    for path, body in files.items():
        relative = safe_relative_name(path)
        destination = target.joinpath(*relative.parts)
        if destination.exists():
            raise BadRequest(f"workflow_url: the TRS workflow's file {path!r} clashes with an attachment")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(body)
        pin.files[str(relative)] = hashlib.sha256(body).hexdigest()
    pin.primary = str(safe_relative_name(primary))
    return pin


def pin_path(paths: RunPaths) -> Path:
    return paths.control / "trs.json"


def save(paths: RunPaths, pin: Pin) -> None:
    pin_path(paths).write_text(json.dumps(asdict(pin)))


def load(paths: RunPaths) -> dict[str, Any] | None:
    """The run's pin, if its workflow came from a TRS server."""
    try:
        found = json.loads(pin_path(paths).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def system_logs(paths: RunPaths) -> list[str]:
    """The pin as lines of the RunLog's system_logs, then the run's DRS inputs (drs.py)."""
    from wes_gateway.intake import drs

    pin = load(paths)
    if pin is None:
        return drs.system_logs(paths)
    lines = [
        f"trs: id {pin.get('trs_id')} version {pin.get('version')} from {pin.get('root')} ({pin.get('trs_uri')})",
        f"trs: descriptor {pin.get('descriptor_url')} (primary {pin.get('primary')})",
    ]
    files = pin.get("files")
    for name, digest in sorted(files.items()) if isinstance(files, dict) else []:
        lines.append(f"trs: sha256 {digest} {name}")
    return lines + drs.system_logs(paths)


def service_info_tags(settings: Settings) -> dict[str, str]:
    tags = {"trs_roots": ",".join(_roots(settings)), "trs_workflow_url_forms": " ".join(FORMS)}
    if settings.allowed_workflows:  # absent: any workflow
        tags["allowed_workflows"] = ",".join(settings.allowed_workflows)
    return tags
