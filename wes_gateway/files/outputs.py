"""A run's outputs as a remote client can fetch them: one file (with Range and ETag), a
directory listing, every output as a zip built while it is sent, and a ``url`` beside each
File and Directory of ``RunLog.outputs``.

The output directory is the run's own: the workflow wrote it, and could have planted links
or FIFOs there. Everything is opened and walked through ``beneath``: one name at a time,
crossing no link, opening nothing but regular files and directories.
"""

from __future__ import annotations

import os
import stat
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

from wes_gateway.errors import NotFound
from wes_gateway.files import beneath
from wes_gateway.files.paths import RunPaths

CHUNK = 256 * 1024  # a read's size, when files are streamed or hashed


@dataclass(frozen=True)
class Entry:
    name: str
    is_dir: bool
    size: int


def relative(paths: RunPaths, reference: str) -> str | None:
    """Where ``reference`` (a path or file:// URL) is inside the output directory, or None."""
    text = reference.removeprefix("file://")
    root = os.path.realpath(paths.outdir)
    candidate = os.path.normpath(text)
    if candidate == root or not candidate.startswith(root + os.sep):
        return None
    return candidate[len(root) + 1 :]


def with_urls(outputs: Any, paths: RunPaths, base: str) -> Any:
    """The outputs with a ``url`` on every File and Directory that lies in the run's output
    directory; nothing else is changed, so CWL clients compare what they compared before."""
    if isinstance(outputs, list):
        return [with_urls(item, paths, base) for item in outputs]
    if not isinstance(outputs, dict):
        return outputs
    shown = {key: with_urls(value, paths, base) for key, value in outputs.items()}
    if shown.get("class") in ("File", "Directory"):
        where = shown.get("path") or shown.get("location")
        inside = relative(paths, where) if isinstance(where, str) else None
        if inside is not None:
            shown["url"] = f"{base}/{quote(inside)}"
    return shown


def _clean(path: str) -> PurePosixPath:
    parts = PurePosixPath(path).parts
    if not parts or any(part in ("..", "/") or "\0" in part for part in parts):
        raise NotFound(f"no output {path!r}")
    return PurePosixPath(*parts)


def open_output(paths: RunPaths, path: str) -> tuple[IO[bytes], os.stat_result] | list[Entry]:
    """A regular file to send (open, with its stat), or a directory's entries."""
    name = PurePosixPath(paths.outdir.name, _clean(path)) if path else PurePosixPath(paths.outdir.name)
    try:
        fd = beneath.open_fd(paths.root, name, directory=True)
    except OSError:
        raise NotFound(f"no output {path!r}") from None
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        return _entries(fd)
    return os.fdopen(fd, "rb"), info


def _entries(fd: int) -> list[Entry]:
    found = []
    try:
        with os.scandir(fd) as listing:
            for item in listing:
                # Links are not followed, and so not listed: they could point anywhere.
                if item.is_symlink():
                    continue
                if item.is_dir(follow_symlinks=False):
                    found.append(Entry(item.name, True, 0))
                elif item.is_file(follow_symlinks=False):
                    found.append(Entry(item.name, False, item.stat(follow_symlinks=False).st_size))
    finally:
        os.close(fd)
    return sorted(found, key=lambda entry: entry.name)


def listing(path: str, entries: list[Entry], base: str) -> dict[str, Any]:
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    return {
        "path": path.strip("/"),
        "entries": [
            {
                "name": entry.name,
                "class": "Directory" if entry.is_dir else "File",
                **({} if entry.is_dir else {"size": entry.size}),
                "url": f"{base}/{quote(prefix + entry.name)}",
            }
            for entry in entries
        ],
    }


def etag(info: os.stat_result) -> str:
    return f"{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}"


class _Pipe:
    """A write-only stream that hands what zipfile writes to the response, chunk by chunk."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.written = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        pass

    def take(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from chunks


def files_under(paths: RunPaths, directory: Path) -> list[tuple[str, os.stat_result]]:
    """Every regular file below ``directory`` of the run, relative to it, with its lstat, in
    order; no link is followed or listed (beneath.files)."""
    name = beneath.relative_to(paths.root, directory)
    return [] if name is None else list(beneath.files(paths.root, name))


Opened = tuple[IO[bytes], os.stat_result]


def output_file(paths: RunPaths, name: str) -> Opened | None:
    """One output file for an archive, or None (a link, a FIFO, a directory, gone)."""
    try:
        found = open_output(paths, name)
    except NotFound:
        return None
    return None if isinstance(found, list) else found


def run_file(paths: RunPaths, path: Path) -> Opened | None:
    """A file of the run directory for an archive, as ``RunPaths.open_file`` allows."""
    handle = paths.open_file(path)
    return None if handle is None else (handle, os.fstat(handle.fileno()))


def zip_stream(items: Iterable[tuple[str, Callable[[], Opened | None] | bytes]]) -> Iterator[bytes]:
    """A zip archive of ``items`` (a name, and the bytes or how to open the file), produced
    while it is sent: at most one chunk of a file is in memory at a time, whatever the sizes
    (ZIP64 where they need it)."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[call-overload]
        for name, source in items:
            if isinstance(source, bytes):
                archive.writestr(name, source)
                yield from pipe.take()
                continue
            found = source()
            if found is None:
                continue
            opened, info = found
            with opened:
                entry = zipfile.ZipInfo(name, date_time=time.gmtime(info.st_mtime)[:6])
                entry.external_attr = (info.st_mode & 0xFFFF) << 16
                entry.file_size = info.st_size
                with archive.open(entry, mode="w", force_zip64=info.st_size > 2**31) as sink:
                    while block := opened.read(CHUNK):
                        sink.write(block)
                        yield from pipe.take()
            yield from pipe.take()
    yield from pipe.take()


def all_outputs(
    paths: RunPaths, listed: list[tuple[str, os.stat_result]]
) -> Iterator[tuple[str, Callable[[], Opened | None]]]:
    """The zip items of the output files ``listed`` (files_under)."""
    for name, _info in listed:
        yield name, partial(output_file, paths, name)
