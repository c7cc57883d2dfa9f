"""What a server lets in before any key is looked at, for the HTTP API (indexer.api) and the page
(indexer.pageserver, search_app.py) alike:

- **Hosts.** A request must name one of the server's own hosts: the loopback names, this
  machine's host names and the addresses it listens on, and the names given with
  `--allowed-host` (`*.example.com` works; `*` turns the check off). A page that rebinds its own
  name to 127.0.0.1 (DNS rebinding) names its own host and is refused. Starlette's
  TrustedHostMiddleware decides; `Guard` words the refusal as the API's errors are worded.
- **Origins.** A write (any method but GET, HEAD and OPTIONS) and a websocket (the page's
  connection) must come from the server's own origin, the host and port the request was sent
  to, or from a name given with `--allowed-host`; a `Sec-Fetch-Site: cross-site` write is
  refused. A form on another site posts with no preflight; the browser names that site.
  A request without an Origin (a program, not a browser) is left to its key.
- **Rates.** `Limits`: requests per second per key, or per client address for requests
  without a key this process knows (wrong keys are counted there before scrypt checks them);
  429 beyond. The client's address is the peer's, or, when the peer is a proxy named with
  `--trusted-proxy`, the last address of `X-Forwarded-For` that is not one.
- **Originals.** `original_response`: a document's file is served so that it cannot run in the
  server's origin: every type but PDF as a download (`Content-Disposition: attachment`), under
  `X-Content-Type-Options: nosniff` and a CSP `sandbox` (an opaque origin, no script, no
  requests) should a browser render it anyway; a PDF inline with its type forced, for the
  browser's viewer and `#page=N` (Chromium does not run its PDF viewer in a sandboxed document).
  The page links a hit's original through `Passes`: a short-lived token, signed by this
  process, naming one document the page showed its reader.
- **The page's login link.** `SignIns`: a one-time token per start, printed only on the
  terminal, that `LoginLink` exchanges for an HttpOnly, SameSite=Strict cookie naming a sign-in
  held in this process's memory (a restart signs everyone out and prints a new link).

Keys and login links appear only on the controlling terminal (`show_on_terminal`): never in
stdout or stderr, which may be a log file, nor in an access log or an error message.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import FileResponse, JSONResponse, RedirectResponse

from .access import OPERATOR, Access, Grant, ensure_write_key
from .errors import IndexerError
from .results import Original

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "localhost.localdomain", "ip6-localhost")
WILDCARD_BINDS = ("", "0.0.0.0", "::")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KEY_RATE = 30.0  # requests per second per key (bursts of twice that)
ADDRESS_RATE = 10.0  # requests per second per client address, for requests without a known key
SIGN_IN_DAYS = 30  # how long the page's sign-in cookie lasts (a restart ends it sooner)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


# ---------------------------------------------------------------------------- hosts and origins


def machine_addresses() -> list[str]:
    """Every address of this machine's interfaces (IPv6 without a zone)."""
    import psutil

    return [a.address.split("%", 1)[0] for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family in (socket.AF_INET, socket.AF_INET6)]


def allowed_hosts(bind: str, named: Iterable[str] = ()) -> tuple[str, ...]:
    """The host names a server bound to `bind` answers to: the loopback names, this machine's
    names, the addresses it listens on (all of them for 0.0.0.0 or ::) and the `named` ones."""
    bind = bind.strip().strip("[]").lower()
    listening = machine_addresses() if bind in WILDCARD_BINDS else [bind]
    names = [*LOOPBACK_NAMES, socket.gethostname(), socket.getfqdn(), *listening, *named]
    return tuple(dict.fromkeys(n.strip().strip("[]").lower().rstrip(".") for n in names if n.strip()))


