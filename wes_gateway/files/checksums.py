"""The sha256 of a run's output files, worked out once by the supervisor as the run completes
(within a byte budget) and kept in the run's control directory (the service's own), keyed
by each file's size and modification time: a request never hashes, so a run's terabyte of
outputs cannot hold a web worker before its first byte."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from wes_gateway.files import outputs
from wes_gateway.files.outputs import CHUNK
from wes_gateway.files.paths import RunPaths


def record_checksums(paths: RunPaths, max_file_bytes: int, max_total_bytes: int) -> int:
    """Hash the run's output files into the cache, skipping any larger than ``max_file_bytes``
    and stopping once ``max_total_bytes`` were read (what could not be served needs no sum).
    Returns the bytes hashed."""
    cached = _cached(paths)
    found: dict[str, dict[str, Any]] = {}
    budget = max_total_bytes
    for name, listed in outputs.files_under(paths, paths.outdir):
        if listed.st_size > max_file_bytes or listed.st_size > budget:
            continue
        opened = outputs.output_file(paths, name)
        if opened is None:
            continue
        handle, info = opened
        with handle:
            key = _key(info)
            entry = cached.get(name)
            if not (isinstance(entry, dict) and entry.get("key") == key):
                digest = hashlib.sha256()
                while block := handle.read(CHUNK):
                    digest.update(block)
                entry = {"key": key, "sha256": digest.hexdigest(), "size": info.st_size}
                budget -= info.st_size
            found[name] = entry
    temporary = _cache(paths).with_suffix(".tmp")
    temporary.write_text(json.dumps(found))
    os.replace(temporary, _cache(paths))
    return max_total_bytes - budget


def _key(info: os.stat_result) -> str:
    """What a cached sum is valid for: the file as it was (size and modification time)."""
    return f"{info.st_size}:{info.st_mtime_ns}"


def _cache(paths: RunPaths) -> Any:
    return paths.control / "checksums.json"


def _cached(paths: RunPaths) -> dict[str, Any]:
    data = paths.read_json(_cache(paths))
    return data if isinstance(data, dict) else {}


def checksums(paths: RunPaths) -> dict[str, dict[str, Any]]:
    """Size of each output file, and its sha256 where the cache has it for the file as it is."""
    cached = _cached(paths)
    found: dict[str, dict[str, Any]] = {}
    for name, info in outputs.files_under(paths, paths.outdir):
        entry = cached.get(name)
        found[name] = {"size": info.st_size}
        if isinstance(entry, dict) and entry.get("key") == _key(info):
            found[name]["sha256"] = entry.get("sha256")
    return found
