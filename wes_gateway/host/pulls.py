"""Images from registries, pulled once per host by the service, never by a run.

The supervisor (root) serves a unix socket that every run's `docker`/`singularity` shim asks
before a step uses an image: the service resolves the reference (a tag once, then pinned; a
digest as given), checks ``allowed_registries``, pulls the image with skopeo into the shared,
root-owned ``image_store`` if it is not there (one pull at a time per image; others wait), and
answers with the image's store id and digest; the run's Podman then runs that id read-only from
its view of the store, with ``--pull=never``. Credentials (``registry_auth_file``) and trusted
CAs (``registry_certs_dir``) stay with the service. docs/containers-registry.md has the design.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socketserver
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from wes_gateway import store as run_store
from wes_gateway.config import Settings, parse_memory

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._:-]*(/[a-z0-9][a-z0-9._-]*)+$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
MAX_REQUEST = 4096
# What skopeo says of the usual failures, and what a user reads instead.
_CAUSES = (
    ("manifest unknown", "the registry has no such tag or digest (manifest unknown)"),
    ("name unknown", "the registry has no such repository (name unknown)"),
    ("unauthorized", "the registry refused the credentials (unauthorized: registry_auth_file)"),
    ("authentication required", "the registry wants credentials (registry_auth_file)"),
    ("certificate signed by unknown authority", "the registry's TLS certificate is not trusted (registry_certs_dir)"),
    ("x509:", "the registry's TLS certificate is not valid for it (registry_certs_dir)"),
    ("connection refused", "nothing answers at the registry's address (connection refused)"),
    ("no such host", "the registry's name does not resolve"),
    ("timeout", "the registry did not answer in time (registry_timeout)"),
    ("deadline exceeded", "the registry did not answer in time (registry_timeout)"),
)


class PullError(Exception):
    """Why an image cannot be had; the message names the image and the cause."""


def registry_of(image: str) -> str:
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def split(image: str) -> tuple[str, str, str]:
    """A reference as (repository with its registry, tag, digest): docker.io/library/ for
    Docker Hub's official images, :latest when there is neither tag nor digest."""
    image = image.removeprefix("docker://")
    rest, _, digest = image.partition("@")
    registry = registry_of(rest)
    if registry == "docker.io" and not rest.startswith("docker.io/"):
        rest = f"docker.io/{rest}"
    slash = rest.rfind("/")
    repo, colon, tag = rest.rpartition(":") if ":" in rest[slash:] else (rest, "", "")
    if registry == "docker.io" and repo.count("/") == 1:
        repo = f"docker.io/library/{repo.split('/', 1)[1]}"
    if not digest and not colon:
        tag = "latest"
    if not _NAME.match(repo) or (colon and not _TAG.match(tag)) or (digest and not _DIGEST.match(digest)):
        raise PullError(f"{image} is not an image reference the service can pull")
    return repo, tag, digest


def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read(64 * 1024 * 1024) or b"null")
    except (OSError, ValueError):
        return None


def store_images(store: Path) -> list[dict[str, Any]]:
    listing = _read_json(store / "overlay-images" / "images.json")
    return [entry for entry in listing if isinstance(entry, dict)] if isinstance(listing, list) else []


def find(store: Path, repo: str, tag: str, digest: str) -> dict[str, Any] | None:
    """The store's image of ``repo:tag`` or ``repo@digest``."""
    for entry in store_images(store):
        names = [str(name) for name in entry.get("names") or []]
        if digest:
            digests = {str(entry.get("digest", "")), *(str(d) for d in entry.get("digests") or [])}
            if digest in digests and any(name.startswith((f"{repo}:", f"{repo}@")) for name in names):
                return entry
        elif f"{repo}:{tag}" in names:
            return entry
    return None


def _cause(text: str) -> str:
    lowered = text.lower()
    for needle, cause in _CAUSES:
        if needle in lowered:
            return cause
    return text.strip().splitlines()[-1][:300] if text.strip() else "skopeo failed"