def bracketed(host: str) -> str:
    """An IPv6 literal as a Host header writes it ([::1]); any other name as it is."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def host_matches(hostname: str, patterns: Iterable[str]) -> bool:
    """Whether a host name (IPv6 without brackets) is one of the patterns (`*.example.com`, `*`)."""
    hostname = hostname.lower().rstrip(".")
    return any(p == "*" or p == hostname or (p.startswith("*.") and hostname.endswith(p[1:])) for p in patterns)


def host_of(header: str | None) -> str | None:
    """The host name of a Host header (None when it is not one)."""
    try:
        parsed = urlsplit(f"//{header}")
        parsed.port  # noqa: B018 - a port that is no number makes it no Host header
        return parsed.hostname
    except ValueError:
        return None


def origin_refusal(headers: Headers, named: Sequence[str]) -> str | None:
    """Why a write or websocket with these headers is refused (None: it is not): another site."""
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "a write from another site is refused (Sec-Fetch-Site: cross-site)"
    origin = headers.get("origin")
    if origin is None:
        return None
    try:
        parsed = urlsplit(origin)
        ours = parsed.netloc.lower() == (headers.get("host") or "").lower() or \
            host_matches(parsed.hostname or "", [n.lower() for n in named])
    except ValueError:
        ours = False
    return None if ours and parsed.scheme in ("http", "https") else \
        f"a write from another origin ({origin[:80]}) is refused: only this server's own pages may write"


class Guard:
    """ASGI middleware in front of the API and the page: an unknown Host gets 400, a write or
    websocket from another origin 403 (a JSON error; a websocket is closed before it opens)."""

    def __init__(self, app: Any, hosts: Sequence[str], named: Sequence[str] = ()) -> None:
        self.app, self.named = app, tuple(named)
        self.trusted = TrustedHostMiddleware(self._passed, allowed_hosts=[bracketed(h) for h in hosts],
                                             www_redirect=False)

    @staticmethod
    async def _passed(scope: Scope, receive: Receive, send: Send) -> None:
        scope["indexer.host_ok"] = True

    @staticmethod
    async def _dropped(message: dict) -> None:
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        await self.trusted(scope, receive, self._dropped)
        headers = Headers(scope=scope)
        problem, status = None, 403
        if not scope.pop("indexer.host_ok", False):
            problem, status = (f"this server does not answer to the host {str(headers.get('host'))[:80]!r}; "
                               "its operator can add a name colleagues use with --allowed-host"), 400
        elif scope["type"] == "websocket" or scope["method"] not in SAFE_METHODS:
            problem = origin_refusal(headers, self.named)
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before it is accepted: answered 403
        else:
            await JSONResponse({"error": problem}, status_code=status)(scope, receive, send)


# ---------------------------------------------------------------------------- rates


class RateLimited(IndexerError):
    """Too many requests from one key or address; `status` 429, `retry_after` in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many requests: try again in {math.ceil(retry_after)} s")
        self.status, self.retry_after = 429, retry_after


class RateLimiter:
    """Token buckets, one per identity: `rate` requests a second (0: no limit), in bursts of up to
    twice that (and at least one request)."""

    def __init__(self, rate: float, keep: int = 10_000) -> None:
        self.rate, self.burst, self.keep = rate, max(1.0, 2 * rate), keep
        self._buckets: dict[str, tuple[float, float]] = {}  # identity → (tokens, when)
        self._lock = threading.Lock()

    def wait(self, identity: str) -> float:
        """Take a token for `identity`: 0.0 when there was one, else the seconds until there is."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(identity, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if len(self._buckets) >= self.keep and identity not in self._buckets:
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] + (now - v[1]) * self.rate < self.burst}
            if tokens < 1:
                self._buckets[identity] = (tokens, now)
                return (1 - tokens) / self.rate
            self._buckets[identity] = (tokens - 1, now)
            return 0.0


@dataclass
class Limits:
    """A server's request rates: per key, and per client address for requests without a key it
    knows; `trusted_proxies` (addresses or networks) are believed about X-Forwarded-For."""

    key_rate: float = KEY_RATE
    address_rate: float = ADDRESS_RATE
    trusted_proxies: Sequence[str] = ()
    _keys: RateLimiter = field(init=False, repr=False)
    _addresses: RateLimiter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._keys, self._addresses = RateLimiter(self.key_rate), RateLimiter(self.address_rate)
        try:
            self._proxies = [ipaddress.ip_network(p.strip(), strict=False) for p in self.trusted_proxies]
        except ValueError as exc:
            raise IndexerError(f"--trusted-proxy: {exc}") from exc

    def _proxy(self, address: str) -> bool:
        try:
            return any(ipaddress.ip_address(address.strip().strip("[]")) in net for net in self._proxies)
        except ValueError:
            return False

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer's, unless the peer is a trusted proxy: then the last
        address of X-Forwarded-For that is not itself one."""
        if not peer or not forwarded_for or not self._proxy(peer):
            return peer or "unknown"
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        return next((h for h in reversed(hops) if not self._proxy(h)), peer)

    def admit(self, grant: Grant | None, peer: str | None, forwarded_for: str | None) -> None:
        """Count a request against its key (a grant this process knows) or else its client's
        address; RateLimited when that is over its rate."""
        wait = self._keys.wait(grant.name) if grant is not None and grant.name else \
            self._addresses.wait(self.client(peer, forwarded_for))
        if wait:
            raise RateLimited(wait)


# ---------------------------------------------------------------------------- the terminal and the login link


def show_on_terminal(text: str) -> bool:
    """Write to this process's controlling terminal, not to stdout or stderr (either may be a log
    file); False when it has none (a service, a test)."""
    try:
        with open("/dev/tty", "w", encoding="utf-8") as tty:
            tty.write(text.rstrip("\n") + "\n")
        return True
    except OSError:
        return False


