"""Authentication modes, per-user isolation, input policy and secrets, over real HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Server, loopback_http, start_server, stop_server, unix_request

from wes_gateway.files.paths import RunPaths

D = Path(__file__).parent.parent / "data"
SECRET = "sekrit-do-not-leak-8d1f"
PROXY_SECRET = "apache-only-3f9a0c"
ECHO = {
    "workflow_url": "echo.cwl",
    "workflow_type": "CWL",
    "workflow_type_version": "v1.2",
    "workflow_params": json.dumps({"message": "mine"}),
}


def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import bcrypt
    import jwt
    from argon2 import PasswordHasher

    root = tmp_path_factory.mktemp("keys")
    key = rsa_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    (root / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    (root / "htpasswd").write_text(
        f"alice:{bcrypt.hashpw(b'alice-pw', bcrypt.gensalt()).decode()}\n"
        f"bob:{PasswordHasher().hash('bob-pw')}\n"
        f"boss:{bcrypt.hashpw(b'boss-pw', bcrypt.gensalt()).decode()}\n"
    )
    return {"root": root, "key": key}


@pytest.fixture(scope="module")
def secure(keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = keys["root"]
    data_dir = tmp_path_factory.mktemp("secure")
    server = start_server(
        data_dir,
        unix_socket=data_dir.parent / f"{data_dir.name}.sock",
        extra_env={
            "WES_GATEWAY_AUTH_MODES": "proxy,token,jwt,basic",
            "WES_GATEWAY_HTPASSWD_FILE": str(root / "htpasswd"),
            "WES_GATEWAY_JWT_JWKS": str(root / "jwks.json"),
            "WES_GATEWAY_JWT_ISSUER": "https://idp.example.org",
            "WES_GATEWAY_JWT_AUDIENCE": "wes-gateway",
            "WES_GATEWAY_ADMIN_USERS": "boss",
            # The "proxy" is 127.0.0.2; tests calling from 127.0.0.1 are direct clients.
            "WES_GATEWAY_TRUSTED_PROXIES": "127.0.0.2",
            "WES_GATEWAY_AUTH_PROXY_PEERS": "127.0.0.2",
            "WES_GATEWAY_AUTH_PROXY_SECRET": PROXY_SECRET,
            "WES_GATEWAY_STATE_COUNTS_SCOPE": "caller",
            "WES_GATEWAY_MAX_ACTIVE_RUNS_PER_USER": "2",
            "WES_GATEWAY_MAX_ATTACHMENT_BYTES": str(1024 * 1024),
            "SECRET_API_KEY": SECRET,
        },
    )
    yield server
    stop_server(server)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwt_for(keys: dict[str, Any], **overrides: Any) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "sub": "dave",
        "iss": "https://idp.example.org",
        "aud": "wes-gateway",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 300,
        **overrides,
    }
    return jwt.encode(claims, keys["key"], algorithm="RS256", headers={"kid": "k1"})


def from_peer(server: Server, source: str, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    host, port = server.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    conn.request("GET", "/ga4gh/wes/v1" + path, headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def submit(server: Server, headers: dict[str, str], **fields: str) -> requests.Response:
    return requests.post(
        server.api + "/runs",
        headers=headers,
        timeout=60,
        data={**ECHO, **fields},
        files=[("workflow_attachment", ("echo.cwl", (D / "echo.cwl").read_bytes()))],
    )


def test_no_credentials_is_401_with_challenge(secure: Server) -> None:
    response = secure.get("/runs")
    assert response.status_code == 401 and response.json()["status_code"] == 401
    challenge = response.headers["WWW-Authenticate"]
    assert "Basic" in challenge and "Bearer" in challenge
    assert secure.get("/service-info").status_code == 200  # public by default
    assert secure.get("/health").status_code == 200


def test_basic_with_bcrypt_and_argon2(secure: Server) -> None:
    assert secure.get("/runs", headers=basic("alice", "alice-pw")).status_code == 200
    assert secure.get("/runs", headers=basic("bob", "bob-pw")).status_code == 200
    assert secure.get("/runs", headers=basic("alice", "wrong")).status_code == 401
    assert secure.get("/runs", headers=basic("mallory", "x")).status_code == 401
    assert secure.get("/runs", headers={"Authorization": "Basic !!!"}).status_code == 401


def test_api_tokens_issue_and_revoke(secure: Server) -> None:
    env = {**os.environ, "WES_GATEWAY_DATA_DIR": str(secure.data_dir)}
    created = subprocess.run(
        [sys.executable, "-m", "wes_gateway.cli", "token", "create", "erin", "--label", "ci"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = created.stdout.strip().splitlines()[-1]
    token_id = created.stdout.split()[1]
    assert secure.get("/runs", headers=bearer(token)).status_code == 200
    listed = subprocess.run(
        [sys.executable, "-m", "wes_gateway.cli", "token", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "erin" in listed and token not in listed
    subprocess.run(
        [sys.executable, "-m", "wes_gateway.cli", "token", "revoke", token_id], env=env, check=True, capture_output=True
    )
    assert secure.get("/runs", headers=bearer(token)).status_code == 401
    assert secure.get("/runs", headers=bearer("wes_notatoken")).status_code == 401


def test_jwt_claims_are_checked(secure: Server, keys: dict[str, Any]) -> None:
    import jwt

    assert secure.get("/runs", headers=bearer(jwt_for(keys))).status_code == 200
    now = int(time.time())
    for bad in (
        jwt_for(keys, exp=now - 120),
        jwt_for(keys, aud="someone-else"),
        jwt_for(keys, iss="https://evil.example.org"),
        jwt_for(keys, nbf=now + 600),
        jwt.encode(
            {"sub": "dave", "iss": "https://idp.example.org", "aud": "wes-gateway", "exp": now + 60},
            "shared-secret-is-not-accepted-here",
            algorithm="HS256",
        ),
        jwt.encode(
            {"sub": "dave", "iss": "https://idp.example.org", "aud": "wes-gateway", "exp": now + 60},
            rsa_key(),
            algorithm="RS256",
            headers={"kid": "k1"},
        ),
    ):
        response = secure.get("/runs", headers=bearer(bad))
        assert response.status_code == 401, bad
        assert response.json()["status_code"] == 401


def test_only_the_documented_roles_claim_shapes_grant_admin(secure: Server, keys: dict[str, Any]) -> None:
    # Another user's run: only an admin may read it.
    alice_run = submit(secure, basic("alice", "alice-pw"))
    assert alice_run.status_code == 200, alice_run.text
    path = f"/runs/{alice_run.json()['run_id']}/status"
    for roles in (["wes-admin"], "openid wes-admin"):
        assert secure.get(path, headers=bearer(jwt_for(keys, roles=roles))).status_code == 200, roles
    for roles in ({"wes-admin": False}, {"wes-admin": True}, [{"wes-admin": True}], 1, ["wes-administrator"]):
        response = secure.get(path, headers=bearer(jwt_for(keys, roles=roles)))
        assert response.status_code in (403, 404), (roles, response.status_code)


def test_proxy_header_only_from_the_trusted_proxy(secure: Server) -> None:
    status, body = from_peer(secure, "127.0.0.2", "/runs", {"X-Remote-User": "carol"})
    assert status == 200 and "runs" in body
    status, body = from_peer(secure, "127.0.0.1", "/runs", {"X-Remote-User": "carol"})
    assert status == 401 and "trusted proxy" in body["msg"]
    status, _ = from_peer(secure, "127.0.0.2", "/runs", {})
    assert status == 401
    # Loopback is no proof of being the proxy: every local process (a workflow step, too) has it.
    status, body = from_peer(secure, "127.0.0.1", "/runs", {"X-Remote-User": "boss"})
    assert status == 401
    # The shared secret that Apache adds proves it, from any address; a wrong one does not.
    status, body = from_peer(
        secure, "127.0.0.1", "/runs", {"X-Remote-User": "carol", "X-WES-Gateway-Proxy-Secret": PROXY_SECRET}
    )
    assert status == 200 and "runs" in body
    status, _ = from_peer(
        secure, "127.0.0.1", "/runs", {"X-Remote-User": "carol", "X-WES-Gateway-Proxy-Secret": "guess"}
    )
    assert status == 401
    # So does the unix socket, which only the web server's group may open.
    socket_path = secure.data_dir.parent / f"{secure.data_dir.name}.sock"
    assert socket_path.stat().st_mode & 0o777 == 0o660
    status, body = unix_request(socket_path, "/ga4gh/wes/v1/runs", {"X-Remote-User": "carol"})
    assert status == 200 and "runs" in body
    # A client cannot plant the internal user headers either.
    status, _ = from_peer(secure, "127.0.0.1", "/runs", {"X-WES-Gateway-User": "alice", "X-WES-Gateway-Admin": "1"})
    assert status == 401


def test_users_are_isolated_on_every_route(secure: Server) -> None:
    alice, bob, boss = basic("alice", "alice-pw"), basic("bob", "bob-pw"), basic("boss", "boss-pw")
    response = submit(secure, alice)
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    deadline = time.monotonic() + 120
    while secure.get(f"/runs/{run_id}/status", headers=alice).json()["state"] not in ("COMPLETE", "EXECUTOR_ERROR"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    tasks = secure.get(f"/runs/{run_id}/tasks", headers=alice).json()["task_logs"]
    assert tasks
    task_id = tasks[0]["id"]
    assert run_id in {r["run_id"] for r in secure.get("/runs", headers=alice).json()["runs"]}
    assert run_id not in {r["run_id"] for r in secure.get("/runs", headers=bob).json()["runs"]}
    for path in (
        f"/runs/{run_id}",
        f"/runs/{run_id}/status",
        f"/runs/{run_id}/tasks",
        f"/runs/{run_id}/tasks/{task_id}",
        f"/runs/{run_id}/logs/stderr",
        f"/runs/{run_id}/tasks/{task_id}/logs/stderr",
    ):
        assert secure.get(path, headers=bob).status_code == 404, path
        assert secure.get(path, headers=alice).status_code == 200, path
        assert secure.get(path, headers=boss).status_code == 200, path
    assert secure.post(f"/runs/{run_id}/cancel", headers=bob).status_code == 404
    assert run_id in {r["run_id"] for r in secure.get("/runs?page_size=1000", headers=boss).json()["runs"]}
    assert sum(secure.get("/service-info", headers=bob).json()["system_state_counts"].values()) == 0
    assert secure.get("/service-info", headers=alice).json()["system_state_counts"]["COMPLETE"] >= 1


def submit_tool(
    server: Server, headers: dict[str, str], name: str, params: dict, extra: list | None = None
) -> requests.Response:
    return requests.post(
        server.api + "/runs",
        headers=headers,
        timeout=60,
        data={**ECHO, "workflow_url": name, "workflow_params": json.dumps(params)},
        files=[("workflow_attachment", (name, (D / name).read_bytes())), *(extra or [])],
    )


def test_per_user_queue_limit(secure: Server, keys: dict[str, Any]) -> None:
    frank = bearer(jwt_for(keys, sub="frank"))
    ids = []
    for _ in range(2):
        response = submit_tool(secure, frank, "sleep.cwl", {"seconds": 300})
        assert response.status_code == 200, response.text
        ids.append(response.json()["run_id"])
    third = submit(secure, frank)
    assert third.status_code == 429 and int(third.headers["Retry-After"]) > 0
    assert third.json()["status_code"] == 429
    assert submit(secure, basic("alice", "alice-pw")).status_code == 200  # others are not limited
    for run_id in ids:
        secure.post(f"/runs/{run_id}/cancel", headers=frank)
    for run_id in ids:
        deadline = time.monotonic() + 60
        while secure.get(f"/runs/{run_id}/status", headers=frank).json()["state"] != "CANCELED":
            assert time.monotonic() < deadline
            time.sleep(0.3)
    assert submit(secure, frank).status_code == 200


def settle(server: Server, timeout: float = 90) -> None:
    """Wait for every short run to end, so that the per-user limit (2) refuses nothing here."""
    boss = basic("boss", "boss-pw")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = server.get("/runs", headers=boss, params={"page_size": 100}).json()["runs"]
        if not any(run["state"] in ("QUEUED", "INITIALIZING", "RUNNING") for run in runs):
            return
        time.sleep(0.3)


def run_dirs(server: Server) -> set[str]:
    settle(server)
    runs = server.data_dir / "runs"
    staging = runs / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
    return {p.name for p in runs.iterdir() if not p.name.startswith(".")} if runs.exists() else set()


@pytest.mark.parametrize(
    "flag",
    [
        {"--debugWorker": None},
        {"--jobStore": "file:/tmp/x"},
        {"--writeLogs": "/etc"},
        {"--setEnv": "A=1"},
        {"--batchSystem": "slurm"},
    ],
)
def test_disallowed_engine_flags(secure: Server, flag: dict) -> None:
    before = run_dirs(secure)
    response = submit(secure, basic("alice", "alice-pw"), workflow_engine_parameters=json.dumps(flag))
    assert response.status_code == 400 and next(iter(flag)) in response.json()["msg"]
    assert run_dirs(secure) == before


def test_document_default_pointing_outside_is_refused(secure: Server) -> None:
    alice = basic("alice", "alice-pw")
    before = run_dirs(secure)
    response = submit_tool(secure, alice, "steal_default.cwl", {})
    assert response.status_code == 400 and "/etc/passwd" in response.json()["msg"], response.text
    assert run_dirs(secure) == before
    allowed = submit_tool(
        secure, alice, "default_attached.cwl", {}, [("workflow_attachment", ("greeting.txt", b"hi from a default\n"))]
    )
    assert allowed.status_code == 200, allowed.text


@pytest.mark.parametrize(
    "name, fragment", [("include_secret.cwl", "/etc/hostname"), ("run_outside.cwl", "/etc/wes-gateway-not-allowed.cwl")]
)
def test_documents_cannot_pull_in_local_files(secure: Server, name: str, fragment: str) -> None:
    before = run_dirs(secure)
    response = submit_tool(secure, basic("alice", "alice-pw"), name, {})
    assert response.status_code == 400 and fragment in response.json()["msg"], response.text
    assert run_dirs(secure) == before


def test_remote_workflow_url_needs_an_allowed_prefix(secure: Server) -> None:
    alice = basic("alice", "alice-pw")
    for url in ("http://example.org/wf.cwl", "http://169.254.169.254/latest/meta-data/x.cwl"):
        response = submit(secure, alice, workflow_url=url)
        assert response.status_code == 400 and "allowed URL prefix" in response.json()["msg"]
    inputs = submit(
        secure,
        alice,
        workflow_params=json.dumps(
            {"message": "x", "f": {"class": "File", "location": "http://169.254.169.254/latest/meta-data"}}
        ),
    )
    assert inputs.status_code == 400 and "link-local" in inputs.json()["msg"]


def test_oversized_upload_is_413_and_writes_nothing(secure: Server) -> None:
    before = run_dirs(secure)
    response = requests.post(
        secure.api + "/runs",
        headers=basic("alice", "alice-pw"),
        timeout=60,
        data=ECHO,
        files=[
            ("workflow_attachment", ("echo.cwl", (D / "echo.cwl").read_bytes())),
            ("workflow_attachment", ("big.bin", b"\0" * (2 * 1024 * 1024))),
        ],
    )
    assert response.status_code == 413 and response.json()["status_code"] == 413
    assert run_dirs(secure) == before


def test_server_secrets_reach_no_run(secure: Server) -> None:
    alice = basic("alice", "alice-pw")
    response = submit_tool(secure, alice, "fail.cwl", {})
    run_id = response.json()["run_id"]
    leader_env = b""
    deadline = time.monotonic() + 120
    while secure.get(f"/runs/{run_id}/status", headers=alice).json()["state"] not in ("EXECUTOR_ERROR", "COMPLETE"):
        leader_file = RunPaths(root=secure.data_dir / "runs" / run_id).leader_file
        if leader_file.exists() and not leader_env:
            try:
                pid = json.loads(leader_file.read_text())["pid"]
                leader_env = Path(f"/proc/{pid}/environ").read_bytes()
            except (OSError, ValueError):
                pass
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert leader_env and SECRET.encode() not in leader_env
    secure.wait_settled(run_id)
    # The failed run keeps its job store, where Toil pickled the leader's environment.
    run_dir = secure.data_dir / "runs" / run_id
    assert (run_dir / "jobstore").exists()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_no_auth_off_loopback_is_refused(tmp_path: Path) -> None:
    from wes_gateway.config import load_settings
    from wes_gateway.web.app import create_app
    from wes_gateway.web.auth import ConfigError

    with pytest.raises(ConfigError, match="loopback"):
        create_app(load_settings({}, data_dir=tmp_path, bind="0.0.0.0:8080"))
    create_app(load_settings({}, data_dir=tmp_path, bind="0.0.0.0:8080", auth_modes=["token"]))


def test_no_auth_on_a_real_non_loopback_listener_is_refused(tmp_path: Path) -> None:
    # The settings say loopback; Gunicorn is told otherwise on its command line.
    with pytest.raises(RuntimeError) as failure:
        start_server(tmp_path / "data", {"GUNICORN_CMD_ARGS": "--bind 0.0.0.0:0"})
    assert "refuses to serve without authentication on 0.0.0.0" in str(failure.value)


# ---------------------------------------------------------------- at the edges, and under load


def test_es256_header_against_rsa_keys_is_a_401(secure: Server, keys: dict[str, Any]) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    now = int(time.time())
    claims = {"sub": "dave", "iss": "https://idp.example.org", "aud": "wes-gateway", "exp": now + 300}
    token = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "k1"})
    response = secure.get("/runs", headers=bearer(token))
    assert response.status_code == 401 and response.json()["status_code"] == 401, response.text


@pytest.mark.parametrize(
    "credentials",
    [
        base64.b64encode("jürgen:pässwörd".encode()).decode(),
        base64.b64encode(b"alice:" + b"x" * 100).decode(),  # over bcrypt's 72 bytes
        base64.b64encode(b"\xff\xfe:\x80").decode(),
        "not base64 at all!",
        base64.b64encode(b"no-colon").decode(),
    ],
)
def test_odd_basic_credentials_are_a_401(secure: Server, credentials: str) -> None:
    response = secure.get("/runs", headers={"Authorization": f"Basic {credentials}"})
    assert response.status_code == 401 and response.json()["status_code"] == 401, response.text


def test_doubled_slashes_do_not_skip_authentication(secure: Server) -> None:
    for path in ("//ga4gh/wes/v1/runs", "/ga4gh//wes/v1/runs", "/ga4gh/wes/v1//runs", "/ga4gh/wes/v1/./runs"):
        response = requests.get(secure.base + path, timeout=10)
        assert response.status_code == 401, (path, response.status_code, response.text)
    # The same spelling with credentials reaches the route.
    assert requests.get(secure.base + "//ga4gh/wes/v1/runs", headers=basic("alice", "alice-pw"), timeout=10).ok


def test_cross_site_state_changes_are_refused(secure: Server) -> None:
    alice = basic("alice", "alice-pw")
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        response = submit(secure, {**alice, **headers})
        assert response.status_code == 403 and response.json()["status_code"] == 403, (headers, response.text)
        cancel = secure.post("/runs/whatever/cancel", headers={**alice, **headers})
        assert cancel.status_code == 403, headers
    # A same-origin browser request, and a plain client, go through.
    host = secure.base.removeprefix("http://")
    same = submit(secure, {**alice, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200, same.text
    # Reads are not state changes.
    assert secure.get("/runs", headers={**alice, "Origin": "https://evil.example"}).status_code == 200


def test_failed_logins_are_rate_limited(secure: Server) -> None:
    mallory = {"Authorization": "Basic " + base64.b64encode(b"mallory:guess").decode()}
    # The count is in the store: every web worker (2 here) says 429 after the same 20 failures.
    statuses = [from_peer(secure, "127.0.0.3", "/runs", mallory)[0] for _ in range(30)]
    assert statuses == [401] * 20 + [429] * 10, statuses
    host, port = secure.base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=("127.0.0.3", 0))
    conn.request("GET", "/ga4gh/wes/v1/runs", headers=mallory)
    response = conn.getresponse()
    assert response.status == 429 and int(response.getheader("Retry-After", "0")) >= 1
    # Another user from another peer is not locked out by it.
    assert secure.get("/runs", headers=basic("alice", "alice-pw")).status_code == 200


def test_nobody_can_lock_a_user_out_from_elsewhere(secure: Server) -> None:
    # Someone guesses alice's password from one address until it is throttled...
    wrong = basic("alice", "not-her-password")
    statuses = [from_peer(secure, "127.0.0.5", "/runs", wrong)[0] for _ in range(45)]
    assert statuses[-1] == 429, statuses
    # ... which throttles alice from there only: from another address her password works, and
    # another user behind the same address (one proxy for many users) is not throttled.
    assert from_peer(secure, "127.0.0.6", "/runs", basic("alice", "alice-pw"))[0] == 200
    assert from_peer(secure, "127.0.0.5", "/runs", basic("bob", "bob-pw"))[0] == 200
    # Guessing goes on being refused from there.
    assert from_peer(secure, "127.0.0.5", "/runs", wrong)[0] == 429


@pytest.fixture(scope="module")
def basic_only(keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("basic-only"),
        {
            "WES_GATEWAY_AUTH_MODES": "basic",
            "WES_GATEWAY_HTPASSWD_FILE": str(keys["root"] / "htpasswd"),
            "WES_GATEWAY_AUTH_FAILURES_ALLOWED": "100000",
            "WES_GATEWAY_SUPERVISOR": "off",
        },
        workers=1,
    )
    yield server
    stop_server(server)


def median_seconds(call: Any, count: int) -> float:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def test_unknown_users_take_as_long_as_known_ones(basic_only: Server) -> None:
    known = median_seconds(lambda: basic_only.get("/runs", headers=basic("alice", "wrong")), 7)
    unknown = median_seconds(lambda: basic_only.get("/runs", headers=basic("nosuchuser", "wrong")), 7)
    assert known > 0.02  # bcrypt's cost is there at all
    assert 0.5 < unknown / known < 2.0, (known, unknown)


def test_wrong_passwords_do_not_block_the_service(basic_only: Server) -> None:
    import threading

    stop = threading.Event()

    def hammer() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                session.get(basic_only.api + "/runs", headers=basic("alice", "wrong"), timeout=30)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        health = median_seconds(lambda: basic_only.get("/health"), 15)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    # Before, eight such connections took /health from 3 ms to 1.8 s: bcrypt ran in the event loop.
    assert health < 0.25, health
    # And a correct login is remembered: the second costs no bcrypt.
    first = median_seconds(lambda: basic_only.get("/runs", headers=basic("alice", "alice-pw")), 1)
    again = median_seconds(lambda: basic_only.get("/runs", headers=basic("alice", "alice-pw")), 5)
    assert again < first / 2 or again < 0.02, (first, again)


def test_a_slow_jwks_url_does_not_stall_other_requests(keys: dict[str, Any], tmp_path: Path) -> None:
    """The JWKS behind a URL answers in 3 s (an identity provider having a bad day): a JWT
    request waits for it in a worker thread, while /health on the same (single) web worker
    answers at once. Before, the fetch ran on the event loop and held every request."""
    import threading
    import time

    with loopback_http((keys["root"] / "jwks.json").read_bytes(), delay=3) as idp_url:
        server = start_server(
            tmp_path,
            {
                "WES_GATEWAY_AUTH_MODES": "jwt",
                "WES_GATEWAY_JWT_JWKS": f"{idp_url}/jwks.json",
                "WES_GATEWAY_JWT_ISSUER": "https://idp.example.org",
                "WES_GATEWAY_JWT_AUDIENCE": "wes-gateway",
                "WES_GATEWAY_SUPERVISOR": "off",
            },
            workers=1,
        )
        try:
            answers: dict[str, int] = {}

            def with_jwt() -> None:
                answers["jwt"] = server.get("/runs", headers={"Authorization": f"Bearer {jwt_for(keys)}"}).status_code

            waiting = threading.Thread(target=with_jwt)
            waiting.start()
            time.sleep(0.5)  # the JWT request is waiting on the JWKS
            started = time.monotonic()
            assert server.get("/health").status_code == 200
            health = time.monotonic() - started
            waiting.join(30)
            assert answers["jwt"] == 200
            assert health < 1.0, f"/health took {health:.2f} s while the JWKS was fetched"
        finally:
            stop_server(server)