class Puller:
    """Resolves, checks and pulls images into ``settings.image_store``; thread-safe."""

    def __init__(self, settings: Settings) -> None:
        assert settings.image_store is not None
        self.settings = settings
        self.store: Path = settings.image_store
        self.home = settings.data_dir.resolve() / "pulls"
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.state_path = self.home / "state.json"
        self.policy = self.home / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self._lock = threading.Lock()
        self._image_locks: dict[str, threading.Lock] = {}
        state = _read_json(self.state_path)
        self.state: dict[str, Any] = state if isinstance(state, dict) else {}
        self.state.setdefault("tags", {})  # repo:tag -> resolved (time)
        self.state.setdefault("pulled", {})  # image id -> {"used": time, "runs": [run ids]}

    def ensure(self, image: str, run_id: str = "") -> dict[str, str]:
        """The store's id and digest of ``image``, pulled first if need be (PullError)."""
        repo, tag, digest = split(image)
        key = f"{repo}@{digest}" if digest else f"{repo}:{tag}"
        with self._lock:
            image_lock = self._image_locks.setdefault(key, threading.Lock())
        # Bounded: a pull of this image by another run, however hung, ends by pull_timeout.
        if not image_lock.acquire(timeout=self.settings.pull_timeout + self.settings.registry_timeout):
            raise PullError(f"container image {image}: another pull of it did not end in time (pull_timeout)")
        try:
            entry = self._stored(repo, tag, digest)
            if entry is None:
                self._allowed(image, repo)
                manifest = None  # for a digest reference, fetched by the room check
                if not digest:
                    digest, manifest = self._resolve(image, repo, tag)
                # Copied even when the store has that digest under another tag: the copy fetches
                # no layer the store has, and names the image with this tag, pinned.
                entry = self._pull(image, repo, tag, digest, manifest)
                if tag:
                    self._remember(lambda state: state["tags"].__setitem__(key, time.time()))
        finally:
            image_lock.release()
        self._used(str(entry["id"]), run_id)
        return {"image": image, "name": key, "id": str(entry["id"]), "digest": str(entry.get("digest", ""))}

    def _stored(self, repo: str, tag: str, digest: str) -> dict[str, Any] | None:
        """The stored image, where a tag is still pinned (image_tag_ttl) or a digest is given."""
        entry = find(self.store, repo, tag, digest)
        ttl = self.settings.image_tag_ttl
        if entry is None or digest or ttl is None:
            return entry
        resolved = self.state["tags"].get(f"{repo}:{tag}")
        # A tag the admin put in the store was never resolved by the service: it stays.
        return entry if resolved is None or time.time() - float(resolved) < ttl else None

    def _allowed(self, image: str, repo: str) -> None:
        registry = registry_of(repo)
        allowed = self.settings.allowed_registries
        if registry not in allowed:
            raise PullError(
                f"container image {image} is not in this service's image store, and its registry {registry} "
                f"is not one it may pull from (allowed: {', '.join(allowed) or 'none'}; setting "
                "allowed_registries, WES_GATEWAY_ALLOWED_REGISTRIES)"
            )

    def _source(self, repo: str) -> tuple[str, str]:
        """Where ``repo`` is fetched from (the repository at its registry's mirror, if it has one)
        and how errors name that place."""
        registry = registry_of(repo)
        mirror = self.settings.registry_mirrors.get(registry)
        if mirror is None:
            return repo, registry
        path = repo.removeprefix(f"{registry}/")
        return f"{mirror}/{path}", f"{registry} (through its mirror {mirror})"

    def _source_options(self, registry: str, prefix: str) -> list[str]:
        options = []
        if self.settings.registry_certs_dir is not None and (self.settings.registry_certs_dir / registry).is_dir():
            options.append(f"--{prefix}cert-dir={self.settings.registry_certs_dir / registry}")
        if self.settings.registry_auth_file is not None:
            options.append(f"--{prefix}authfile={self.settings.registry_auth_file}")
        return options

    def _skopeo(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        """skopeo in a mount namespace of its own (the storage driver's mounts end with it), in
        bounded time: its group is killed at ``timeout``."""
        seconds = max(1, int(timeout))
        argv = ["unshare", "--mount", "--propagation", "private", "skopeo", f"--command-timeout={seconds}s"]
        argv += [f"--policy={self.policy}", *args]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = process.communicate(timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate(timeout=30)
            err += b"\ntimeout"
        return subprocess.CompletedProcess(argv, process.returncode, out, err)

    def _resolve(self, image: str, repo: str, tag: str) -> tuple[str, bytes]:
        """The digest the registry serves for the tag now (its manifest's, or manifest list's),
        and that manifest."""
        source, named = self._source(repo)
        options = self._source_options(registry_of(source), "")
        done = self._skopeo(["inspect", "--raw", *options, f"docker://{source}:{tag}"], self.settings.registry_timeout)
        if done.returncode != 0:
            cause = _cause(done.stderr.decode(errors="replace"))
            raise PullError(f"container image {image} could not be resolved at {named}: {cause}")
        return "sha256:" + hashlib.sha256(done.stdout).hexdigest(), done.stdout

    def _pull(self, image: str, repo: str, tag: str, digest: str, manifest: bytes | None) -> dict[str, Any]:
        source, named = self._source(repo)
        self._make_room(image, repo, digest, manifest)
        name = f"{repo}:{tag}" if tag else f"{repo}@{digest}"
        runroot = self.home / "runroot"
        target = f"containers-storage:[overlay@{self.store}+{runroot}]{name}"
        started = time.monotonic()
        options = self._source_options(registry_of(source), "src-")
        done = self._skopeo(
            ["copy", "--quiet", "--retry-times=0", *options, f"docker://{source}@{digest}", target],
            self.settings.pull_timeout,
        )
        if done.returncode != 0:
            cause = _cause(done.stderr.decode(errors="replace"))
            raise PullError(f"container image {image} could not be pulled from {named}: {cause}")
        entry = find(self.store, repo, "", digest)
        if entry is None:
            raise PullError(f"container image {image} was pulled from {named} but is not in the image store")
        self._give_to_root(entry)
        log.info("pulled %s (%s) into %s in %.1f s", name, digest, self.store, time.monotonic() - started)
        self._remember(lambda state: state["pulled"].setdefault(str(entry["id"]), {"used": time.time(), "runs": []}))
        return entry

    def _layers(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        listing = _read_json(self.store / "overlay-layers" / "layers.json")
        by_id = {str(layer.get("id")): layer for layer in listing or [] if isinstance(layer, dict)}
        chain: list[dict[str, Any]] = []
        layer_id = str(entry.get("layer", ""))
        while layer_id in by_id and len(chain) < 1000:
            chain.append(by_id[layer_id])
            layer_id = str(by_id[layer_id].get("parent", ""))
        return chain

    def _give_to_root(self, entry: dict[str, Any]) -> None:
        """Every file of the image's layers becomes root's, as scripts/build-images leaves them:
        runs map only their own uid (the view shows root's files as theirs), and the store's
        check at start refuses files of anyone else."""
        for layer in self._layers(entry):
            diff = self.store / "overlay" / str(layer["id"]) / "diff"
            for top, dirs, files in os.walk(diff):
                for name in [*dirs, *files]:
                    path = os.path.join(top, name)
                    if os.lstat(path).st_uid != 0 or os.lstat(path).st_gid != 0:
                        os.lchown(path, 0, 0)
            if diff.exists():
                os.lchown(diff, 0, 0)

    def _remember(self, change: Any) -> None:
        with self._lock:
            change(self.state)
            temporary = self.state_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.state))
            os.replace(temporary, self.state_path)

    def _used(self, image_id: str, run_id: str) -> None:
        def change(state: dict[str, Any]) -> None:
            record = state["pulled"].get(image_id)
            if record is not None:
                record["used"] = time.time()
                if run_id and run_id not in record["runs"]:
                    record["runs"] = [*record["runs"][-50:], run_id]

        self._remember(change)

    def store_bytes(self) -> int:
        listing = _read_json(self.store / "overlay-layers" / "layers.json")
        return sum(int(layer.get("diff-size") or 0) for layer in listing or [] if isinstance(layer, dict))

    def _make_room(self, image: str, repo: str, digest: str, manifest: bytes | None) -> None:
        """Room for the image (its compressed size, times three for unpacking) within
        image_store_limit, by removing least recently used pulled images that no active run
        used, and above disk_reserve; else a PullError that says which."""
        needed = 3 * self._compressed_size(repo, digest, manifest)
        limit = parse_memory(self.settings.image_store_limit)
        failed = 0
        for image_id in self._eviction_order():
            if self.store_bytes() + needed <= limit:
                break
            failed += not self._evict(image_id)
        if self.store_bytes() + needed > limit:
            why = (
                f"{failed} least recently used image(s) could not be removed (the service's log says why)"
                if failed
                else "every pulled image in it is used by an active run"
            )
            raise PullError(
                f"container image {image} does not fit in the image store: {self.store_bytes() + needed} bytes "
                f"would exceed image_store_limit ({self.settings.image_store_limit}), and {why}"
            )
        free = shutil.disk_usage(self.store).free
        if free - needed < parse_memory(self.settings.disk_reserve):
            raise PullError(
                f"container image {image} (about {needed} bytes unpacked) would leave less free space "
                f"than disk_reserve ({self.settings.disk_reserve}) on the image store's filesystem"
            )

    def _compressed_size(self, repo: str, digest: str, raw: bytes | None) -> int:
        """From the manifest the tag resolved to, or else the one the registry serves for the digest."""
        if raw is None:
            source, _ = self._source(repo)
            raw = self._skopeo(
                ["inspect", "--raw", *self._source_options(registry_of(source), ""), f"docker://{source}@{digest}"],
                self.settings.registry_timeout,
            ).stdout
        try:
            manifest = json.loads(raw)
            return sum(int(layer.get("size") or 0) for layer in manifest.get("layers") or [])
        except (ValueError, AttributeError, TypeError):
            return 0  # a manifest list: its size is known only once a platform is chosen

    def _eviction_order(self) -> list[str]:
        """Pulled images that no active run used, least recently used first."""
        active = {run.run_id for run in run_store.iter_runs(run_store.ACTIVE | {run_store.QUEUED})}
        pulled = self.state["pulled"]
        idle = [image_id for image_id, record in pulled.items() if not active & set(record.get("runs") or [])]
        return sorted(idle, key=lambda image_id: float(pulled[image_id].get("used") or 0))

    def _evict(self, image_id: str) -> bool:
        podman = shutil.which("podman") or "/usr/bin/podman"
        # A run root of its own in /tmp: Podman refuses one longer than 50 characters, which
        # data_dir/pulls/runroot easily is; rmi keeps nothing there.
        with tempfile.TemporaryDirectory(prefix="wes-rmi-") as runroot:
            done = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", podman, "--root", str(self.store), "--runroot",
                 runroot, "--storage-driver", "overlay", "rmi", "--force", image_id],
                capture_output=True, timeout=300, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip()[-300:]
            log.warning("could not evict image %s from %s: exit %d: %s", image_id, self.store, done.returncode, why)
            return False
        log.info("evicted image %s from %s (least recently used)", image_id, self.store)
        self._remember(lambda state: state["pulled"].pop(image_id, None))
        return True


