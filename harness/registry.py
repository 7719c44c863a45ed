"""A real OCI registry on loopback for the tests and benchmarks: Debian's `docker-registry` (distribution 2.8)
with TLS from a test CA and htpasswd auth, filled with `skopeo copy` from the tests' stand-in
image store, plus one image (``ONLY_HERE``) whose file ``ONLY_FILE`` no other image has.

The CA is trusted by a ``certs.d/<host:port>/ca.crt`` directory that the gateway is given
explicitly (its ``registry_certs_dir`` setting), never the host's /etc; the credentials are in a
deployment ``auth.json`` (``registry_auth_file``). Started and stopped by its own pid.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from harness.gateway import free_port, wait_until

USER, PASSWORD = "wes", "registry-test-password"
ONLY_FILE = "/etc/wes-gateway-registry-only"
ONLY_TEXT = "only in the loopback registry\n"
# name in the registry (under host:port/) -> the stand-in image it is copied from
COPIED = {"library/debian:stable-slim": "docker.io/library/debian:stable-slim"}
ONLY_HERE = "tests/registry-only:1"


def unavailable() -> str:
    missing = [tool for tool in ("docker-registry", "skopeo", "openssl", "htpasswd") if shutil.which(tool) is None]
    return f"not installed: {', '.join(missing)} (scripts/system-deps)" if missing else ""


@dataclass
class Registry:
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def certs_dir(self) -> Path:
        """A certs.d directory (Podman's and skopeo's layout) that trusts this registry's CA."""
        return self.root / "certs.d"

    @property
    def auth_file(self) -> Path:
        return self.root / "auth.json"

    @property
    def wrong_credentials_host(self) -> str:
        """The same registry by another name, for which auth.json holds a wrong password."""
        return f"localhost:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "registry.log"

    def ref(self, name: str) -> str:
        return f"{self.host}/{name}"

    def blob_fetches(self) -> dict[str, int]:
        """Layer and config blobs the registry sent in full (GET .../blobs/sha256:... answered 200)."""
        counts: dict[str, int] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if '"GET /v2/' in line and "/blobs/sha256:" in line and '" 200 ' in line:
                blob = line.split("/blobs/", 1)[1].split(" ", 1)[0]
                counts[blob] = counts.get(blob, 0) + 1
        return counts

    def digest(self, name: str) -> str:
        """The manifest digest the registry serves for ``name`` (a tag)."""
        return "sha256:" + hashlib.sha256(self._manifest(name)).hexdigest()

    def layer_bytes(self, name: str) -> int:
        """The compressed size of ``name``'s layers, as its manifest gives them."""
        return sum(int(layer["size"]) for layer in json.loads(self._manifest(name))["layers"])

    def _manifest(self, name: str) -> bytes:
        repo, _, tag = name.rpartition(":")
        answer = requests.get(
            f"https://{self.host}/v2/{repo}/manifests/{tag}",
            auth=(USER, PASSWORD),
            headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json, "
                "application/vnd.docker.distribution.manifest.v2+json"
            },
            verify=str(self.root / "ca.crt"),
            timeout=30,
        )
        answer.raise_for_status()
        return answer.content


def _run(argv: list[str], timeout: float = 300) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")