def first_start(access: Path, warn: Callable[[str], None]) -> None:
    """At a server's start: without a write key, make one and show it once on the terminal; with
    no terminal to show it on, make none (no one would know it) and `warn` how to set one."""
    if Access(access).configured("write"):
        return
    try:
        tty = open("/dev/tty", "w", encoding="utf-8")
    except OSError:
        warn(f"no write key is set in {access} and there is no terminal to show a new one on: writes are "
             "refused until `python -m indexer access set-write-key` sets one")
        return
    with tty:
        key = ensure_write_key(access)
        if key:
            tty.write(f"\nA write key was made (stored hashed in {access}; shown this once):\n\n    {key}\n\n"
                      "Send it as `Authorization: Bearer KEY` to write through the API, or give it as the page's "
                      "password; `python -m indexer access set-write-key` replaces it.\n\n")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


class SignIns:
    """The page's one-time login tokens and the sign-ins they made, by their SHA-256 (random
    256-bit secrets need no slow hash), in this process's memory."""

    def __init__(self) -> None:
        self._tokens: set[bytes] = set()
        self._sessions: dict[bytes, Grant] = {}
        self._lock = threading.Lock()

    def new_token(self) -> str:
        """A one-time login token (for the link printed at a start)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens.add(_digest(token))
        return token

    def redeem(self, token: str) -> str | None:
        """The secret of a new sign-in for an unused token (which is then used up), else None."""
        with self._lock:
            if _digest(token) not in self._tokens:
                return None
            self._tokens.discard(_digest(token))
            session = secrets.token_urlsafe(32)
            self._sessions[_digest(session)] = OPERATOR
            return session

    def grant(self, session: str | None) -> Grant | None:
        """The grant of a sign-in cookie's secret (None: no sign-in of this process)."""
        if not session:
            return None
        with self._lock:
            return self._sessions.get(_digest(session))


@dataclass
class PageGate:
    """What the page's launcher shares with the page script in the same process: the sign-ins,
    the cookie that carries one, the page's rates and the names its operator allowed. A page
    started without the launcher (`streamlit run`, AppTest) has no sign-ins and the defaults."""

    sign_ins: SignIns = field(default_factory=SignIns)
    passes: Passes | None = None  # set by the launcher, which serves /original (else: no links to originals)
    cookie: str = ""
    limits: Limits = field(default_factory=Limits)
    named: tuple[str, ...] = ()


PAGE = PageGate()


def cookie_name(port: int) -> str:
    """The sign-in cookie of the page on `port` (cookies ignore ports: two pages keep two)."""
    return f"indexer_signin_{port}"


class LoginLink:
    """ASGI middleware of the page: `GET /?login=TOKEN` with an unused token of `sign_ins` sets the
    sign-in cookie and sends the browser on to the page without the token in its address; a used
    or unknown token leads to the page with `?signin=expired`, which says so."""

    def __init__(self, app: Any, sign_ins: SignIns, cookie: str, secure: bool = False) -> None:
        self.app, self.sign_ins, self.cookie, self.secure = app, sign_ins, cookie, secure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1")) if scope["type"] == "http" else []
        token = next((v for k, v in query if k == "login"), None)
        if token is None or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        session = self.sign_ins.redeem(token)
        rest = [(k, v) for k, v in query if k != "login"] + ([] if session else [("signin", "expired")])
        where = scope.get("root_path", "") + scope["path"] + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(where, status_code=303, headers={"Cache-Control": "no-store"})
        if session:
            response.set_cookie(self.cookie, session, max_age=SIGN_IN_DAYS * 86400, path="/", httponly=True,
                                samesite="strict", secure=self.secure)
        await response(scope, receive, send)


def original_response(original: Original) -> FileResponse:
    """A document's original file as a response that cannot run in the server's origin (module
    docstring: Originals)."""
    pdf = original.media_type == "application/pdf"
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=0",
               "Referrer-Policy": "no-referrer",
               "Content-Security-Policy": "frame-ancestors 'self'" if pdf else "sandbox; default-src 'none'"}
    return FileResponse(original.path, headers=headers, filename=original.name,
                        media_type="application/pdf" if pdf else original.media_type,
                        content_disposition_type="inline" if pdf else "attachment")


class Passes:
    """Signed, short-lived passes to one document's original, which the page puts in the links of
    the hits it shows (the page's reader may see them; the route that serves them has no session
    of its own). The key is made at each start and never leaves this process."""

    def __init__(self, minutes: int = 60) -> None:
        self._key, self.seconds = secrets.token_bytes(32), minutes * 60

    def _sign(self, body: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, body, hashlib.sha256).digest()[:18]).decode()

    def issue(self, doc_id: str) -> str:
        """A pass to this document's original, good for `minutes`."""
        body = f"{int(time.time()) + self.seconds}:{doc_id}".encode()
        return base64.urlsafe_b64encode(body).decode().rstrip("=") + "." + self._sign(body)

    def document(self, token: str) -> str | None:
        """The document a pass names, if it is this process's and not expired (else None)."""
        try:
            head, signature = token.split(".", 1)
            body = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
            expires, doc_id = body.decode().split(":", 1)
        except ValueError:  # malformed base64 or text: no pass (binascii.Error is a ValueError)
            return None
        if not hmac.compare_digest(signature, self._sign(body)) or int(expires) < time.time():
            return None
        return doc_id
