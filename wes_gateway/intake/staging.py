"""Turn a RunWorkflow form into a staged run directory, or refuse it without leaving a trace.

Everything is written under ``runs/.staging/<run_id>`` and renamed into place only once the
request has passed every check, so a refused or interrupted submission never leaves a
half-written run directory behind.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from wes_gateway import store
from wes_gateway.config import Settings
from wes_gateway.engines import engine_for
from wes_gateway.errors import ApiError, BadRequest, PayloadTooLarge
from wes_gateway.files.paths import RunPaths, staging_dir
from wes_gateway.intake import drs, trs
from wes_gateway.intake.engine_params import engine_argv
from wes_gateway.intake.form import Attachment, RunForm
from wes_gateway.intake.inputpolicy import check_prefixed, check_remote, safe_relative_name
from wes_gateway.intake.request import RunRequest

REMOTE_SCHEMES = ("http", "https")
COPY_CHUNK = 1024 * 1024


def _json_object(form: Mapping[str, str], field: str) -> dict[str, Any]:
    text = form.get(field)
    if text is None or text.strip() == "":
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadRequest(
            f"{field} is not valid JSON: {exc} (a JSON object is expected, as text or a file part)"
        ) from None
    except RecursionError:
        raise BadRequest(f"{field} is nested more deeply than JSON parsing allows") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be a JSON object, not {type(value).__name__}")
    _check_shape(value, field)
    return value


# Deeper than any real input object; every later walk over the value is recursive.
MAX_JSON_DEPTH = 64
# Schema-salad directives that would make the leader read files the input policy never saw.
DIRECTIVES = frozenset({"$import", "$include", "$mixin"})


def _check_shape(value: Any, field: str) -> None:
    """Bounded depth, and no document-loading directives: inputs are data, not documents."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(f"{field} is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, dict):
            directive = DIRECTIVES & set(item)
            if directive:
                raise BadRequest(
                    f"{field}: {sorted(directive)[0]} is not allowed in inputs; attach the file and name it instead"
                )
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            pending.extend((child, depth + 1) for child in item)


def _required(form: Mapping[str, str], field: str) -> str:
    value = (form.get(field) or "").strip()
    if not value:
        raise BadRequest(f"{field} is required")
    return value


# Unknown query parameters are ignored (WES clients may be newer), but an unknown form field
# is most likely a misspelt one ("workflow_param"), and running without it would mislead.
FORM_FIELDS = frozenset(RunRequest.model_fields)


def parse_request(form: Mapping[str, str]) -> RunRequest:
    """Check the form's text fields; nothing is written."""
    unknown = sorted(set(form) - FORM_FIELDS)
    if unknown:
        raise BadRequest(
            f"unknown form field(s): {', '.join(unknown)}; a RunRequest has {', '.join(sorted(FORM_FIELDS))}"
        )
    workflow_url = _required(form, "workflow_url")
    workflow_type = _required(form, "workflow_type").upper()
    version = _required(form, "workflow_type_version")
    engine = engine_for(workflow_type)
    if engine is None:
        raise BadRequest(f"workflow_type {form.get('workflow_type')!r} is not supported; use CWL or WDL")
    if version not in engine.versions():
        raise BadRequest(
            f"workflow_type_version {version!r} is not supported for {workflow_type}; "
            f"supported: {', '.join(engine.versions())}"
        )
    workflow_engine = (form.get("workflow_engine") or "").strip() or None
    if workflow_engine is not None and workflow_engine.lower() != "toil":
        raise BadRequest(f"workflow_engine {workflow_engine!r} is not supported; use toil")
    engine_version = (form.get("workflow_engine_version") or "").strip() or None
    if engine_version is not None:
        from wes_gateway.engines import toil_version

        if engine_version != toil_version():
            raise BadRequest(
                f"workflow_engine_version {engine_version!r} is not available; this service runs toil {toil_version()}"
            )
    tags = _json_object(form, "tags")
    for key, value in tags.items():
        if not isinstance(value, str):
            raise BadRequest(f"tags: the value of {key!r} must be a string")
    engine_params = _json_object(form, "workflow_engine_parameters")
    for key, value in engine_params.items():
        if isinstance(value, (dict, list)):
            raise BadRequest(f"workflow_engine_parameters: {key} must have a string or null value")
        if value is not None and not isinstance(value, str):
            engine_params[key] = json.dumps(value)
    return RunRequest(
        workflow_params=_json_object(form, "workflow_params"),
        workflow_type=workflow_type,
        workflow_type_version=version,
        tags=tags,
        workflow_engine_parameters=engine_params,
        workflow_engine=workflow_engine,
        workflow_engine_version=engine_version,
        workflow_url=workflow_url,
    )


