"""POST /runs bodies in bounded memory: attachments stream to disk as they arrive.

Connexion's validators keep a whole request body in memory and the attachment limits were
applied only after all of it had arrived, so one upload could run a web worker out of
memory. This ASGI middleware sits before Connexion on POST /runs and

- answers 413 before reading anything when ``Content-Length`` is over the limits;
- parses the multipart body as it streams (chunked or not), writing each file part to a
  spool file under ``runs/.staging/`` and stopping at the first limit it crosses (413);
- leaves the form, parsed (``form.RunForm``: the fields' text and the spooled attachments),
  in Connexion's context, which hands it to the handler; and hands Connexion a small copy of
  the body, each file part empty, to hold to the contract (openapi/wes.yaml).

The spool is removed when the response is done, whatever happened.

A file part named as a RunRequest field (``workflow_params`` as a file, as the Dockstore
CLI's generated client sends it) is that field's text: read as UTF-8 within the fields'
bound, not spooled as an attachment. An ``application/json`` body (the json-run-request
extension) is read here too, within the same bound, so that no worker holds more, and
parsed into the same ``RunForm``.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.multipart import MultipartParser, parse_options_header

from wes_gateway.config import Settings
from wes_gateway.errors import send_error
from wes_gateway.files.paths import staging_dir
from wes_gateway.host import volumes
from wes_gateway.intake.form import CONTEXT_KEY, Attachment, RunForm
from wes_gateway.intake.request import RunRequest

# Room for the text fields and the multipart framing, on top of the attachments.
FORM_FIELD_BYTES = 16 * 1024 * 1024
_FRAMING_PER_PART = 1024
# Parts that are RunRequest fields whatever their form: their text, never an attachment.
FIELD_PARTS = frozenset(RunRequest.model_fields)


class UploadRefused(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


@dataclass
class SpooledFile:
    filename: str
    path: Path
    size: int = 0


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str = "application/octet-stream"
    value: bytearray = field(default_factory=bytearray)
    file: SpooledFile | None = None
    handle: IO[bytes] | None = None


class _Form:
    """Callbacks for python-multipart's streaming parser, enforcing the limits as it goes."""

    def __init__(self, settings: Settings, spool: Path) -> None:
        self.settings = settings
        self.spool = spool
        self.parts: list[_Part] = []
        self.files: list[SpooledFile] = []
        self.total_files = 0
        self.total_fields = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._part: _Part | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _begin(self) -> None:
        self._headers = {}
        self._part = _Part()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        assert self._part is not None
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        part = self._part
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options and part.name in FIELD_PARTS:
            part.filename = None  # the field's text, sent as a file: read below like any field
        elif b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace")
            part.content_type = self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
            if len(self.files) >= self.settings.max_attachment_count:
                raise UploadRefused(413, f"workflow_attachment: more than {self.settings.max_attachment_count} files")
            spooled = SpooledFile(filename=part.filename, path=self.spool / str(len(self.files)))
            part.file, part.handle = spooled, open(spooled.path, "xb")
            self.files.append(spooled)

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        assert part is not None
        size = end - start
        if part.file is None:
            self.total_fields += size
            if self.total_fields > FORM_FIELD_BYTES:
                raise UploadRefused(
                    413, f"{part.name}: the form's text fields are larger than {FORM_FIELD_BYTES} bytes in all"
                )
            part.value.extend(data[start:end])
            return
        assert part.handle is not None
        part.file.size += size
        self.total_files += size
        if part.file.size > self.settings.max_attachment_file_bytes:
            raise UploadRefused(
                413,
                f"workflow_attachment: {part.file.filename!r} is larger than "
                f"{self.settings.max_attachment_file_bytes} bytes",
            )
        if self.total_files > self.settings.max_attachment_bytes:
            raise UploadRefused(
                413, f"workflow_attachment: more than {self.settings.max_attachment_bytes} bytes in total"
            )
        part.handle.write(data[start:end])

    def _end(self) -> None:
        part = self._part
        if part is None:
            return
        if part.handle is not None:
            part.handle.close()
            part.handle = None
        if part.file is None:
            try:
                text = bytes(part.value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UploadRefused(
                    400, f"{part.name}: not UTF-8 text (byte {exc.start}); send the JSON as UTF-8"
                ) from None
            if text.startswith("\ufeff"):  # a byte-order mark, as some editors save JSON files
                part.value = bytearray(text[1:].encode("utf-8"))
        self.parts.append(part)
        self._part = None

    def close(self) -> None:
        if self._part is not None and self._part.handle is not None:
            self._part.handle.close()

    def run_form(self) -> RunForm:
        """The form as the handler takes it: each field's text (the first, if sent twice; a
        browser's form sends each once) and the spooled attachments."""
        fields: dict[str, str] = {}
        for part in self.parts:
            if part.file is None:
                fields.setdefault(part.name, bytes(part.value).decode("utf-8"))
        attachments = tuple(Attachment(filename=spooled.filename, path=spooled.path) for spooled in self.files)
        return RunForm(fields=fields, attachments=attachments)

    def small_body(self, boundary: bytes) -> bytes:
        """The same form for Connexion to validate, with every file part empty."""
        chunks: list[bytes] = []
        for part in self.parts:
            disposition = f'form-data; name="{_quote(part.name)}"'
            headers = ""
            if part.filename is not None:
                disposition += f'; filename="{_quote(part.filename)}"'
                headers = f"\r\nContent-Type: {part.content_type}"
            chunks.append(b"--" + boundary + f"\r\nContent-Disposition: {disposition}{headers}\r\n\r\n".encode())
            chunks.append(bytes(part.value) + b"\r\n")
        chunks.append(b"--" + boundary + b"--\r\n")
        return b"".join(chunks)


def _quote(text: str) -> str:
    # As browsers encode them: the parser on the other side decodes the same way.
    return text.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


Receive = Callable[[], Awaitable[dict[str, Any]]]


Scope = dict[str, Any]


def _with_form(scope: Scope, form: RunForm, body_length: int) -> Scope:
    """The scope passed on: the form in Connexion's context (the handler's ``context_``), and
    the length of the body replayed to Connexion."""
    extensions = {**scope.get("extensions", {})}
    extensions["connexion_context"] = {**extensions.get("connexion_context", {}), CONTEXT_KEY: form}
    headers = [(k, v) for k, v in scope.get("headers", []) if k not in (b"content-length", b"transfer-encoding")]
    headers.append((b"content-length", str(body_length).encode()))
    return {**scope, "headers": headers, "extensions": extensions}


class UploadMiddleware:
    """POST /runs (``applies``, the route map's word) read, bounded and parsed once."""

    def __init__(self, app: Any, settings: Settings, applies: Callable[[Scope], bool]) -> None:
        self.app = app
        self.settings = settings
        self.applies = applies
        self.limit = settings.max_attachment_bytes + FORM_FIELD_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Any) -> None:
        if scope["type"] != "http" or not self.applies(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        content_type, options = parse_options_header(headers.get(b"content-type", b""))
        boundary = options.get(b"boundary")
        length = headers.get(b"content-length", b"").strip()
        if content_type == b"application/json":
            await self._json(scope, receive, send, length)
            return
        if content_type != b"multipart/form-data" or not boundary:
            await self.app(scope, receive, send)  # the request guard answers it
            return
        if length.isdigit() and int(length) > self.limit:
            await send_error(
                send,
                413,
                f"the request body ({int(length)} bytes) is larger than this service accepts "
                f"({self.settings.max_attachment_bytes} bytes of attachments)",
            )
            return
        short = volumes.short_of_space(self.settings, int(length) if length.isdigit() else 0)
        if short:
            await send_error(send, 507, short, [(b"retry-after", b"300")])
            return
        spool = staging_dir(self.settings) / f"upload-{secrets.token_hex(8)}"
        spool.mkdir(mode=0o700)
        try:
            await self._multipart(scope, receive, send, boundary, spool)
        finally:
            shutil.rmtree(spool, ignore_errors=True)

    async def _multipart(self, scope: Scope, receive: Receive, send: Any, boundary: bytes, spool: Path) -> None:
        try:
            form = await self._read(receive, boundary, spool)
        except UploadRefused as exc:
            shutil.rmtree(spool, ignore_errors=True)  # before answering: nothing half-written stays
            await send_error(send, exc.status, exc.msg)
            return
        body = form.small_body(boundary)

        async def send_after_cleanup(message: dict[str, Any]) -> None:
            # The handler has linked what it kept by the time it answers: clear the spool
            # before the client hears back, so that nothing of it outlives the response.
            if message["type"] == "http.response.start":
                shutil.rmtree(spool, ignore_errors=True)
            await send(message)

        await self.app(_with_form(scope, form.run_form(), len(body)), _replay(body), send_after_cleanup)

    async def _json(self, scope: Scope, receive: Receive, send: Any, length: bytes) -> None:
        """A JSON RunRequest, read whole within the form fields' bound, then replayed."""
        too_large = f"the JSON body is larger than this service accepts ({FORM_FIELD_BYTES} bytes)"
        if length.isdigit() and int(length) > FORM_FIELD_BYTES:
            await send_error(send, 413, too_large)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > FORM_FIELD_BYTES:
                await send_error(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break
        try:
            value = json.loads(bytes(body).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            await send_error(send, 400, f"the JSON body is not UTF-8 JSON: {str(exc)[:200]}")
            return
        await self.app(_with_form(scope, RunForm.of_json(value), len(body)), _replay(bytes(body)), send)

    async def _read(self, receive: Receive, boundary: bytes, spool: Path) -> _Form:
        form = _Form(self.settings, spool)
        parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]  # a TypedDict of the same keys
        received = 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise UploadRefused(400, "the client went away before the body was complete")
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.limit + _FRAMING_PER_PART * (len(form.files) + 8):
                    raise UploadRefused(
                        413, f"the request body is larger than this service accepts ({self.limit} bytes)"
                    )
                if chunk:
                    parser.write(chunk)
                if not message.get("more_body", False):
                    break
            parser.finalize()
        except UploadRefused:
            raise
        except OSError as exc:
            if exc.errno in volumes.NO_SPACE:
                raise UploadRefused(507, "the service is out of disk space; try again later") from None
            raise
        except Exception as exc:  # python-multipart's errors for a malformed body
            raise UploadRefused(400, f"malformed multipart/form-data body: {type(exc).__name__}") from None
        finally:
            form.close()
        return form


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class HandedOver:
    """After Connexion has held the copy of a form to the contract, the app below gets an
    empty body: the handler takes the parsed form (``RunForm``), so nothing parses it again
    (Connexion's Flask binding reads ``request.files`` whatever the handler takes)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Any) -> None:
        context = scope.get("extensions", {}).get("connexion_context", {}) if scope["type"] == "http" else {}
        if CONTEXT_KEY not in context:
            await self.app(scope, receive, send)
            return
        # No body and no type: there is nothing left to parse.
        headers = [(k, v) for k, v in scope.get("headers", []) if k not in (b"content-length", b"content-type")]
        await self.app({**scope, "headers": [*headers, (b"content-length", b"0")]}, _replay(b""), send)
