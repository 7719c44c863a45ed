"""The credentials themselves: HTTP Basic against an htpasswd-style file (bcrypt or argon2),
and JWTs against a JWKS or a public key. The auth middleware (auth.py) decides who asks and
when; this module says whether what they sent is right."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, cast

from wes_gateway.config import Settings
from wes_gateway.web.identity import User

log = logging.getLogger(__name__)

ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
# Successful Basic checks are remembered this long (a keyed digest), so that a client
# polling a run does not pay bcrypt on every request.
CACHE_SECONDS = 60.0
CACHE_ENTRIES = 10_000


class Unauthorized(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


def basic_credentials(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unauthorized("malformed Basic credentials") from None
    name, colon, password = decoded.partition(":")
    if not colon or not name:
        raise Unauthorized("malformed Basic credentials")
    return name, password


class Htpasswd:
    """An htpasswd-style file, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mtime = -1.0
        self.entries: dict[str, str] = {}
        self.lock = threading.Lock()
        self.cache: dict[bytes, float] = {}
        self.cache_key = secrets.token_bytes(32)
        self.dummy = ""

    def _load(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime == self.mtime:
            return
        entries = {}
        for line in self.path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and ":" in line:
                user, hashed = line.split(":", 1)
                entries[user] = hashed
        self.entries, self.mtime = entries, mtime
        self.cache.clear()
        self.dummy = _dummy_like(next(iter(entries.values()), ""))

    def _key(self, user: str, password: str) -> bytes:
        # A keyed digest, so that the cache never holds anything a password can be read from.
        return hmac.digest(
            self.cache_key, f"{self.mtime}\0{user}\0{password}".encode("utf-8", "surrogatepass"), "sha256"
        )

    def cached(self, user: str, password: str) -> bool:
        """Whether this very user and password verified within CACHE_SECONDS (cheap)."""
        with self.lock:
            self._load()
            expiry = self.cache.get(self._key(user, password))
        return expiry is not None and expiry > time.monotonic()

    def verify(self, user: str, password: str) -> bool:
        """The slow check (bcrypt or argon2): run it in a thread, not in the event loop."""
        with self.lock:
            self._load()
            hashed = self.entries.get(user)
            dummy = self.dummy
        # An unknown user costs what a known one does, so that timing tells no user names.
        ok = self._check(user, hashed or dummy, password) and hashed is not None
        if ok:
            with self.lock:
                if len(self.cache) >= CACHE_ENTRIES:
                    self.cache.clear()
                self.cache[self._key(user, password)] = time.monotonic() + CACHE_SECONDS
        return ok

    def _check(self, user: str, hashed: str, password: str) -> bool:
        if hashed.startswith(("$2y$", "$2b$", "$2a$")):
            import bcrypt

            try:
                return bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), ("$2b$" + hashed[4:]).encode())
            except ValueError:  # over 72 bytes, which bcrypt cannot hash: it can never match
                return False
        if hashed.startswith("$argon2"):
            from argon2 import PasswordHasher
            from argon2.exceptions import Argon2Error

            try:
                return PasswordHasher().verify(hashed, password)
            except Argon2Error:
                return False
        log.warning("htpasswd: user %s has an unsupported hash (use bcrypt or argon2)", user)
        return False


def _dummy_like(example: str) -> str:
    """A hash of a random secret, of the same kind and cost as the file's own."""
    secret = secrets.token_hex(16)
    if example.startswith("$argon2"):
        from argon2 import PasswordHasher

        return PasswordHasher().hash(secret)
    import bcrypt

    parts = example.split("$")
    rounds = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 12
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds)).decode()


class JwtVerifier:
    def __init__(self, settings: Settings) -> None:
        import jwt

        self.settings = settings
        self.jwk_client = None
        self.static_keys: list[Any] = []
        if settings.jwt_public_key:
            self.static_keys = [Path(settings.jwt_public_key).read_text()]
        elif settings.jwt_jwks.startswith(("http://", "https://")):
            # Keys and the set are cached (the set for 5 min; an unknown kid fetches it anew).
            self.jwk_client = jwt.PyJWKClient(settings.jwt_jwks, cache_keys=True, timeout=10)
        else:
            keys = jwt.PyJWKSet.from_dict(json.loads(Path(settings.jwt_jwks).read_text()))
            self.static_keys = [key for key in keys.keys]

    def verify(self, token: str) -> User:
        import jwt

        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in ASYMMETRIC:
                raise Unauthorized("JWT algorithm not accepted; use an asymmetric one")
            if self.jwk_client is not None:
                candidates = [self.jwk_client.get_signing_key_from_jwt(token)]
            else:
                kid = header.get("kid")
                candidates = [k for k in self.static_keys if kid is None or getattr(k, "key_id", None) in (None, kid)]
            options = {"require": ["exp", "iss", "aud"] if settings.jwt_audience else ["exp"]}
            last: Exception | None = None
            for key in candidates:
                try:
                    claims = jwt.decode(
                        token,
                        key=getattr(key, "key", key),
                        algorithms=ASYMMETRIC,
                        audience=settings.jwt_audience or None,
                        issuer=settings.jwt_issuer or None,
                        options=cast(Any, options),
                        leeway=30,
                    )
                    break
                except (jwt.InvalidSignatureError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                    # ValueError/TypeError: the header's algorithm does not fit this key's type.
                    last = exc
            else:
                raise Unauthorized(f"JWT rejected: {last or 'no matching key'}")
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"JWT rejected: {exc}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise Unauthorized(f"JWT rejected: {type(exc).__name__}") from None
        name = str(claims.get(settings.jwt_user_claim) or "")
        if not name:
            raise Unauthorized(f"JWT has no {settings.jwt_user_claim} claim")
        return User(
            name,
            admin=settings.admin_role in _roles(claims.get(settings.jwt_admin_claim)) or name in settings.admin_users,
        )


def _roles(claim: object) -> list[str]:
    """The roles a JWT claim names, in the two documented shapes: a list of strings, or one
    string of space-separated roles (OAuth's scope style). Any other shape (an object such as
    {"wes-admin": false}, a number, a list of objects) names no role."""
    if isinstance(claim, str):
        return claim.split()
    if isinstance(claim, list):
        return [role for role in claim if isinstance(role, str)]
    return []
