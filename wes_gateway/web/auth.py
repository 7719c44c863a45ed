"""Who is calling: an ASGI middleware in front of Connexion that authenticates every API request.

Modes (settings.auth_modes, tried in this order, any may be combined):
- ``proxy``: a user header (``X-Remote-User`` by default) set by a reverse proxy, honoured
  only on a unix socket, from ``auth_proxy_peers`` (none by default), or with the shared
  secret ``auth_proxy_secret``; the same header from anyone else is refused. A loopback
  address is no proof: every local process, a workflow's steps among them, has one.
- ``token``: static API tokens from ``wes-gateway token create USER``, stored as SHA-256.
- ``jwt``: bearer JWTs verified against a JWKS (file or URL) or a public key; asymmetric
  algorithms only; ``iss``, ``aud``, ``exp`` and ``nbf`` are checked.
- ``basic``: HTTP Basic against an htpasswd-style file with bcrypt or argon2 hashes (what
  toil-wes-cwl-runner sends from TOIL_WES_USER/TOIL_WES_PASSWORD).
No mode at all is only allowed when the service is bound to loopback.

The result travels to the handlers as internal headers that the middleware strips from the
incoming request first, so no client can set them.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wes_gateway.config import Settings
from wes_gateway.errors import send_error
from wes_gateway.web import identity
from wes_gateway.web.credentials import Htpasswd, JwtVerifier, Unauthorized, basic_credentials
from wes_gateway.web.identity import ADMIN_HEADER, USER_HEADER, User
from wes_gateway.web.routes import route_of

__all__ = ["UI_COOKIE", "Authenticator", "AuthMiddleware", "ConfigError", "Unauthorized", "check_settings"]

log = logging.getLogger(__name__)

# The run browser's login form keeps a token or JWT here (HttpOnly, SameSite=Strict).
UI_COOKIE = "wes_gateway_ui"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ConfigError(ValueError):
    pass


class Throttled(Unauthorized):
    """Too many failed logins for this user or from this peer: a 429 with Retry-After."""

    def __init__(self, msg: str, retry_after: int) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class NeedsVerifying(Exception):
    """Basic credentials that only the slow hash check can settle (off the event loop)."""

    def __init__(self, name: str, password: str) -> None:
        super().__init__(name)
        self.name, self.password = name, password


class NeedsFetching(Exception):
    """A JWT whose key may have to be fetched from the JWKS URL (off the event loop)."""

    def __init__(self, token: str) -> None:
        super().__init__("jwt")
        self.token = token


# Basic checks running at once per worker; the rest queue, and other requests go on.
VERIFY_THREADS = 2


class FailureLimiter:
    """Failed logins by who tried from where, counted in the store so that every web worker
    sees the same count. A user is throttled only from a peer that has failed as that user:
    nobody can lock a user out from elsewhere, and users behind one proxy do not share a
    count."""

    def __init__(self, allowed: int, window: float) -> None:
        self.allowed, self.window = allowed, window

    def wait(self, name: str, peer: str) -> int:
        """Seconds until ``name`` may try again from ``peer`` (0: now)."""
        from wes_gateway import store

        times = store.login_failures(failure_key(name, peer), self.window)
        if len(times) < self.allowed:
            return 0
        return max(1, int(times[-self.allowed] + self.window - time.time()) + 1)

    def record(self, name: str, peer: str) -> None:
        from wes_gateway import store

        store.record_login_failure(failure_key(name, peer), self.window)


def failure_key(name: str, peer: str) -> str:
    return json.dumps([name, peer])


def is_loopback_bind(bind: str) -> bool:
    if bind.startswith("unix:"):
        return True
    host = bind.rsplit(":", 1)[0].strip("[]") if ":" in bind else bind
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_settings(settings: Settings) -> None:
    """Refuse configurations that would expose an unauthenticated service."""
    unknown = set(settings.auth_modes) - {"proxy", "token", "jwt", "basic"}
    if unknown:
        raise ConfigError(f"unknown auth modes: {', '.join(sorted(unknown))}")
    if not settings.auth_modes and not all(is_loopback_bind(part.strip()) for part in settings.bind.split(",")):
        raise ConfigError(
            f"WES_GATEWAY_AUTH_MODES is empty but the service binds {settings.bind}: "
            "authentication may be off only on loopback"
        )
    if "basic" in settings.auth_modes and not settings.htpasswd_file:
        raise ConfigError("auth mode basic needs WES_GATEWAY_HTPASSWD_FILE")
    if "jwt" in settings.auth_modes and not (settings.jwt_jwks or settings.jwt_public_key):
        raise ConfigError("auth mode jwt needs WES_GATEWAY_JWT_JWKS or WES_GATEWAY_JWT_PUBLIC_KEY")


def exposed_listeners(settings: Settings, addresses: list[str | tuple[Any, ...]]) -> list[str]:
    """The sockets actually bound (Gunicorn's, whatever the settings said) that reach beyond
    this host while authentication is off; unix sockets are local."""
    if settings.auth_modes:
        return []
    exposed = []
    for address in addresses:
        if isinstance(address, tuple) and not is_loopback_bind(f"[{address[0]}]:{address[1]}"):
            exposed.append(f"{address[0]}:{address[1]}")
    return exposed


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proxy_header = settings.auth_proxy_header.lower().encode()
        self.secret_header = settings.auth_proxy_secret_header.lower().encode()
        self.secret = settings.auth_proxy_secret.encode()
        self.htpasswd = Htpasswd(Path(settings.htpasswd_file)) if "basic" in settings.auth_modes else None
        self.failures = FailureLimiter(settings.auth_failures_allowed, settings.auth_failure_window)
        self.jwt = JwtVerifier(settings) if "jwt" in settings.auth_modes else None

    def _user(self, name: str) -> User:
        return User(name, admin=name in self.settings.admin_users)

    def authenticate(self, peer: str, headers: dict[bytes, bytes]) -> User:
        modes = self.settings.auth_modes
        if not modes:
            return User("", admin=True)
        forwarded_user = headers.get(self.proxy_header)
        trusted = self.identity_trusted(peer, headers)
        if "proxy" in modes and forwarded_user is not None:
            if not trusted:
                raise Unauthorized(f"{self.settings.auth_proxy_header} is only honoured from the trusted proxy")
            name = forwarded_user.decode("latin-1").strip()
            if not name:
                raise Unauthorized(f"empty {self.settings.auth_proxy_header}")
            return self._user(name)
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, credentials = authorization.partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == "basic" and self.htpasswd is not None:
            name, password = basic_credentials(credentials)
            if self.htpasswd.cached(name, password):
                return self._user(name)
            raise NeedsVerifying(name, password)
        if scheme == "bearer":
            if "token" in modes and credentials.startswith("wes_"):
                from wes_gateway import store

                owner = store.token_owner(store.hash_token(credentials))
                if owner is not None:
                    return self._user(owner)
                raise Unauthorized("unknown or revoked API token")
            if self.jwt is not None:
                if self.jwt.jwk_client is not None:
                    raise NeedsFetching(credentials)
                return self.jwt.verify(credentials)
        if "proxy" in modes and trusted:
            raise Unauthorized(f"the proxy sent no {self.settings.auth_proxy_header}")
        raise Unauthorized("credentials required")

    def authenticate_here(self, peer: str, headers: dict[bytes, bytes]) -> User:
        """``authenticate`` with its slow parts done in this thread (not the event loop's)."""
        try:
            return self.authenticate(peer, headers)
        except NeedsVerifying as pending:
            return self.verify_basic(peer, pending.name, pending.password)
        except NeedsFetching as pending:
            assert self.jwt is not None
            return self.jwt.verify(pending.token)

    def verify_basic(self, peer: str, name: str, password: str) -> User:
        """The slow Basic check, in a worker thread, behind the failure limits."""
        assert self.htpasswd is not None
        wait = self.failures.wait(name, peer)
        if wait:
            raise Throttled(f"too many failed logins as {name!r} from here; try again in {wait} s", wait)
        if self.htpasswd.verify(name, password):
            return self._user(name)
        self.failures.record(name, peer)
        raise Unauthorized("wrong user name or password")

    def identity_trusted(self, peer: str, headers: dict[bytes, bytes]) -> bool:
        """Whether this request may name its user in the proxy header."""
        if peer == "unix" or peer in self.settings.auth_proxy_peers:
            return True
        sent = headers.get(self.secret_header)
        return bool(self.secret) and sent is not None and hmac.compare_digest(sent, self.secret)

    def challenge(self) -> str:
        parts = []
        if "basic" in self.settings.auth_modes:
            parts.append('Basic realm="wes-gateway", charset="UTF-8"')
        if {"token", "jwt"} & set(self.settings.auth_modes):
            parts.append('Bearer realm="wes-gateway"')
        return ", ".join(parts) or 'Bearer realm="wes-gateway"'


class AuthMiddleware:
    """ASGI middleware: authenticate, then pass the user on in internal headers."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.auth = Authenticator(settings)
        self.pool = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="basic-auth")

    def _with_ui_cookie(self, headers: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """The login form's cookie as a bearer credential, where no other credential came.
        SameSite=Strict keeps browsers from sending it on any other site's request."""
        if b"authorization" in headers or not ({"token", "jwt"} & set(self.settings.auth_modes)):
            return headers
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == UI_COOKIE and value:
                return {**headers, b"authorization": b"Bearer " + value.encode("latin-1")}
        return headers

    def _wants_login(self, area: str) -> bool:
        modes = set(self.settings.auth_modes)
        return area == "ui" and "basic" not in modes and bool({"token", "jwt"} & modes)

    def _cross_site(self, peer: str, headers: dict[bytes, bytes]) -> str | None:
        """Why a state-changing request looks sent by another site's page, if it does: a form
        POST needs no preflight, and browsers attach cached Basic credentials and cookies."""
        site = headers.get(b"sec-fetch-site")
        if site in (b"cross-site", b"same-site"):
            return f"Sec-Fetch-Site is {site.decode('latin-1')}"
        origin = headers.get(b"origin")
        if origin is None:
            return None  # not a browser, or a same-origin request from an old one
        hosts = {headers.get(b"host", b"")}
        if peer in self.settings.trusted_proxies and b"x-forwarded-host" in headers:
            hosts.add(headers[b"x-forwarded-host"].split(b",")[0].strip())
        netloc = urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") if origin != b"null" else b""
        return None if netloc and netloc in hosts else f"Origin {origin.decode('latin-1')!r} is another site"

    async def _authenticate(self, peer: str, headers: dict[bytes, bytes]) -> User:
        """The caller, with the slow checks (a password hash, a JWKS fetch) off the event loop."""
        try:
            return self.auth.authenticate(peer, headers)
        except NeedsVerifying as pending:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, self.auth.verify_basic, peer, pending.name, pending.password)
        except NeedsFetching as pending:
            assert self.auth.jwt is not None
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, self.auth.jwt.verify, pending.token)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The path is already in its one spelling (routes.RouteMap), for this check and for
        # the router alike.
        route = route_of(scope)
        path = route.path
        headers = dict(scope.get("headers", []))
        # The shared secret goes no further than this check: not to handlers, not to logs.
        hidden = (USER_HEADER, ADMIN_HEADER, self.auth.secret_header)
        raw = [(k, v) for k, v in scope.get("headers", []) if k not in hidden]
        # A unix-socket peer has no address.
        peer = (scope.get("client") or ("unix", 0))[0]
        if scope["method"] not in SAFE_METHODS:
            reason = self._cross_site(peer, headers)
            if reason is not None:
                log.info("403 for %s %s from %s: %s", scope["method"], path, peer, reason)
                await send_error(send, 403, f"cross-site request refused: {reason}")
                return
        try:
            user = await self._authenticate(peer, self._with_ui_cookie(headers))
        except Throttled as exc:
            log.info("429 for %s %s from %s: %s", scope["method"], path, peer, exc.msg)
            await send_error(send, 429, exc.msg, [(b"retry-after", str(exc.retry_after).encode())])
            return
        except Unauthorized as exc:
            if route.public:
                user = User("")
            elif self._wants_login(route.area):
                # A browser with no credentials the modes can take from it: the login form.
                # Relative, so that it holds under any proxy prefix.
                rest = path[len("/ui/") :] if path.startswith("/ui/") else None
                login = "ui/login" if rest is None else "../" * rest.count("/") + "login"
                await send({"type": "http.response.start", "status": 303, "headers": [(b"location", login.encode())]})
                await send({"type": "http.response.body", "body": b""})
                return
            else:
                log.info("401 for %s %s from %s: %s", scope["method"], path, peer, exc.msg)
                await send_error(send, 401, exc.msg, [(b"www-authenticate", self.auth.challenge().encode())])
                return
        identity.record(scope, user, raw)
        await self.app({**scope, "headers": raw}, receive, send)
