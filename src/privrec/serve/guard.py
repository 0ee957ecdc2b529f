"""What stands in front of every route: API keys, per-key rate limits, body size limits, the log.

* **Keys** are the ledger's (``prk_<id>_<secret>``, stored as scrypt hashes, roles owner /
  analyst / auditor). A request sends one as ``Authorization: Bearer <key>`` (or
  ``X-API-Key``). Reads and recommendations reuse a verified key for ``ttl`` seconds (so a
  revoked key stops working within that time); anything that spends budget re-opens the
  ledger with the key, so a revoked key never spends.
* **Rate limits**: a token bucket per presented key (``rate`` requests per second, bursts up
  to ``burst``), checked before the key is verified. The bucket is the key id *and* a hash of
  the whole key: someone who knows only a key's (non-secret) id cannot drain its owner's
  bucket with wrong secrets.
* **Body limits**: a request whose body exceeds the route's limit is refused with 413 before
  it is read whole (by ``Content-Length``, and by counting when it is streamed).
* **The access log** names the method, the route *template*, the status and the time — never
  the client address, the query string, headers or the body: the service keeps nothing of a
  recommendation request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from privrec.errors import AuthenticationError
from privrec.governance import Ledger
from privrec.governance.auth import Principal, parse_key
from privrec.governance.db import create_ledger_engine

__all__ = ["AccessLog", "BodyLimit", "KeyCache", "RateLimiter", "error_body"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("privrec.serve.access")


def error_body(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message, **extra}}


@dataclass
class _Entry:
    principal: Principal
    expires: float


class KeyCache:
    """Verified keys (by SHA-256 of the key, never the key itself) for ``ttl`` seconds."""

    def __init__(self, url: str, ttl: float = 5.0, max_entries: int = 4096) -> None:
        self.url = url
        self.ttl = ttl
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[bytes, _Entry] = {}

    def cached(self, key: str) -> Principal | None:
        """The key's principal if it was verified less than ``ttl`` seconds ago, else ``None``."""
        digest = hashlib.sha256(key.encode()).digest()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit.expires > time.monotonic():
            return hit.principal
        return None

    def principal(self, key: str) -> Principal:
        """The key's principal, verified in the database at most every ``ttl`` seconds.

        For routes that only read or recommend (no ledger object is needed); anything that
        spends budget uses ``ledger(key, fresh=True)``. A verification may hash the secret
        (scrypt): callers on the event loop check :meth:`cached` first and run this in a thread.
        """
        parse_key(key)  # malformed keys: AuthenticationError without a database round trip
        hit = self.cached(key)
        if hit is not None:
            return hit
        return self._verify(key, hashlib.sha256(key.encode()).digest()).principal

    def ledger(self, key: str, *, fresh: bool = False) -> Ledger:
        """The ledger acting as the key's principal; ``fresh`` re-checks the key in the database."""
        parse_key(key)  # malformed keys: AuthenticationError without a database round trip
        digest = hashlib.sha256(key.encode()).digest()
        now = time.monotonic()
        if not fresh:
            with self._lock:
                hit = self._entries.get(digest)
            if hit is not None and hit.expires > now:
                return Ledger(create_ledger_engine(self.url), self.url, hit.principal)
        return self._verify(key, digest)

    def _verify(self, key: str, digest: bytes) -> Ledger:
        now = time.monotonic()
        led = Ledger.connect(self.url, key)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = _Entry(led.principal, now + self.ttl)
        return led


class RateLimiter:
    """Token buckets per key id: ``rate`` per second, at most ``burst`` at once (0 disables)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = float(rate)
        self.burst = max(int(burst), 1)
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, ident: str) -> float:
        """0.0 if a request by ``ident`` may go now, else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(ident, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[ident] = (tokens - 1.0, now)
                if len(self._buckets) > 100_000:  # forget idle buckets (they refill anyway)
                    self._buckets = {
                        k: v for k, v in self._buckets.items() if now - v[1] < 60 * self.burst
                    }
                return 0.0
            self._buckets[ident] = (tokens, now)
            return (1.0 - tokens) / self.rate


def key_ident(key: str) -> str:
    """The rate-limit identity of a presented key: its id and a hash of the whole key (a wrong
    secret is another bucket, never the real key's), or a hash of a malformed one."""
    try:
        return "k:" + parse_key(key)[0] + ":" + hashlib.sha256(key.encode()).hexdigest()[:16]
    except AuthenticationError:
        return "x:" + hashlib.sha256(key.encode()).hexdigest()[:16]


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class BodyLimit:
    """ASGI middleware: refuse bodies over ``limit_for(path)`` bytes with a JSON 413."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit or declared < 0:
                    await _send_json(send, 413, _too_large(limit))
                    return
        seen = 0
        started = False
        refused = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if not started and not refused:
                        refused = True  # answer now: whatever the app does next is dropped
                        await _send_json(send, 413, _too_large(limit))
                    raise _TooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_TooLargeError):
            await self.app(scope, limited_receive, tracking_send)


class _TooLargeError(Exception):
    pass


def _too_large(limit: int) -> dict[str, Any]:
    return error_body(
        413, "request_too_large", f"the request body is larger than this route's {limit} bytes"
    )


class AccessLog:
    """ASGI middleware: one log line per request with the route template, status and duration.

    Also the last catch of unexpected exceptions (logged by type only, answered with a JSON 500).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            # Unexpected: log the exception's type only (a message or traceback could quote
            # request data), answer a plain 500, and do not re-raise into the server's logger.
            access_log.error("internal error: %s", type(exc).__name__)
            if status == 0:
                status = 500
                await _send_json(send, 500, error_body(500, "internal_error", "internal error"))
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unrouted)"
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d %.1fms",
                    scope.get("method", "?"),
                    template,
                    status,
                    (time.perf_counter() - t0) * 1e3,
                )
