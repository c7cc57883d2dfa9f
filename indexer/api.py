"""The HTTP API: `python -m indexer serve --index DIR --host 127.0.0.1 --port 8000`.

A FastAPI shell over the same `Engine` as the command line; the OpenAPI page is at /docs.

    POST   /search           one question    → the JSON of `indexer search --json`
    POST   /batch            many questions  → a list of those, in order
    GET    /documents        the indexed documents (as `indexer list --json`)
    GET    /documents/{id}   one document's record and text
    GET    /documents/{id}/file  its original file (PDFs inline, other types as downloads; 410 if gone)
    POST   /documents        upload files (multipart, field `files`, optional `tags`)  [write]
    DELETE /documents/{id}   remove a document (ids may contain "/")                    [write]
    GET    /info             what the index holds (as `indexer info --json`)
    GET    /health           {"status": "ok"} once the model is loaded

The model is loaded once, by one Engine: its questions keep answering from the committed
generation while a write is under way (one write at a time) and pick up the new one on their next
question, never waiting for the write (indexer.searching). Each request runs in a worker thread (the encoders release the GIL, so concurrent questions overlap);
micro-batching concurrent questions into one Engine.query call was measured slower under load
and left out (docs/decisions/api-concurrency.md).

In front of every request (indexer.guard): the Host allow-list (400), the Origin and
Sec-Fetch-Site of writes (403), the rate per key or client address (429). Then access
(indexer.access): writes need the write key, on every address; reads need a key once the read key
or a reader is set; a reader bound to filters is answered by the engine's scoped view of it, so
its searches, document list, texts and counts hold only its documents. Every refused request gets
a 4xx and `{"error": "one sentence"}`; nothing from a refused request reaches the index.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Awaitable, Callable, Literal, Optional

import anyio
from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from .access import Access, AccessError, Grant
from .engine import DEFAULT_MODE, GROUPS, MODES, UPLOAD_SUFFIXES, Engine, Result, SearchOptions
from .errors import Gone, IndexerError, NotFound, QueryError, ReadError, StoreError
from .guard import ADDRESS_RATE, KEY_RATE, Guard, Limits, RateLimited, allowed_hosts, original_response
from .watching import watch_in_background

log = logging.getLogger("indexer.api")


@dataclass(frozen=True)
class ServeSettings:
    """What `serve` was told: where, who may do what, and the limits of a request."""

    index: str
    access: Path
    model: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_k: int = 100
    max_batch: int = 256  # questions in one /batch request
    max_body_bytes: int = 1 << 20  # JSON requests
    max_upload_bytes: int = 50 << 20  # one POST /documents request, all files together
    allowed_hosts: tuple[str, ...] = ()  # names colleagues use, beyond this machine's own (indexer.guard)
    trusted_proxies: tuple[str, ...] = ()  # proxies whose X-Forwarded-For is believed
    key_rate: float = KEY_RATE  # requests per second per key
    address_rate: float = ADDRESS_RATE  # requests per second per client address without a key
    watch: bool = False  # keep the index's sources in sync while the server runs (indexer.watching)
    poll: bool = False  # watch by polling every folder (network shares are polled anyway)


class Options(BaseModel):
    """Search options, as the CLI's `search` takes them."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(5, ge=1, description="how many passages (at most the server's --max-k, 100 by default)")
    mode: Literal[MODES] = Field(DEFAULT_MODE, description="dense | bm25 | hybrid")  # type: ignore[valid-type]
    where: Optional[list[str]] = Field(None, description="filters that must all hold, e.g. type=pdf, year>=2020, tag=党建")
    doc: Optional[list[str]] = Field(None, description="search only these document ids")
    min_score: Optional[float] = Field(None, description="drop hits scoring below this")
    use: bool = Field(True, description="English questions: the USE cross-lingual route")
    translate: bool = Field(True, description="English questions: BM25 over their Chinese translations")
    group: Literal[GROUPS] = Field("passages", description="passages | documents: whole documents ranked by "  # type: ignore[valid-type]
                                                           "their best passage, each with its best passages")


