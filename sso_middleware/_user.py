"""The authenticated user, as the application receives it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class User:
    """A user whose ID token was verified.

    ``claims`` contains the verified claims that the session keeps. ``groups`` and
    ``roles`` come from the ``groups`` and ``roles`` claims. The properties
    ``is_authenticated``, ``display_name`` and ``identity`` make an instance usable as
    Starlette's ``request.user``.
    """

    sub: str
    email: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only views keep a shared, cached instance from being changed by one
        # request and seen by the next.
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "roles", tuple(self.roles))

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> User:
        """Build a user from verified claims."""
        return cls(
            sub=str(claims["sub"]),
            email=_optional_str(claims.get("email")),
            name=_optional_str(claims.get("name")),
            groups=_str_tuple(claims.get("groups")),
            roles=_str_tuple(claims.get("roles")),
            claims=claims,
        )

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name or self.preferred_username or self.email or self.sub

    @property
    def identity(self) -> str:
        return self.sub

    @property
    def preferred_username(self) -> str | None:
        return _optional_str(self.claims.get("preferred_username"))

    def to_json(self) -> dict[str, Any]:
        """Return the user as the JSON object of the userinfo endpoint."""
        return {
            "sub": self.sub,
            "email": self.email,
            "name": self.name,
            "groups": list(self.groups),
            "claims": dict(self.claims),
        }


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _str_tuple(value: Any) -> tuple[str, ...]:
    # Providers send groups as a list, and some as one space- or comma-separated
    # string. Anything else is ignored rather than guessed at.
    if isinstance(value, str):
        return tuple(part for part in value.replace(",", " ").split() if part)
    if isinstance(value, list | tuple):
        return tuple(item for item in value if isinstance(item, str))
    return ()


# The identity headers that the proxy and the forward-auth endpoint send, in the
# names oauth2-proxy made common. Client-sent copies are always removed first.
IDENTITY_HEADERS = (
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
)


def identity_headers(user: User) -> list[tuple[bytes, bytes]]:
    """Return the identity headers for ``user`` as encoded header pairs.

    A value that contains a control character is left out, because it could end the
    header and inject another one.
    """
    values = (
        user.sub,
        user.email,
        user.preferred_username,
        ",".join(user.groups) if user.groups else None,
    )
    headers = []
    for name, value in zip(IDENTITY_HEADERS, values):
        if value and not any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
            headers.append((name.encode("ascii"), value.encode("utf-8")))
    return headers


class AnonymousUser:
    """The user of a request without a session, on a public path.

    It matches Starlette's ``UnauthenticatedUser``, so ``request.user.is_authenticated``
    works on every path.
    """

    __slots__ = ()
    is_authenticated = False
    display_name = ""
    identity = ""

    def __repr__(self) -> str:
        return "AnonymousUser()"


ANONYMOUS = AnonymousUser()
