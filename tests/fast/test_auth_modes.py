"""Who is calling, in process: each auth mode through the real middleware stack and store,
the public operations of the route map, and the identity the handlers and access log read."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from wes_gateway import store
from wes_gateway.config import Settings, load_settings
from wes_gateway.web.app import create_app

API = "/ga4gh/wes/v1"
SECRET = "proxy-secret-for-tests"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import bcrypt
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    root = tmp_path_factory.mktemp("keys")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    (root / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    # The lowest bcrypt cost: these tests are about who is let in, not about the hash.
    (root / "htpasswd").write_text(
        f"alice:{bcrypt.hashpw(b'alice-pw', bcrypt.gensalt(4)).decode()}\n"
        f"boss:{bcrypt.hashpw(b'boss-pw', bcrypt.gensalt(4)).decode()}\n"
    )
    return {"root": root, "key": key}


def secured(tmp_path: Path, keys: dict[str, Any], **overrides: Any) -> Settings:
    root = keys["root"]
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "container_engine": "none",
        "run_sandbox": "none",
        "run_disk": "none",
        "auth_modes": ["proxy", "token", "jwt", "basic"],
        "htpasswd_file": str(root / "htpasswd"),
        "jwt_jwks": str(root / "jwks.json"),
        "jwt_issuer": "https://idp.example.org",
        "jwt_audience": "wes-gateway",
        "admin_users": ["boss"],
        "auth_proxy_secret": SECRET,
        **overrides,
    }
    return load_settings({}, **values)


@pytest.fixture
def settings(tmp_path: Path, keys: dict[str, Any]) -> Settings:
    """Every mode on (the fast tier's `client` and `submit` use these settings)."""
    return secured(tmp_path, keys)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def jwt_for(keys: dict[str, Any], **overrides: Any) -> str:
    import jwt

    now = int(time.time())
    claims = {"sub": "dave", "iss": "https://idp.example.org", "aud": "wes-gateway", "exp": now + 300, **overrides}
    return str(jwt.encode(claims, keys["key"], algorithm="RS256", headers={"kid": "k1"}))


def assert_error(response: Any, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"msg", "status_code"} and body["status_code"] == status
    assert fragment in body["msg"], body


PROTECTED = [
    ("GET", "/runs"),
    ("POST", "/runs"),
    ("GET", "/runs/r1"),
    ("GET", "/runs/r1/status"),
    ("POST", "/runs/r1/cancel"),
    ("GET", "/runs/r1/tasks"),
    ("GET", "/runs/r1/outputs/a/b"),
    ("GET", "/runs/r1/events"),
    ("DELETE", "/runs/r1"),
]


def test_a_protected_operation_without_credentials_is_401(client: Any) -> None:
    for method, path in PROTECTED:
        response = client.request(method, API + path)
        assert_error(response, 401, "credentials required")
        challenge = response.headers["www-authenticate"]
        assert "Basic" in challenge and "Bearer" in challenge, (method, path)


def test_public_operations_need_no_credentials(client: Any) -> None:
    for path in ("/health", "/service-info", "/openapi.json"):
        assert client.get(API + path).status_code == 200, path


def test_service_info_needs_credentials_when_the_setting_says(tmp_path: Path, keys: dict[str, Any]) -> None:
    client = create_app(secured(tmp_path, keys, auth_service_info=True)).test_client()
    assert_error(client.get(f"{API}/service-info"), 401)
    assert client.get(f"{API}/service-info", headers=basic("alice", "alice-pw")).status_code == 200
    assert client.get(f"{API}/health").status_code == 200


@pytest.mark.parametrize("path", ["//ga4gh/wes/v1/runs", "/ga4gh//wes/v1/runs", "/ga4gh/wes/v1/./runs"])
def test_other_spellings_of_a_path_do_not_skip_authentication(client: Any, path: str) -> None:
    # Through the raw ASGI path: an HTTP client would fold some of these itself.
    status, _ = asgi_get(client, path, {})
    assert status == 401
    status, _ = asgi_get(client, path, basic("alice", "alice-pw"))
    assert status == 200


def asgi_get(client: Any, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """GET with the path exactly as given (no client-side folding), through the app's ASGI."""
    import asyncio

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        "client": ("testclient", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        # The body once; then, as a server does, nothing until the client goes away (here:
        # once the response is complete), so that a middleware watching for that waits.
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        while not any(m["type"] == "http.response.body" and not m.get("more_body") for m in sent):
            await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(client.app(scope, receive, send), 30))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_basic_credentials(client: Any) -> None:
    assert client.get(f"{API}/runs", headers=basic("alice", "alice-pw")).status_code == 200
    assert_error(client.get(f"{API}/runs", headers=basic("alice", "wrong")), 401, "wrong user name or password")
    assert_error(client.get(f"{API}/runs", headers=basic("nobody", "x")), 401)
    assert_error(client.get(f"{API}/runs", headers={"Authorization": "Basic !!!"}), 401, "malformed")


def test_api_tokens_and_their_owner(client: Any, submit: Any) -> None:
    token = store.new_token()
    store.create_token("erin", store.hash_token(token), "test")
    headers = {"Authorization": f"Bearer {token}"}
    response = client.post(
        f"{API}/runs",
        headers=headers,
        data={"workflow_type": "CWL", "workflow_type_version": "v1.2", "workflow_url": "echo.cwl"},
        files={"workflow_attachment": ("echo.cwl", (Path(__file__).parents[1] / "data" / "echo.cwl").read_bytes())},
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    # The handler recorded the caller the middleware authenticated as the owner.
    assert store.get_run(run_id).owner == "erin"
    assert client.get(f"{API}/runs/{run_id}/status", headers=headers).status_code == 200
    # Nobody else sees it: another user's run is "not found".
    assert_error(client.get(f"{API}/runs/{run_id}/status", headers=basic("alice", "alice-pw")), 404)
    # An admin sees every run.
    assert client.get(f"{API}/runs/{run_id}/status", headers=basic("boss", "boss-pw")).status_code == 200
    bad = {"Authorization": "Bearer wes_" + "0" * 40}
    assert_error(client.get(f"{API}/runs", headers=bad), 401, "unknown or revoked API token")


def test_jwts_are_verified(client: Any, keys: dict[str, Any]) -> None:
    ok = client.get(f"{API}/runs", headers={"Authorization": f"Bearer {jwt_for(keys)}"})
    assert ok.status_code == 200, ok.text
    for token, fragment in (
        (jwt_for(keys, aud="elsewhere"), "JWT rejected"),
        (jwt_for(keys, iss="https://evil.example"), "JWT rejected"),
        (jwt_for(keys, exp=int(time.time()) - 3600), "JWT rejected"),
        (jwt_for(keys, sub=""), "no sub claim"),
    ):
        assert_error(client.get(f"{API}/runs", headers={"Authorization": f"Bearer {token}"}), 401, fragment)


def test_the_proxy_header_needs_the_proxy_secret(client: Any) -> None:
    assert_error(client.get(f"{API}/runs", headers={"X-Remote-User": "carol"}), 401, "trusted proxy")
    wrong = {"X-Remote-User": "carol", "X-WES-Gateway-Proxy-Secret": "guess"}
    assert_error(client.get(f"{API}/runs", headers=wrong), 401)
    right = {"X-Remote-User": "carol", "X-WES-Gateway-Proxy-Secret": SECRET}
    assert client.get(f"{API}/runs", headers=right).status_code == 200


def test_the_proxy_header_from_a_trusted_peer(tmp_path: Path, keys: dict[str, Any]) -> None:
    # Starlette's test client is the peer "testclient".
    client = create_app(secured(tmp_path, keys, auth_proxy_peers=["testclient"])).test_client()
    assert client.get(f"{API}/runs", headers={"X-Remote-User": "carol"}).status_code == 200
    assert_error(client.get(f"{API}/runs"), 401, "the proxy sent no X-Remote-User")


def test_clients_cannot_plant_the_internal_identity_headers(client: Any) -> None:
    planted = {"X-WES-Gateway-User": "boss", "X-WES-Gateway-Admin": "1"}
    assert_error(client.get(f"{API}/runs", headers=planted), 401)
    # On a public route the planted admin flag is dropped too: the counts are the caller's.
    info = client.get(f"{API}/service-info", headers=planted)
    assert info.status_code == 200


def test_cross_site_state_changes_are_refused(client: Any) -> None:
    alice = basic("alice", "alice-pw")
    for extra in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}):
        assert_error(client.post(f"{API}/runs/r1/cancel", headers={**alice, **extra}), 403, "cross-site")
    # A same-origin one reaches the route (no such run), and reads are not state changes.
    same = client.post(f"{API}/runs/r1/cancel", headers={**alice, "Origin": "http://testserver"})
    assert_error(same, 404)
    assert client.get(f"{API}/runs", headers={**alice, "Origin": "https://evil.example"}).status_code == 200


def test_the_run_browser_sends_token_users_to_its_login(tmp_path: Path, keys: dict[str, Any]) -> None:
    client = create_app(secured(tmp_path, keys, auth_modes=["token"], htpasswd_file="")).test_client()
    response = client.get("/ui/runs/abc", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "../login"
    assert client.get("/ui/login").status_code == 200
    # The API itself answers 401, never a redirect.
    assert_error(client.get(f"{API}/runs", follow_redirects=False), 401)


def test_the_access_log_names_the_authenticated_user(client: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="wes_gateway.access"):
        client.get(f"{API}/runs", headers=basic("alice", "alice-pw"))
        client.get(f"{API}/health")
    lines = [r.getMessage() for r in caplog.records if r.name == "wes_gateway.access"]
    assert len(lines) == 2
    assert " alice " in lines[0] and f'"GET {API}/runs" 200' in lines[0]
    assert " - " in lines[1]


def test_metrics_are_for_admins_or_local_scrapers(client: Any) -> None:
    # The test client's peer is no loopback address: only an admin gets the samples.
    assert_error(client.get("/metrics", headers=basic("alice", "alice-pw")), 403, "admins")
    assert client.get("/metrics", headers=basic("boss", "boss-pw")).status_code == 200
    assert_error(client.get("/metrics"), 403)


def test_without_auth_modes_every_caller_is_an_anonymous_admin(client: Any, tmp_path: Path) -> None:
    open_settings = load_settings(
        {}, data_dir=tmp_path / "open", container_engine="none", run_sandbox="none", run_disk="none"
    )
    assert open_settings.auth_modes == []
    open_client = create_app(open_settings).test_client()
    assert open_client.get(f"{API}/runs").status_code == 200
    assert open_client.get("/metrics").status_code == 200