class SearchRequest(Options):
    query: str = Field(..., description="the question, in any language")


class BatchRequest(Options):
    queries: list[str] = Field(..., min_length=1, description="the questions (at most the server's --max-batch)")


class ErrorBody(BaseModel):
    """Every refusal: a 4xx (or 5xx) status and one sentence."""

    error: str


ERRORS = {status: {"model": ErrorBody, "description": what} for status, what in (
    (400, "a bad request: malformed JSON, a missing question, k out of range, a bad filter, a Host not this server's…"),
    (401, "no key, where one is needed"), (403, "a wrong key, or a write from another site"),
    (413, "a body or upload over the server's limit"), (429, "too many requests from one key or address"))}


class UploadRefused(IndexerError):
    """An upload refused before it is read: a name with folders in it, or a type no reader takes."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def plain_name(name: str | None) -> str:
    """An uploaded file's name, refused (400) when it is empty or has folder parts (`../../x`)."""
    raw = str(name or "")
    if not raw.strip() or raw in (".", "..") or "\x00" in raw or raw != PurePosixPath(raw.replace("\\", "/")).name:
        raise UploadRefused(f"the upload name {raw!r} is not a plain file name: it may not contain folders")
    if PurePosixPath(raw).suffix.lower() not in UPLOAD_SUFFIXES:
        raise UploadRefused(f"{raw}: not a supported file type (use {', '.join(sorted(UPLOAD_SUFFIXES))})", 415)
    return raw


