"""API tokens and failed logins: what authentication keeps in the store."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import cast

from wes_gateway.store.db import database
from wes_gateway.store.schema import ApiToken, LoginFailure
from wes_gateway.store.times import utc_now


def new_token() -> str:
    return "wes_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are 256 random bits: a plain digest is enough, and it makes lookups indexable.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(user: str, token_hash: str, label: str) -> ApiToken:
    return cast(ApiToken, ApiToken.create(user=user, token_hash=token_hash, label=label, created_at=utc_now()))


def token_owner(token_hash: str) -> str | None:
    row = ApiToken.get_or_none((ApiToken.token_hash == token_hash) & ApiToken.revoked_at.is_null())
    return None if row is None else str(row.user)


def list_tokens() -> list[ApiToken]:
    return list(ApiToken.select().order_by(ApiToken.id))


def revoke_token(token_id: int) -> bool:
    return bool(
        ApiToken.update(revoked_at=utc_now()).where((ApiToken.id == token_id) & ApiToken.revoked_at.is_null()).execute()
        == 1
    )


def record_login_failure(key: str, window: float) -> None:
    """One more failed login for ``key``; failures older than ``window`` seconds go."""
    now = time.time()
    with database.atomic():
        LoginFailure.create(key=key[:512], at=now)
        LoginFailure.delete().where(LoginFailure.at < now - window).execute()


def login_failures(key: str, window: float) -> list[float]:
    """When ``key``'s failed logins of the last ``window`` seconds happened, oldest first."""
    rows = (
        LoginFailure.select(LoginFailure.at)
        .where((LoginFailure.key == key[:512]) & (LoginFailure.at >= time.time() - window))
        .order_by(LoginFailure.at)
    )
    return [float(row.at) for row in rows]
