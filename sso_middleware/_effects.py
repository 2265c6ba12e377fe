"""The I/O that the framework-free core requests from its adapters.

The core is written as generators, in the manner of httpx's auth flows: a handler
yields an effect, the adapter performs it with its own client (blocking for WSGI,
``await`` for ASGI) and sends the result back in. A failure is thrown back into the
generator at the ``yield``, so each rule is written once for both adapters.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoreCall:
    """A call of one method of the redis client, such as ``get`` or ``set``."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReadBody:
    """A request to read the request body, up to ``limit`` bytes.

    The result is the body, or ``None`` when it is longer than ``limit``.
    """

    limit: int


Effect = httpx.Request | StoreCall | ReadBody

# A core step: yields effects, receives their results, and returns a T.
Flow = Generator[Effect, Any, T]