class Service:
    """The engine behind the API (one: its questions never wait for its writes), the access rules
    and the rates."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.access = Access(settings.access)
        self.limits = Limits(settings.key_rate, settings.address_rate, settings.trusted_proxies)
        self.engine = Engine(settings.index, model=settings.model)

    def admit(self, right: str, key: str | None, request: Request) -> Grant:
        """The grant of a request that needs `right`, counted against its rate first (a key this
        process has not checked yet counts against its client's address, before scrypt runs)."""
        client = request.client.host if request.client else None
        self.limits.admit(self.access.known(key), client, request.headers.get("x-forwarded-for"))
        return self.access.check(right, key)

    def view(self, grant: Grant) -> Engine:
        """The engine as this grant may see it (a reader bound to filters: its scoped view)."""
        return self.engine.scoped(grant.where)

    def warm_up(self) -> None:
        """Load the models, the index and the translator before the first request."""
        try:
            self.engine.warm_up()
        except IndexerError as exc:  # a damaged index: served anyway, each request says why
            log.warning("warm-up: %s", exc)

    def query(self, grant: Grant, queries: list[str], options: Options) -> list[Result]:
        """Check the request's limits, then answer its questions in one call, within its grant's scope."""
        if options.k > self.settings.max_k:
            raise QueryError(f"k must be at most {self.settings.max_k} (got {options.k})")
        if len(queries) > self.settings.max_batch:
            raise QueryError(f"a batch may hold at most {self.settings.max_batch} questions (got {len(queries)})")
        return self.view(grant).answer(queries, SearchOptions(
            options.k, options.mode, options.group, tuple(options.where or ()), options.doc, options.min_score,
            options.use, options.translate))

    def document(self, grant: Grant, doc_id: str) -> dict:
        """One document's record and whole text (NotFound outside the grant's scope, as for no document)."""
        view = self.view(grant)
        text = view.document_text(doc_id)
        record = view.visible().get(doc_id)  # None only if a commit removed it meanwhile
        return {**(dict(record.__dict__) if record else {"doc_id": doc_id}), "text": text}

    def add(self, uploads: list[tuple[str, bytes]], tags: list[str]) -> dict:
        reports = self.engine.add_uploads(uploads, tags)
        return {"generation": self.engine.generation, "documents": [asdict(r) for r in reports]}

    def remove(self, doc_id: str) -> dict:
        reports = self.engine.remove([doc_id])
        return {"generation": self.engine.generation, "documents": [asdict(r) for r in reports]}


# ---------------------------------------------------------------------------- errors as one sentence


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_sentence(errors: list[dict]) -> str:
    """FastAPI's list of validation errors → one sentence about the first."""
    err = errors[0] if errors else {}
    loc = list(err.get("loc", ()))
    if loc and loc[0] in ("body", "path", "query", "header", "cookie"):
        loc = loc[1:]
    field = ".".join(str(p) for p in loc)
    kind, msg = err.get("type", ""), str(err.get("msg", "invalid value"))
    if kind == "json_invalid":
        return f"the body is not valid JSON ({(err.get('ctx') or {}).get('error', msg)})"
    if kind == "missing":
        return f'the request needs "{field}"' if field else "the request needs a JSON body"
    if kind == "extra_forbidden":
        return f'unknown field "{field}"'
    if not field and kind in ("model_attributes_type", "dict_type", "list_type"):
        return f"the body must be a JSON {'list' if kind == 'list_type' else 'object'}"
    return f'"{field or "body"}": {msg[:1].lower()}{msg[1:]}'


STATUS = ((AccessError, None), (UploadRefused, None), (RateLimited, None), (NotFound, 404), (Gone, 410), (QueryError, 400), (ReadError, 400),
          (StoreError, 409), (IndexerError, 400))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_sentence(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "the request was refused"
        if exc.status_code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
            detail = f"no endpoint {request.method} {request.url.path} (see /docs)"
        return _error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(IndexerError)
    async def indexer_error(_: Request, exc: IndexerError) -> JSONResponse:
        status = next(code or exc.status for cls, code in STATUS if isinstance(exc, cls))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else \
            {"Retry-After": str(math.ceil(exc.retry_after))} if isinstance(exc, RateLimited) else None
        return _error(status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, f"the server failed unexpectedly ({type(exc).__name__}); its log says more")


class BodyLimit:
    """ASGI middleware: a request body over its limit gets 413 before it is read in full
    (by Content-Length when declared, else as it streams in)."""

    def __init__(self, app: Any, limit_for: Callable[[dict], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, what = self.limit_for(scope)
        message = f"the {what} is larger than this server's limit of {limit:,} bytes"
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _error(413, message)(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > limit:
                raise HTTPException(413, message)
            return msg

        await self.app(scope, limited, send)


# ---------------------------------------------------------------------------- the app


DOCS_ASSETS = "/docs-assets"


def _install_docs(app: FastAPI) -> None:
    """The OpenAPI page at /docs with Swagger UI served from this server (the swagger-ui-py wheel
    ships it), not from a CDN: an intranet without internet access still gets the page. The schema
    drops FastAPI's 422 validation answers: this API answers 400 with ErrorBody instead."""
    import swagger_ui

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    app.mount(DOCS_ASSETS, StaticFiles(directory=Path(swagger_ui.__file__).parent / "static"), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} · API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


def create_app(settings: ServeSettings, service: Service | None = None) -> FastAPI:
    """The FastAPI app over one index; the Service (model and engines) is made at start-up."""
    state: dict[str, Service] = {}

    async def lifespan(_: FastAPI):
        state["service"] = service or await anyio.to_thread.run_sync(Service, settings)
        await anyio.to_thread.run_sync(state["service"].warm_up)
        shown = logging.getLogger("uvicorn.error").info  # beside the server's own lines (ours are not configured)
        watcher = watch_in_background(state["service"].engine, shown, poll=settings.poll) if settings.watch else None
        yield
        if watcher:
            watcher.stop.set()

    app = FastAPI(title="Semantic search", version="1", lifespan=lifespan, docs_url=None, redoc_url=None, responses=ERRORS,
                  description="Search Chinese (and any-language) documents by meaning. Writes need the "
                              "write key (`Authorization: Bearer KEY` or `X-API-Key`); reads need a key once "
                              "readers are set, and a reader bound to filters sees only its documents.")
    _install_error_handlers(app)
    _install_docs(app)
    bearer = HTTPBearer(auto_error=False, description="a key: the write key, the read key or a reader's")
    api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="a key, as with Authorization")

    def svc() -> Service:
        return state["service"]

    def need(right: str) -> Callable:
        def check(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer),
                  header: Optional[str] = Depends(api_key)) -> Grant:
            return svc().admit(right, credentials.credentials if credentials else header, request)
        return check

    read, write = Depends(need("read")), Depends(need("write"))

    @app.post("/search", summary="Answer one question")
    async def search(body: SearchRequest, grant: Grant = read) -> dict:
        return (await anyio.to_thread.run_sync(svc().query, grant, [body.query], body))[0].to_json()

    @app.post("/batch", summary="Answer many questions, encoded together")
    async def batch(body: BatchRequest, grant: Grant = read) -> list[dict]:
        results = await anyio.to_thread.run_sync(svc().query, grant, body.queries, body)
        return [r.to_json() for r in results]

    @app.get("/documents", summary="The indexed documents")
    async def documents(grant: Grant = read) -> list[dict]:
        return [dict(d.__dict__) for d in await anyio.to_thread.run_sync(svc().view(grant).documents)]

    @app.get("/documents/{doc_id:path}/file", summary="One document's original file", response_class=FileResponse,
             responses={410: {"model": ErrorBody, "description": "its file was moved or deleted since it was read"}})
    async def original(doc_id: str, grant: Grant = read) -> FileResponse:
        """The file as it was uploaded, or a source's file from its folder. PDFs come inline (open
        them at a page with `#page=N`); every other type as a download, under a CSP sandbox."""
        return original_response(await anyio.to_thread.run_sync(svc().view(grant).original, doc_id))

    @app.get("/documents/{doc_id:path}", summary="One document's record and text")
    async def document(doc_id: str, grant: Grant = read) -> dict:
        return await anyio.to_thread.run_sync(svc().document, grant, doc_id)

    @app.post("/documents", dependencies=[write], summary="Add or replace documents (upload)")
    async def upload(files: list[UploadFile] = File(..., description="files, as the CLI's `add` reads them"),
                     tags: Optional[list[str]] = Form(None, description="tags for every file (repeat, or comma-separated)")) -> dict:
        names = [plain_name(f.filename) for f in files]  # refused before anything is read
        uploads = [(name, await f.read()) for name, f in zip(names, files)]
        tag_list = [t.strip() for value in tags or () for t in value.split(",") if t.strip()]
        return await anyio.to_thread.run_sync(svc().add, uploads, tag_list)

    @app.delete("/documents/{doc_id:path}", dependencies=[write], summary="Remove a document")
    async def remove(doc_id: str) -> dict:
        return await anyio.to_thread.run_sync(svc().remove, doc_id)

    @app.get("/info", summary="What the index holds and how it was built")
    async def info(recall: bool = False, grant: Grant = read) -> dict:
        """`recall=true` also measures the vector index's recall@10 against exact search (seconds on
        a big index; left out by default, as clients poll /info for the generation)."""
        return await anyio.to_thread.run_sync(svc().view(grant).info, recall)

    @app.get("/health", summary="Up, with the model loaded")
    async def health() -> dict:
        return {"status": "ok"}

    def limit_for(scope: dict) -> tuple[int, str]:
        if scope.get("method") == "POST" and scope.get("path") == "/documents":
            return settings.max_upload_bytes, "upload"
        return settings.max_body_bytes, "request body"

    app.add_middleware(BodyLimit, limit_for=limit_for)
    app.add_middleware(Guard, hosts=allowed_hosts(settings.host, settings.allowed_hosts), named=settings.allowed_hosts)
    return app


def serve(settings: ServeSettings) -> None:
    """Run the API with uvicorn until interrupted (keys travel in headers, which are not logged)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=5)
