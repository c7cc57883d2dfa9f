"""The page's launcher: `python -m indexer page` (what `make run` starts).

It serves search_app.py as a Streamlit `st.App` (Streamlit's ASGI application, run by its own
uvicorn runner) with the guard in front of every request and the page's websocket
(indexer.guard: the Host allow-list, the Origin of writes and of the websocket) and the login
link's middleware, and passes the same host names to Streamlit's own `server.allowedHosts`, which
refuses a foreign Host on the websocket handshake as well. Before it starts: the write key is made
if there is none (shown once on the terminal), and a fresh one-time login link is shown on the
terminal at every start. The page script runs in this process and finds the sign-ins, the cookie's
name and the rates in `indexer.guard.PAGE`.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .guard import (ADDRESS_RATE, KEY_RATE, PAGE, Guard, Limits, LoginLink, Passes, allowed_hosts, bracketed,
                    cookie_name, first_start, original_response, show_on_terminal)

APP = Path(__file__).resolve().parent.parent / "search_app.py"


@dataclass(frozen=True)
class PageSettings:
    """What `page` was told: the index, the access file, where to listen, and the guard's settings."""

    index: str
    access: Path
    host: str = "127.0.0.1"
    port: int = 8501
    allowed_hosts: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    key_rate: float = KEY_RATE
    address_rate: float = ADDRESS_RATE


def link_host(bind: str) -> str:
    """The host a login link on this machine names: the bind address, or 127.0.0.1 for every interface."""
    bind = bind.strip().strip("[]")
    return "127.0.0.1" if bind in ("", "0.0.0.0", "::") else bracketed(bind)


def originals_route(index: str) -> Any:
    """`GET /original?t=PASS`: the original of the document a pass of the page names (guard.Passes;
    the page issues passes only for the hits it shows its reader), served as guard.original_response."""
    import anyio
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from .engine import Engine
    from .errors import Gone, NotFound

    engines: list[Engine] = []

    async def original(request: Any) -> Any:
        doc_id = PAGE.passes.document(request.query_params.get("t", "")) if PAGE.passes else None
        if doc_id is None:
            return JSONResponse({"error": "this link has expired or is not this page's: search again for a fresh one"},
                                status_code=403)
        engines[:] = engines or [Engine(index)]  # the index's snapshot, without the models
        try:
            return original_response(await anyio.to_thread.run_sync(engines[0].original, doc_id))
        except (NotFound, Gone) as exc:
            return JSONResponse({"error": str(exc)}, status_code=410 if isinstance(exc, Gone) else 404)

    return Route("/original", original, methods=["GET"])


def run(settings: PageSettings, warn: Callable[[str], None]) -> None:
    """Start the page and serve it until interrupted."""
    import streamlit as st
    from starlette.middleware import Middleware

    first_start(settings.access, warn)
    hosts = allowed_hosts(settings.host, settings.allowed_hosts)
    PAGE.cookie = cookie_name(settings.port)
    PAGE.limits = Limits(settings.key_rate, settings.address_rate, settings.trusted_proxies)
    PAGE.named = settings.allowed_hosts
    PAGE.passes = Passes()
    token = PAGE.sign_ins.new_token()
    url = f"http://{link_host(settings.host)}:{settings.port}"

    @contextlib.asynccontextmanager
    async def announce(_: Any) -> AsyncIterator[None]:
        if not show_on_terminal(f"\nThe search page: {url}\nTo sign this machine's browser in (once; a new link at "
                                f"each start), open:\n\n    {url}/?login={token}\n"):
            warn("no terminal to show the page's login link on: sign in with the write key as the page's password")
        yield

    app = st.App(APP, lifespan=announce, routes=[originals_route(settings.index)],
                 middleware=[Middleware(Guard, hosts=hosts, named=settings.allowed_hosts),
                             Middleware(LoginLink, sign_ins=PAGE.sign_ins, cookie=PAGE.cookie)])
    sys.argv = [str(APP), "--index", settings.index, "--access", str(settings.access)]  # what the script reads
    app.run(config={"server.address": settings.host, "server.port": settings.port, "server.headless": True,
                    "server.allowedHosts": list(hosts), "server.fileWatcherType": "none",
                    "browser.gatherUsageStats": False})
