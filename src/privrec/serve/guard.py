"""What stands in front of every route: API keys, per-key rate limits, body size limits, the log.

* **Keys** are the ledger's (``prk_<id>_<secret>``, stored as scrypt hashes, roles owner /
  analyst / auditor). A request sends one as ``Authorization: Bearer <key>`` (or
  ``X-API-Key``). Reads and recommendations reuse a verified key for ``ttl`` seconds (so a
  revoked key stops working within that time); anything that spends budget re-opens the
  ledger with the key, so a revoked key never spends.
* **Malformed keys** (anything but ``prk_`` + 12-character id + ``_`` + URL-safe secret, with
  no surrounding whitespace) are refused with 401 first: they get no rate-limit bucket, no
  database round trip and no scrypt.
* **Rate limits**: a token bucket per presented key (``rate`` requests per second, bursts up
  to ``burst``), checked before the key is verified. The bucket is the parsed key id *and* a
  hash of its secret: someone who knows only a key's (non-secret) id cannot drain its owner's
  bucket with wrong secrets, and one key has exactly one bucket. The table is bounded and O(1)
  per request (idle buckets are forgotten once full again; least recently used ones past the
  cap).
* **Key verification** (:class:`KeyCache`) is bounded globally, never per key id: at most
  :data:`HASH_CONCURRENCY` scrypt hashes at once, and failed verifications draw on one token
  bucket for the whole process (:data:`FAILURE_BURST`, then :data:`FAILURE_RATE` per second), so
  wrong secrets cannot make the service hash without end, yet an attacker who knows a key's id
  cannot lock its holder out by spraying it. An unknown or revoked key id costs the same scrypt
  hash as a wrong secret for a real one (a dummy of the same parameters), so whether an id
  exists does not show in the time of the answer.
* **Body limits**: a request whose body exceeds the route's limit is refused with 413 before
  it is read whole (by ``Content-Length``, and by counting when it is streamed).
* **The access log** names the method, the route *template*, the status and the time — never
  the client address, the query string, headers or the body: the service keeps nothing of a
  recommendation request.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from privrec.errors import AuthenticationError, PrivrecError
from privrec.governance import Ledger
from privrec.governance import auth as _auth
from privrec.governance import schema as _tbl
from privrec.governance.auth import Principal, parse_key
from privrec.governance.db import create_ledger_engine, read_transaction, require_existing

__all__ = [
    "FAILURE_BURST",
    "FAILURE_RATE",
    "HASH_CONCURRENCY",
    "AccessLog",
    "AuthThrottledError",
    "BodyLimit",
    "KeyCache",
    "RateLimiter",
    "check_key",
    "error_body",
    "key_ident",
    "source_ident",
    "well_formed",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("privrec.serve.access")


def error_body(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message, **extra}}


#: The shape of a key ``privrec keys create`` hands out: ``prk_``, a 12-character id, ``_``,
#: a URL-safe secret. Checked before anything else, so junk costs no bucket, no database round
#: trip and no scrypt; no whitespace is allowed (``str.strip`` in the ledger would otherwise make
#: ``key\xa0`` the same key as ``key`` but a different rate-limit identity).
_KEY_SHAPE = re.compile(r"prk_[0-9A-Za-z]{12}_[0-9A-Za-z_-]{1,256}")

#: Failed key verifications allowed per process, whatever the key id: a burst of this many, then
#: ``FAILURE_RATE`` per second (each costs one scrypt hash, ~50 ms of one core). Past that, keys
#: this process has not verified before are answered 429 without hashing, whatever their id.
FAILURE_BURST = 40
FAILURE_RATE = 4.0
#: scrypt hashes computed at once (the rest wait up to ``HASH_WAIT`` seconds, then 429)
HASH_CONCURRENCY = 2
#: Failed verifications allowed per client address (a burst, then a rate per second), checked
#: before the process-wide budget: one source spraying random keys exhausts its own allowance,
#: not every other client's sign-in (a reviewer locked every new key out from one client).
SOURCE_FAILURE_BURST = 10
SOURCE_FAILURE_RATE = 0.5
HASH_WAIT = 10.0
#: An IPv6 client is charged by its /64: one host is routinely given a whole /64, so per
#: address it could take a fresh allowance for every attempt (and spend the process-wide one)
SOURCE_IPV6_PREFIX = 64


def source_ident(source: str | None) -> str:
    """The identity a client address's failed sign-ins are charged to.

    An IPv4 address as itself (an IPv4-mapped IPv6 address, as a dual-stack socket reports an
    IPv4 peer, is that IPv4 address); an IPv6 address by its /64
    (:data:`SOURCE_IPV6_PREFIX`), however it is written; anything that is not an IP address (no
    peer, a Unix socket, a proxy's X-Forwarded-For entry that names no address) one shared
    identity ``"?"`` — so no spelling of an address, and no made-up value, is a new allowance.
    """
    if not source:
        return "?"
    try:
        ip = ipaddress.ip_address(source.strip())
    except ValueError:
        return "?"
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is None:
            net = ipaddress.IPv6Network((int(ip), SOURCE_IPV6_PREFIX), strict=False)
            return str(net)
        ip = mapped
    return str(ip)


def well_formed(key: str) -> bool:
    """Whether ``key`` has exactly the shape of a ledger key (no surrounding whitespace)."""
    return len(key) <= 300 and _KEY_SHAPE.fullmatch(key) is not None


def check_key(key: str) -> tuple[str, str]:
    """``(key id, secret)`` of a well-formed key, else :class:`AuthenticationError` (fixed text).

    Runs before rate limiting: a malformed key gets no rate-limit bucket (so random junk cannot
    fill the limiter's table) and never reaches the database.
    """
    if not well_formed(key):
        raise AuthenticationError("malformed API key (expected prk_<id>_<secret>)")
    return parse_key(key)


class AuthThrottledError(AuthenticationError):
    """The process's budget of failed key verifications is spent (or its scrypt slots stayed
    busy): refused (429) without hashing the secret, whatever the key id.

    Parameters
    ----------
    retry_after
        Seconds until the budget allows the next attempt.
    """

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__("too many failed key verifications on this server; try again later")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.retry_after,))


@dataclass
class _Entry:
    principal: Principal
    expires: float


class KeyCache:
    """Verified keys (by SHA-256 of the key, never the key itself) for ``ttl`` seconds.

    Verifying a key costs one scrypt hash (tens of milliseconds, by design). The work is bounded
    for the whole process, never per key id — a per-id limit lets anyone who knows an id (it is
    not secret) lock its holder out by spraying wrong secrets at it:

    * at most :data:`HASH_CONCURRENCY` hashes run at once;
    * failed verifications draw on one token bucket (:data:`FAILURE_BURST`, then
      :data:`FAILURE_RATE` per second; a success gives its token back). When it is empty, a key
      this process has not verified before is refused (429) without hashing — the same answer
      for every id, so it tells nothing about any key. Only a flood above that rate from the
      whole internet does this, and it slows every new sign-in alike (a front proxy's job);
    * a key that verified before in this process (remembered by digest, bounded) needs no
      token and no hash (the ledger remembers it too), so holders already signed in pass even
      then.

    An unknown or revoked key id would answer without a hash, and so faster than a wrong secret
    for a real id — a timing oracle for which ids exist. So before the ledger checks a key, a
    cheap query asks whether its id is active; if not, a dummy scrypt hash of the same
    parameters is computed (under the same budget), and the ledger then refuses the key as it
    would have: both answers cost one hash and the same database reads.
    """

    def __init__(self, url: str, ttl: float = 5.0, max_entries: int = 4096) -> None:
        self.url = url
        self.ttl = ttl
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[bytes, _Entry] = {}
        #: digests of keys that verified at least once (LRU): no failure token, no hash slot
        self._good: OrderedDict[bytes, None] = OrderedDict()
        #: one bucket for the whole process (identity ``"*"``)
        self.failures = RateLimiter(FAILURE_RATE, FAILURE_BURST, max_entries=1)
        #: per client address, in front of the process-wide bucket (bounded, LRU)
        self.source_failures = RateLimiter(
            SOURCE_FAILURE_RATE, SOURCE_FAILURE_BURST, max_entries=50_000
        )
        self.hashing = threading.BoundedSemaphore(HASH_CONCURRENCY)
        self._dummy_salt = secrets.token_bytes(16)
        self._dummy_hash = _auth.hash_secret(secrets.token_urlsafe(32), self._dummy_salt)

    def cached(self, key: str) -> Principal | None:
        """The key's principal if it was verified less than ``ttl`` seconds ago, else ``None``."""
        digest = hashlib.sha256(key.encode()).digest()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit.expires > time.monotonic():
            return hit.principal
        return None

    def principal(self, key: str, source: str | None = None) -> Principal:
        """The key's principal, verified in the database at most every ``ttl`` seconds.

        For routes that only read or recommend (no ledger object is needed); anything that
        spends budget uses ``ledger(key, fresh=True)``. A verification may hash the secret
        (scrypt): callers on the event loop check :meth:`cached` first and run this in a thread.
        """
        check_key(key)  # malformed keys: AuthenticationError without a database round trip
        hit = self.cached(key)
        if hit is not None:
            return hit
        return self._verify(key, hashlib.sha256(key.encode()).digest(), source).principal

    def ledger(self, key: str, *, fresh: bool = False, source: str | None = None) -> Ledger:
        """The ledger acting as the key's principal; ``fresh`` re-checks the key in the database."""
        check_key(key)  # malformed keys: AuthenticationError without a database round trip
        digest = hashlib.sha256(key.encode()).digest()
        now = time.monotonic()
        if not fresh:
            with self._lock:
                hit = self._entries.get(digest)
            if hit is not None and hit.expires > now:
                return Ledger(create_ledger_engine(self.url), self.url, hit.principal)
        return self._verify(key, digest, source)

    def _active(self, key_id: str) -> bool:
        """Whether ``key_id`` names a key the ledger would check the secret of (one cheap read)."""
        try:
            require_existing(self.url)  # never create an empty SQLite file
            with read_transaction(create_ledger_engine(self.url)) as conn:
                row = conn.execute(
                    sa.select(_tbl.ApiKey.id)
                    .join(_tbl.Principal, _tbl.Principal.id == _tbl.ApiKey.principal_id)
                    .where(
                        _tbl.ApiKey.key_id == key_id,
                        _tbl.ApiKey.revoked_at.is_(None),
                        sa.not_(_tbl.Principal.disabled),
                    )
                ).first()
        except (PrivrecError, sa.exc.SQLAlchemyError):
            return True  # no dummy: the ledger's own opening reports what is wrong, as it would
        return row is not None

    def _dummy(self, secret: str) -> None:
        """What checking ``secret`` against a stored hash costs (same scrypt parameters)."""
        hmac.compare_digest(_auth.hash_secret(secret, self._dummy_salt), self._dummy_hash)

    def _verify(self, key: str, digest: bytes, source: str | None = None) -> Ledger:
        key_id, secret = check_key(key)
        with self._lock:
            known = digest in self._good
        if known:  # verified before: the ledger's own cache answers it without a hash
            led = self._connect(key, digest)
        else:
            # the caller's own address first, so one source cannot spend the process-wide
            # budget alone: checked here, charged only when the attempt fails (many honest
            # first sign-ins from one address at once must not throttle each other); then a
            # process-wide token per attempt, given back on success: concurrent wrong secrets
            # cannot all slip past a check made before any of them failed
            src = source_ident(source)
            wait = self.source_failures.wait(src)
            if wait > 0:
                raise AuthThrottledError(wait)
            wait = self.failures.allow("*")
            if wait > 0:
                raise AuthThrottledError(wait)
            if not self.hashing.acquire(timeout=HASH_WAIT):
                self.failures.refund("*")
                raise AuthThrottledError(1.0)
            try:
                try:
                    if not self._active(key_id):
                        self._dummy(secret)  # the ledger refuses it below, after a hash as ever
                    led = self._connect(key, digest)
                except AuthenticationError:  # a failed attempt: the tokens stay taken
                    self.source_failures.allow(src)
                    raise
                except BaseException:  # the ledger could not answer: not the caller's failure
                    self.failures.refund("*")
                    raise
            finally:
                self.hashing.release()
            self.failures.refund("*")
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = _Entry(led.principal, now + self.ttl)
            self._good[digest] = None
            self._good.move_to_end(digest)
            while len(self._good) > self.max_entries:
                self._good.popitem(last=False)
        return led

    def _connect(self, key: str, digest: bytes) -> Ledger:
        try:
            return Ledger.connect(self.url, key)
        except AuthenticationError:  # revoked since, or never valid: not remembered as good
            with self._lock:
                self._good.pop(digest, None)
            raise


class RateLimiter:
    """Token buckets per identity: ``rate`` per second, at most ``burst`` at once (0 disables).

    The table stays small and every call is O(1): a bucket idle for ``burst / rate`` seconds is
    full again, which is what a missing bucket means, so it is forgotten (buckets are kept in
    least-recently-used order and the idle ones are popped from the front); past
    ``max_entries`` the least recently used bucket is dropped even if not yet full (an attacker
    would need ``max_entries`` other requests within ``burst / rate`` seconds to win back at
    most ``burst`` requests that way).
    """

    def __init__(self, rate: float, burst: int, *, max_entries: int = 100_000) -> None:
        self.rate = float(rate)
        self.burst = max(int(burst), 1)
        self.max_entries = max(int(max_entries), 1)
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def refill_seconds(self) -> float:
        """How long an idle bucket takes to be full again (and then be forgotten)."""
        return self.burst / self.rate if self.rate > 0 else 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, ident: str) -> float:
        """0.0 if a request by ``ident`` may go now (a token is taken), else the seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            self._forget_idle(now)
            tokens, last = self._buckets.pop(ident, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[ident] = (tokens, now)  # re-inserted: now the most recently used
            while len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)
            return wait

    def wait(self, ident: str) -> float:
        """The seconds a request by ``ident`` would wait now (0.0: it may go), taking nothing.

        For a budget charged only after the fact (failed attempts): checked before the work,
        charged with :meth:`allow` when the attempt fails.
        """
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            found = self._buckets.get(ident)
        if found is None:
            return 0.0
        tokens = min(float(self.burst), found[0] + (now - found[1]) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def refund(self, ident: str) -> None:
        """Give back the token :meth:`allow` took (the attempt turned out not to count)."""
        if self.rate <= 0:
            return
        with self._lock:
            found = self._buckets.get(ident)
            if found is not None:
                self._buckets[ident] = (min(float(self.burst), found[0] + 1.0), found[1])

    def _forget_idle(self, now: float) -> None:
        horizon = now - self.refill_seconds
        while self._buckets:
            ident, (_, last) = next(iter(self._buckets.items()))
            if last > horizon:
                return  # the front is the least recently used: nothing behind it is idle longer
            del self._buckets[ident]


def key_ident(key: str) -> str:
    """The rate-limit identity of a presented key: its id and a hash of its secret (a wrong
    secret is another bucket, never the real key's). :class:`AuthenticationError` for a
    malformed key, which gets no bucket at all."""
    key_id, secret = check_key(key)
    return "k:" + key_id + ":" + hashlib.sha256(secret.encode()).hexdigest()[:16]


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