def write_attachments(target: Path, attachments: Iterable[Attachment], settings: Settings) -> list[str]:
    target.mkdir(parents=True)
    written: list[str] = []
    seen: set[str] = set()
    total = 0
    for attachment in attachments:
        relative = safe_relative_name(attachment.filename)
        if len(written) >= settings.max_attachment_count:
            raise PayloadTooLarge(f"workflow_attachment: more than {settings.max_attachment_count} files")
        destination = target.joinpath(*relative.parts)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise BadRequest(
                f"workflow_attachment: {attachment.filename!r} clashes with another attachment's file name"
            ) from None
        repeated = str(relative) in seen
        # A repeated part is written outside the attachments and compared: stock clients such
        # as toil-wes-cwl-runner send a file once per document that references it.
        path = target.parent / ".repeated-part" if repeated else destination
        total = _write_one(path, attachment, settings, total)
        if repeated:
            same = filecmp.cmp(path, destination, shallow=False)
            path.unlink()
            if not same:
                raise BadRequest(f"workflow_attachment: {attachment.filename!r} is sent twice with different contents")
            continue
        seen.add(str(relative))
        written.append(str(relative))
    return written


def _write_one(path: Path, attachment: Attachment, settings: Settings, total: int) -> int:
    """Stream one part to a new file within the limits; returns the running total."""
    clash = BadRequest(f"workflow_attachment: {attachment.filename!r} clashes with another attachment's directory")
    if attachment.path is not None:
        size = attachment.path.stat().st_size
        _check_size(attachment, size, total + size, settings)
        try:
            os.link(attachment.path, path)  # spooled on the same filesystem: no copy
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            raise clash from None
        return total + size
    assert attachment.stream is not None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o644)
    except (FileExistsError, IsADirectoryError, NotADirectoryError):
        raise clash from None
    size = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := attachment.stream.read(COPY_CHUNK):
            total += len(chunk)
            size += len(chunk)
            _check_size(attachment, size, total, settings)
            out.write(chunk)
    return total


def _check_size(attachment: Attachment, size: int, total: int, settings: Settings) -> None:
    if size > settings.max_attachment_file_bytes:
        raise PayloadTooLarge(
            f"workflow_attachment: {attachment.filename!r} is larger than {settings.max_attachment_file_bytes} bytes"
        )
    if total > settings.max_attachment_bytes:
        raise PayloadTooLarge(f"workflow_attachment: more than {settings.max_attachment_bytes} bytes in total")


def _attachment_path(root: Path, reference: str) -> Path | None:
    """The attached file a relative reference names, trying it verbatim and URL-unquoted."""
    for candidate in dict.fromkeys((reference, unquote(reference))):
        try:
            relative = safe_relative_name(candidate)
        except BadRequest:
            continue
        path = root.joinpath(*relative.parts)
        if path.exists() and not path.is_symlink():
            return path
    return None


def _check_file_url(path_text: str, settings: Settings, what: str) -> Path:
    path = Path(os.path.normpath(path_text))
    for root in settings.allowed_file_roots:
        resolved_root = Path(os.path.realpath(root))
        if Path(os.path.realpath(path)).is_relative_to(resolved_root):
            return path
    raise BadRequest(f"{what}: local path {path_text!r} is outside the directories this service may read")


def resolve_workflow_url(url: str, attachments: Path, settings: Settings) -> tuple[str, str]:
    """What the leader is given: an absolute local path or an http(s) URL (with any fragment
    inline), and, for a local path, the fragment apart, since '#' is also legal in a file name."""
    found = _attachment_path(attachments, url)
    if found is not None:
        return str(found), ""
    base, _, fragment = url.partition("#")
    scheme = urlparse(base).scheme.lower()
    if scheme in REMOTE_SCHEMES:
        check_prefixed(url, "workflow_url", f"workflow_url {url!r}", settings, "; attach the workflow instead")
        return url, ""
    if scheme == "file":
        return str(_check_file_url(unquote(urlparse(base).path), settings, "workflow_url")), fragment
    found = _attachment_path(attachments, base)
    if found is not None:
        return str(found), fragment
    if base.startswith("/"):
        _check_file_url(base, settings, "workflow_url")
        return base, fragment
    raise BadRequest(f"workflow_url {url!r} is neither an attachment nor an http(s) URL")


def resolve_input(reference: str, attachments: Path, settings: Settings) -> str:
    """An input file reference as an absolute local path (attachments, allowed roots) or an
    http(s) URL; anything else is refused."""
    found = _attachment_path(attachments, reference)
    if found is not None:
        return str(found)
    parsed = urlparse(reference)
    scheme = parsed.scheme.lower()
    if scheme in REMOTE_SCHEMES:
        check_remote(reference, "workflow_params")
        return reference
    if scheme == "file" or reference.startswith("/"):
        path = unquote(parsed.path) if scheme == "file" else reference
        if Path(os.path.realpath(path)).is_relative_to(os.path.realpath(attachments)):
            return os.path.normpath(path)  # an attachment named by absolute path (document defaults)
        return str(_check_file_url(path, settings, "workflow_params"))
    if scheme and len(scheme) > 1 and "/" not in scheme:
        raise BadRequest(f"workflow_params: {scheme}:// inputs are not supported here: {reference!r}")
    raise BadRequest(f"workflow_params: input {reference!r} is not among the attachments")