class _Handler(socketserver.StreamRequestHandler):
    server: Service

    def handle(self) -> None:
        self.connection.settimeout(10)
        try:
            request = json.loads(self.rfile.readline(MAX_REQUEST))
            image, run_id = str(request["image"]), str(request.get("run", ""))[:100]
        except (ValueError, KeyError, TypeError, OSError):
            self._answer({"error": 'a request is one line of JSON: {"image": ..., "run": ...}'})
            return
        self.connection.settimeout(None)
        try:
            answer: dict[str, str] = self.server.puller.ensure(image, run_id)
        except PullError as error:
            log.warning("run %s: %s", run_id or "?", error)
            answer = {"error": str(error)}
        except Exception as error:  # the shim must hear something; the service goes on
            log.exception("run %s: pull of %s failed", run_id or "?", image)
            answer = {"error": f"container image {image}: the service's pull failed ({type(error).__name__})"}
        self._answer(answer)

    def _answer(self, answer: dict[str, str]) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(answer).encode() + b"\n")


class Service(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, socket_path: Path, puller: Puller) -> None:
        self.puller = puller
        super().__init__(str(socket_path), _Handler)


_running: dict[str, tuple[Service, threading.Thread]] = {}


def socket_dir(settings: Settings) -> Path:
    """The directory of the service's socket, shown read-only in every run's sandbox."""
    return settings.data_dir.resolve() / "pull-socket"


def socket_path(settings: Settings) -> Path:
    return socket_dir(settings) / "pulls.sock"


def start(settings: Settings) -> None:
    """Serve pulls for this supervisor's runs (run users may connect; only the service writes)."""
    stop(settings)
    directory = socket_dir(settings)
    directory.mkdir(mode=0o755, exist_ok=True)
    os.chmod(directory, 0o755)
    path = socket_path(settings)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    service = Service(path, Puller(settings))
    os.chmod(path, 0o666)
    thread = threading.Thread(target=service.serve_forever, name="pulls", daemon=True)
    thread.start()
    _running[str(path)] = (service, thread)
    log.info("pulls into %s served at %s (allowed: %s)", settings.image_store, path, settings.allowed_registries)


def stop(settings: Settings) -> None:
    running = _running.pop(str(socket_path(settings)), None)
    if running is None:
        return
    service, thread = running
    service.shutdown()
    service.server_close()
    thread.join(timeout=10)
    with contextlib.suppress(FileNotFoundError):
        socket_path(settings).unlink()