def _write_auth(path: Path, host: str, user: str, password: str) -> None:
    """Credentials for ``host``, and wrong ones for the same registry as localhost:port."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    wrong = base64.b64encode(f"{user}:not-the-password".encode()).decode()
    auths = {host: {"auth": token}, host.replace("127.0.0.1", "localhost"): {"auth": wrong}}
    path.write_text(json.dumps({"auths": auths}))
    path.chmod(0o600)


def _certificates(root: Path, host: str) -> None:
    """A test CA and a server certificate for 127.0.0.1 that it signs."""
    _run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=wes-gateway test CA",
            "-keyout",
            str(root / "ca.key"),
            "-out",
            str(root / "ca.crt"),
        ]
    )
    _run(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(root / "server.key"),
            "-out",
            str(root / "server.csr"),
        ]
    )
    (root / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run(
        [
            "openssl",
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            str(root / "server.csr"),
            "-CA",
            str(root / "ca.crt"),
            "-CAkey",
            str(root / "ca.key"),
            "-CAcreateserial",
            "-extfile",
            str(root / "san.cnf"),
            "-out",
            str(root / "server.crt"),
        ]
    )
    for name in (host, host.replace("127.0.0.1", "localhost")):
        trusted = root / "certs.d" / name
        trusted.mkdir(parents=True)
        shutil.copy(root / "ca.crt", trusted / "ca.crt")


def _config(root: Path, port: int) -> Path:
    _run(["htpasswd", "-Bbc", str(root / "htpasswd"), USER, PASSWORD])
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: info, accesslog: {disabled: false}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}', tls: {{certificate: {root / 'server.crt'}, key: {root / 'server.key'}}}}}\n"
        f"auth: {{htpasswd: {{realm: wes-gateway-tests, path: {root / 'htpasswd'}}}}}\n"
    )
    return config


def start(root: Path, port: int = 0) -> Registry:
    """A registry serving on 127.0.0.1 (``port``, or a free one), empty; ready within 20 s."""
    root.mkdir(parents=True, exist_ok=True)
    registry = Registry(root, port or free_port())
    if not (root / "ca.crt").exists():
        _certificates(root, registry.host)
        _write_auth(registry.auth_file, registry.host, USER, PASSWORD)
    config = _config(root, registry.port)
    with open(registry.log, "ab") as log:
        registry.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    process = registry.process

    def answers() -> bool:  # 401: up, and asking for the credentials
        if process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {registry.log.read_text()[-2000:]}")
        try:
            return (
                requests.get(f"https://{registry.host}/v2/", verify=str(root / "ca.crt"), timeout=2).status_code == 401
            )
        except requests.RequestException:
            return False

    try:
        wait_until(answers, 20, "docker-registry to answer", interval=0.2)
    except AssertionError:
        stop(registry)
        raise RuntimeError(f"docker-registry did not answer within 20 s: {registry.log.read_text()[-2000:]}") from None
    return registry


def stop(registry: Registry) -> None:
    """Stop the registry by its own pid (TERM, then KILL after 10 s)."""
    process = registry.process
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _copy(*args: str) -> None:
    """skopeo copy in a mount namespace of its own (its containers-storage mounts stay there)."""
    _run(["unshare", "--mount", "--propagation", "private", "skopeo", "copy", "--quiet", *args])


def _skopeo(registry: Registry, source: str, name: str) -> None:
    certs, auth = str(registry.certs_dir / registry.host), str(registry.auth_file)
    _copy("--dest-cert-dir", certs, "--dest-authfile", auth, source, f"docker://{registry.ref(name)}")


def fill(registry: Registry, image_store: Path, copied: dict[str, str] | None = None) -> None:
    """Copy the stand-ins (``copied``, default COPIED) from ``image_store`` and add ONLY_HERE: a
    stand-in with one more layer holding ONLY_FILE."""
    runroot = registry.root / "runroot"
    source = f"containers-storage:[overlay@{image_store}+{runroot}]"
    for name, stored in (copied or COPIED).items():
        _skopeo(registry, source + stored, name)
    layout = registry.root / "layout"
    _copy(source + next(iter(COPIED.values())), f"oci:{layout}:base")
    _add_layer(layout, "base", "only", {ONLY_FILE.lstrip("/"): ONLY_TEXT.encode()})
    _skopeo(registry, f"oci:{layout}:only", ONLY_HERE)
    shutil.rmtree(layout)
    shutil.rmtree(runroot, ignore_errors=True)


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def _read_blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def _add_layer(layout: Path, base: str, tag: str, files: dict[str, bytes]) -> None:
    """Add to an OCI layout an image ``tag``: ``base`` and a layer of ``files``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    layer_digest, layer_size = _blob(layout, gzip.compress(raw.getvalue(), mtime=0))
    index = json.loads((layout / "index.json").read_text())
    [entry] = [
        m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == base
    ]
    manifest = json.loads(_read_blob(layout, entry["digest"]))
    config = json.loads(_read_blob(layout, manifest["config"]["digest"]))
    config["rootfs"]["diff_ids"].append(diff_id)
    config.setdefault("history", []).append({"created_by": "harness/registry.py"})
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest["config"] = {**manifest["config"], "digest": config_digest, "size": config_size}
    manifest["layers"].append(
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}
    )
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest).encode())
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))


def add_apart(registry: Registry, image_store: Path, name: str, files: dict[str, bytes]) -> None:
    """Push ``name``: the first stand-in's files and ``files`` in one layer of its own, so that it
    shares no layer with any other image (what an eviction test needs: removing one image then
    frees its bytes)."""
    runroot = registry.root / "runroot"
    layout = registry.root / "layout-apart"
    _copy(f"containers-storage:[overlay@{image_store}+{runroot}]{next(iter(COPIED.values()))}", f"oci:{layout}:base")
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_read_blob(layout, index["manifests"][0]["digest"]))
    [layer] = manifest["layers"]
    raw = _read_blob(layout, layer["digest"])
    tar = io.BytesIO(gzip.decompress(raw) if layer["mediaType"].endswith("gzip") else raw)
    with tarfile.open(fileobj=tar, mode="a", format=tarfile.PAX_FORMAT) as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    config = json.loads(_read_blob(layout, manifest["config"]["digest"]))
    config["rootfs"]["diff_ids"] = ["sha256:" + hashlib.sha256(tar.getvalue()).hexdigest()]
    layer_digest, layer_size = _blob(layout, gzip.compress(tar.getvalue(), compresslevel=1, mtime=0))
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest["config"] = {**manifest["config"], "digest": config_digest, "size": config_size}
    manifest["layers"] = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}
    ]
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest).encode())
    index["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "apart"},
        }
    )
    (layout / "index.json").write_text(json.dumps(index))
    _skopeo(registry, f"oci:{layout}:apart", name)
    shutil.rmtree(layout)
    shutil.rmtree(runroot, ignore_errors=True)


def running(root: Path, image_store: Path, copied: dict[str, str] | None = None) -> Iterator[Registry]:
    """A filled registry for a fixture's lifetime (a generator for pytest fixtures)."""
    registry = start(root)
    try:
        fill(registry, image_store, copied)
        yield registry
    finally:
        stop(registry)