class Admission:
    """The input policy for one submission (``engines.base.Admission``), remembering the local
    files it admitted outside the attachments, which the run's sandbox will show."""

    def __init__(self, attachments: Path, settings: Settings) -> None:
        self.attachments = attachments
        self.settings = settings
        self.approved: list[str] = []
        self.drs = drs.Resolver(attachments, settings)

    def input(self, reference: str) -> str:
        if drs.is_drs(reference):  # fetched into the attachments now (drs.py says why)
            return self.drs.input(reference)
        resolved = resolve_input(reference, self.attachments, self.settings)
        if resolved.startswith("/"):
            self.approved.append(resolved)
        return resolved

    def default(self, reference: str) -> str:
        # A drs:// default would have to be fetched and the document rewritten for the leader,
        # which reads the documents as they are: refused, before anything is fetched.
        if drs.is_drs(reference):
            raise BadRequest(
                f"{reference!r}: drs:// defaults in the workflow document are not supported; "
                "pass the object in workflow_params"
            )
        return self.input(reference)

    def document(self, reference: str) -> str:
        scheme = urlparse(reference).scheme.lower()
        if scheme in REMOTE_SCHEMES:
            check_prefixed(reference, "document", repr(reference), self.settings)
            return reference
        return self.input(reference)


def _without_internal_paths(msg: str, *roots: Path) -> str:
    """A refusal names attachments as the client named them, never where they were staged."""
    for root in roots:
        for form in (root.as_uri() + "/", str(root) + "/", root.as_uri(), str(root)):
            msg = msg.replace(form, "")
    return msg


@dataclass(frozen=True)
class Staged:
    new_run: store.NewRun
    paths: RunPaths


def _checked_request(form: RunForm) -> RunRequest:
    if form.problem is not None:
        raise BadRequest(form.problem)
    return parse_request(form.fields)


def stage(form: RunForm, settings: Settings, owner: str) -> Staged:
    """Check and write a submission. Its files are written under ``runs/.staging/<id>``, which
    ``runs/<id>`` points at while the checks run, so every path is resolved to its final place
    at once; only a submission that passed is moved to ``runs/<id>`` itself."""
    request = _checked_request(form)
    user_args = engine_argv(request.workflow_engine_parameters, settings)
    engine = engine_for(request.workflow_type)
    assert engine is not None  # parse_request checked it
    run_id = store.new_run_id()
    staging_root = staging_dir(settings)
    staged = staging_root / run_id
    final = RunPaths.of(settings, run_id)
    staged.mkdir()
    try:
        final.root.symlink_to(staged, target_is_directory=True)
        write_attachments(final.attachments, form.attachments, settings)
        # A TRS workflow is fetched whole into the attachments now (trs.py says why now).
        reference = trs.parse(request.workflow_url, settings)
        trs.check_allowed(request.workflow_url, reference, settings)
        pin = trs.fetch(reference, request.workflow_type, final.attachments, settings) if reference else None
        if pin is not None:
            location, fragment = str(final.attachments / pin.primary), ""
        else:
            location, fragment = resolve_workflow_url(request.workflow_url, final.attachments, settings)
        workflow = engine.workflow_reference(location, fragment)
        admission = Admission(final.attachments, settings)
        if location.startswith("/"):
            admission.approved.append(location)
        params, outline = engine.prepare(workflow, request.workflow_params, admission)
        final.outline.write_text(json.dumps(outline))
        final.params.write_text(json.dumps(params))
        outside = [p for p in dict.fromkeys(admission.approved) if not Path(p).is_relative_to(final.attachments)]
        final.control.mkdir(mode=0o700)
        final.inputs.write_text(json.dumps(outside))
        if pin is not None:
            trs.save(final, pin)
        drs.save(final, list(admission.drs.fetched.values()))
        # Nothing reads runs/<id> before its record exists, so the swap need not be atomic.
        final.root.unlink()
        os.rename(staged, final.root)
    except ApiError as exc:
        _discard(staged, final)
        exc.msg = _without_internal_paths(exc.msg, final.attachments, staged / "attachments", settings.runs_dir)
        raise
    except BaseException:
        _discard(staged, final)
        raise
    return Staged(
        new_run=store.NewRun(
            run_id=run_id,
            owner=owner,
            workflow_type=request.workflow_type,
            request=request.to_json(),
            engine_args=user_args,
            workflow_path=workflow,
            tags=request.tags,
        ),
        paths=final,
    )


def _discard(staged: Path, final: RunPaths) -> None:
    if final.root.is_symlink():
        final.root.unlink()
    shutil.rmtree(staged, ignore_errors=True)
