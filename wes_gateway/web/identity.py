"""Who is making the request: written once by the auth middleware, read by the access log,
the metrics route and the handlers. Imports nothing of the project's, so that any layer may
read it (it ended the cycle auth → accesslog → metrics → auth)."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

# The headers the auth middleware sets on the request it passes on (any a client sent are
# dropped first): the handlers read the caller from them.
USER_HEADER = b"x-wes-gateway-user"
ADMIN_HEADER = b"x-wes-gateway-admin"
# Where the access log keeps its record of the request in the ASGI scope.
ACCESS_RECORD = "wes_gateway.access"


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False

    def sees(self, owner: str) -> bool:
        """Whether this caller may see a run of ``owner``: their own, or any as an admin."""
        return self.admin or owner == self.name


def record(scope: MutableMapping[str, Any], user: User, raw_headers: list[tuple[bytes, bytes]]) -> None:
    """The auth middleware's word on the caller: into the access log's record and the headers
    the app will read."""
    if ACCESS_RECORD in scope:
        scope[ACCESS_RECORD]["user"] = user.name
    raw_headers.append((USER_HEADER, user.name.encode("utf-8")))
    raw_headers.append((ADMIN_HEADER, b"1" if user.admin else b"0"))


def current_user(headers: Any) -> User:
    """The caller, as the middleware recorded it (handlers call this with flask.request.headers)."""
    name = headers.get(USER_HEADER.decode(), "")
    return User(name, admin=headers.get(ADMIN_HEADER.decode(), "0") == "1")
