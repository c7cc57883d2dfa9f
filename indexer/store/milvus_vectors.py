"""Milvus as the vector index of an index folder: the chunks' vectors in a Milvus collection, keyed
by their records' stable ids and searched on the server; the records, postings, sentence tables and
the commit point stay in the folder (indexer.store.folder), exactly as with FAISS segments.

    python -m indexer build PATHS --index DIR --vectors milvus://HOST[:PORT]/[DB/]NAME

Locations (given to `build`; the folder keeps the location without credentials):
    milvus://HOST[:PORT]/[DB/]NAME[?token=…]          a Milvus server (default port 19530)
    milvus+tls://HOST[:PORT]/[DB/]NAME                the same over TLS
    milvus-lite:///path/to/file.db[?collection=NAME]  an in-process milvus-lite file (one process at a time)
Credentials: `?token=…` or `user:password@` for that command; INDEXER_MILVUS_TOKEN, or
INDEXER_MILVUS_USER + INDEXER_MILVUS_PASSWORD, for every command. They are never printed or stored.

The collection NAME_xxxxxxxx (a random suffix per build: two folders given the same NAME never share
one; the folder's commit drops the replaced index's collection one commit later, as it does its
segments) holds one row per chunk: its record id (the primary key), its document (for searches
within chosen documents) and its vector. Its index is FLAT (exact) below segment.APPROX_ABOVE
vectors, IVF_FLAT from there, with the folder's nlist and nprobe.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from ..errors import StoreError
from .records import Records
from .segment import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, IVF_NPROBE, choose_index_type, ivf_nlist

DEFAULT_PORT = 19530
LITE_COLLECTION = "indexer"
CONNECT_TIMEOUT = float(os.environ.get("INDEXER_MILVUS_CONNECT_TIMEOUT", "5"))
CALL_TIMEOUT = float(os.environ.get("INDEXER_MILVUS_TIMEOUT", "30"))
LONG_TIMEOUT = float(os.environ.get("INDEXER_MILVUS_LOAD_TIMEOUT", "3600"))  # loading / indexing a big collection
MAX_DOC_ID = 4096  # bytes of a document id in the collection (Milvus's VARCHAR needs a bound)
INSERT_BATCH = 2000  # rows per insert call (≈ 3 MB of 384-d vectors)
SEARCH_BATCH = 256  # query vectors per search call
MAX_TOPK = 16384  # Milvus's limit on limit
MAX_QUERY_ROWS = 16384  # Milvus's limit on one query's window: longer reads are paged
ID_BATCH = 4096  # ids per delete or fetch call (the filter expression stays short)
DOC_FILTER = 1000  # documents per search filter: more are searched in groups, the lists joined
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,180}$")


# ---------------------------------------------------------------- locations


@dataclass(frozen=True)
class Target:
    """A parsed location: where to connect, which collection, and the redacted name to show."""

    uri: str
    collection: str
    db: str = ""
    token: str = field(default="", repr=False)
    user: str = ""
    password: str = field(default="", repr=False)
    lite: bool = False
    display: str = ""

    @property
    def key(self) -> tuple:
        """What a connection is shared by."""
        return self.uri, self.db, self.token, self.user, self.password

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.token, self.password) if s]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def parse_location(location: str) -> Target:
    """milvus://, milvus+tls:// or milvus-lite:// → Target; a StoreError names what is wrong (redacted)."""
    location = str(location)
    parts = urlsplit(location)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    token = query.get("token") or os.environ.get("INDEXER_MILVUS_TOKEN", "")
    secrets = [s for s in (token, query.get("password", ""), unquote(parts.password or "")) if s]
    shown = _strip_secrets(location, secrets)
    if parts.scheme == "milvus-lite":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise StoreError(f"{shown}: give the milvus-lite file, e.g. milvus-lite:///data/index.db")
        collection = query.get("collection") or LITE_COLLECTION
        _check_name(collection, shown)
        path = str(Path(path).expanduser().absolute())
        return Target(path, collection, lite=True, display=f"milvus-lite://{path}?collection={collection}")
    if parts.scheme not in ("milvus", "milvus+tls"):
        raise StoreError(f"{shown}: not a Milvus location (milvus://HOST:PORT/COLLECTION)")
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise StoreError(f"{shown}: bad port ({exc})") from None
    if not host:
        raise StoreError(f"{shown}: no host; use milvus://HOST:PORT/COLLECTION")
    path = [p for p in parts.path.split("/") if p]
    if len(path) not in (1, 2):
        raise StoreError(f"{shown}: give one collection name, e.g. milvus://{host}:{port}/documents "
                         "(or DB/COLLECTION)")
    db, collection = (path[0], path[1]) if len(path) == 2 else ("", path[0])
    _check_name(collection, shown)
    if db:
        _check_name(db, shown)
    user = unquote(parts.username or "") or query.get("user") or os.environ.get("INDEXER_MILVUS_USER", "")
    password = unquote(parts.password or "") or query.get("password") or os.environ.get("INDEXER_MILVUS_PASSWORD", "")
    scheme = "https" if parts.scheme == "milvus+tls" else "http"
    host_shown = f"[{host}]" if ":" in host else host
    display = f"{parts.scheme}://{host_shown}:{port}/{db + '/' if db else ''}{collection}"
    return Target(f"{scheme}://{host_shown}:{port}", collection, db, token, user, password, False, display)


def _strip_secrets(location: str, secrets: list[str]) -> str:
    """The location as it may be shown: no query string, no user info, no secret anywhere."""
    parts = urlsplit(location)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    shown = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else location.split("?", 1)[0]
    for secret in secrets:
        shown = shown.replace(secret, "***")
    return shown


def _check_name(name: str, shown: str) -> None:
    if not _NAME.match(name):
        raise StoreError(f"{shown}: {name!r} is not a usable Milvus name (letters, digits and _, "
                         "not starting with a digit, at most 180 characters)")


def _lit(value: str) -> str:
    """A string literal for a Milvus filter expression."""
    return json.dumps(value, ensure_ascii=False)


def _in(field: str, values) -> str:
    return f"{field} in [{', '.join(_lit(v) for v in values)}]"


# ---------------------------------------------------------------- connections

_CLIENTS: dict[tuple, object] = {}
_LOADED: dict[tuple, set[str]] = {}  # per connection: the collections known to be loaded (with an index)


def _connect(target: Target):
    """A MilvusClient for the target, shared within the process; a StoreError when unreachable."""
    key = target.key
    client = _CLIENTS.get(key)
    if client is not None:
        return client
    from pymilvus import MilvusClient

    _quiet_pymilvus()
    kwargs = {"uri": target.uri, "timeout": CONNECT_TIMEOUT}
    if target.db:
        kwargs["db_name"] = target.db
    if target.token:
        kwargs["token"] = target.token
    elif target.user:
        kwargs.update(user=target.user, password=target.password)
    try:
        client = MilvusClient(**kwargs)
    except Exception as exc:  # noqa: BLE001 - every client failure becomes one line
        if target.lite:
            raise StoreError(f"{target.display}: cannot open the milvus-lite file (is another process "
                             f"using it?): {_short(exc, target)}") from None
        raise StoreError(f"{target.display}: cannot reach the Milvus server within {CONNECT_TIMEOUT:.0f} s "
                         f"({_short(exc, target)}); is it running, and are the address and credentials right?") from None
    _CLIENTS[key] = client
    return client


def _quiet_pymilvus() -> None:
    """pymilvus logs retries and tracebacks to stderr on its own handlers; the user gets one line from us
    instead (INDEXER_DEBUG=1 keeps its logs)."""
    if os.environ.get("INDEXER_DEBUG"):
        return
    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.decorators", "pymilvus.client"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    try:  # milvus-lite's analyzer loads jieba's dictionary with log lines on stderr; jieba sets its level on import
        import jieba

        jieba.setLogLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - jieba is in requirements.txt
        pass


def _forget(target: Target) -> None:
    """Drop a cached client (after a connection failure, so the next call reconnects)."""
    _LOADED.pop(target.key, None)
    client = _CLIENTS.pop(target.key, None)
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001
            pass


def _short(exc: BaseException, target: Target) -> str:
    """One line from a pymilvus / gRPC exception, secrets removed."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # a raw gRPC error: its status and text, not its repr
        try:
            message = f"{code().name}: {details()}"
        except Exception:  # noqa: BLE001
            message = str(exc)
    else:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    message = " ".join(str(message).split())
    if "DEADLINE_EXCEEDED" in message or "Deadline Exceeded" in message:
        message = (f"no answer within {CALL_TIMEOUT:.0f} s (is the server starting up, overloaded, or still "
                   "loading the collection? INDEXER_MILVUS_TIMEOUT sets the wait)")
    if len(message) > 240:
        message = message[:240] + "…"
    return target.redact(message)


@contextmanager
def _calling(target: Target, what: str) -> Iterator[None]:
    """Turn any server failure into one StoreError line naming the location (without secrets)."""
    try:
        yield
    except StoreError:
        raise
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - pymilvus raises many kinds; the user needs one line
        _forget(target)
        raise StoreError(f"{target.display}: Milvus {what} failed: {_short(exc, target)}") from None


# ---------------------------------------------------------------- the vector index


class MilvusVectors:
    """A folder index's vectors in one Milvus collection, by record id: add, remove, search (within
    documents), fetch, count, ids; the folder's commits say which ids are live (a search returns ids
    and the folder keeps those its commit holds)."""

    def __init__(self, location: str, dim: int, index_type: str = "auto", collection: str | None = None) -> None:
        self.target = parse_location(location)
        self.base = self.target.collection
        if collection is not None:
            self.target = replace(self.target, collection=collection)
        self.dim, self.index_type = dim, index_type

    @property
    def name(self) -> str:
        return self.target.collection

    def _client(self):
        """The connection, the collection loaded for searches (once per connection and collection;
        a collection whose index a kill left half rebuilt gets its index first)."""
        client = _connect(self.target)
        loaded = _LOADED.setdefault(self.target.key, set())
        if self.name not in loaded:
            with _calling(self.target, "load"):
                if client.has_collection(self.name, timeout=CALL_TIMEOUT):
                    if not _index_of(client, self.name):
                        rows = int(client.get_collection_stats(self.name, timeout=CALL_TIMEOUT).get("row_count", 0))
                        _build_index(client, self.name, *_index_spec(self.kind_for(rows), rows))
                    _ensure_loaded(client, self.name)
                    loaded.add(self.name)
        return client

    def state(self) -> dict:
        """What the folder's manifest keeps: the location (no credentials) and the collection."""
        return {"milvus": self.target.display, "collection": self.name}

    def create(self) -> None:
        """A new, empty collection, NAME_ and a random suffix: no other index's collection (another
        folder given the same NAME) is ever touched."""
        from pymilvus import DataType

        self.target = replace(self.target, collection=f"{self.base}_{secrets.token_hex(4)}")
        client = self._client()
        with _calling(self.target, "create"):
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("doc", DataType.VARCHAR, max_length=MAX_DOC_ID)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            index = client.prepare_index_params()
            index_type, params = _index_spec(self.kind_for(0), 0)
            index.add_index("vector", index_type=index_type, metric_type="IP", params=params)
            client.create_collection(self.name, schema=schema, index_params=index, consistency_level="Strong",
                                     timeout=CALL_TIMEOUT)
            _ensure_loaded(client, self.name)

    def drop(self) -> None:
        """Drop this collection (nothing if it is not there)."""
        client = _connect(self.target)
        with _calling(self.target, "drop"):
            if client.has_collection(self.name, timeout=CALL_TIMEOUT):
                client.drop_collection(self.name, timeout=CALL_TIMEOUT)
        _LOADED.get(self.target.key, set()).discard(self.name)

    def add(self, ids: np.ndarray, docs: list[str], vectors: np.ndarray) -> None:
        """Put these rows (record id, document, vector) in the collection."""
        client = self._client()
        with _calling(self.target, "insert"):
            for start in range(0, len(ids), INSERT_BATCH):
                end = start + INSERT_BATCH
                rows = [{"id": i, "doc": d, "vector": v} for i, d, v in
                        zip(ids[start:end].tolist(), docs[start:end], vectors[start:end].tolist())]
                client.insert(self.name, rows, timeout=CALL_TIMEOUT)

    def remove(self, ids: list[int]) -> None:
        """Delete the rows of these record ids (ids not there are ignored)."""
        client = self._client()
        with _calling(self.target, "delete"):
            for start in range(0, len(ids), ID_BATCH):
                client.delete(self.name, ids=ids[start:start + ID_BATCH], timeout=CALL_TIMEOUT)

    def remove_from(self, first: int) -> None:
        """Delete every row from record id `first` on: what a write that never committed left."""
        with _calling(self.target, "delete"):
            self._client().delete(self.name, filter=f"id >= {int(first)}", timeout=CALL_TIMEOUT)

    def search(self, queries: np.ndarray, k: int, docs: list[str] | None = None,
               rows: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each query, the k best (scores, record ids) by inner product, best first, among the
        rows of `docs` (None: all); `rows`: how many the collection holds (its index kind). Many
        documents are asked DOC_FILTER at a time (a filter expression stays short), the lists joined."""
        k = min(k, MAX_TOPK)
        params = {"metric_type": "IP", "params": _search_params(self.kind_for(rows), k)}
        groups = [""] if docs is None else [_in("doc", docs[i:i + DOC_FILTER]) for i in range(0, len(docs), DOC_FILTER)]
        client, found = self._client(), [[] for _ in range(len(queries))]
        with _calling(self.target, "search"):
            for expr in groups:
                for start in range(0, len(queries), SEARCH_BATCH):
                    result = client.search(self.name, data=queries[start:start + SEARCH_BATCH].tolist(), limit=k,
                                           filter=expr, output_fields=["id"], search_params=params,
                                           anns_field="vector", consistency_level="Strong", timeout=CALL_TIMEOUT)
                    for q, hits in enumerate(result, start):
                        found[q] += [(h["distance"], h.get("id", h.get("pk"))) for h in hits]
        out = []
        for hits in found:
            scores, ids = np.array([s for s, _ in hits], np.float32), np.array([i for _, i in hits], np.int64)
            order = np.argsort(-scores, kind="stable")[:k]
            out.append((scores[order], ids[order]))
        return out

    def fetch(self, ids: list[int]) -> np.ndarray:
        """The vectors of these record ids, in the order given; a StoreError when any is missing."""
        out = np.zeros((len(ids), self.dim), np.float32)
        where: dict[int, list[int]] = {}
        for j, i in enumerate(ids):
            where.setdefault(int(i), []).append(j)
        keys, client, found = list(where), self._client(), 0
        with _calling(self.target, "read"):
            for start in range(0, len(keys), ID_BATCH):
                part = keys[start:start + ID_BATCH]
                for row in client.query(self.name, ids=part, output_fields=["id", "vector"], limit=len(part),
                                        consistency_level="Strong", timeout=CALL_TIMEOUT):
                    out[where[row["id"]]] = np.asarray(row["vector"], np.float32)
                    found += 1
        if found != len(keys):
            raise StoreError(f"{self.target.display}: the vectors of {len(keys) - found} chunks are missing in "
                             "the collection (run `python -m indexer check`)")
        return out

    def ids(self) -> np.ndarray:
        """Every record id in the collection, ascending, repeats kept (for `check`), read a page at a time."""
        client, out, last = self._client(), [], -1
        with _calling(self.target, "read"):
            while True:
                rows = client.query(self.name, filter=f"id > {last}", output_fields=["id"], limit=MAX_QUERY_ROWS,
                                    consistency_level="Strong", timeout=CALL_TIMEOUT)
                out.extend(r["id"] for r in rows)
                if len(rows) < MAX_QUERY_ROWS:
                    return np.sort(np.array(out, np.int64))
                last = max(r["id"] for r in rows)

    def dim_on_server(self) -> int | None:
        """The dimension of the collection's vectors (None: no such collection)."""
        client = self._client()
        with _calling(self.target, "lookup"):
            if not client.has_collection(self.name, timeout=CALL_TIMEOUT):
                return None
            for field in client.describe_collection(self.name, timeout=CALL_TIMEOUT).get("fields", []):
                if field.get("name") == "vector":
                    return int(field.get("params", {}).get("dim"))
        return None

    def fit_index(self, rows: int) -> None:
        """Rebuild the server's index when the row count calls for another kind (FLAT → IVF_FLAT:
        once in an index's life; searches wait while it is built, and a kill meanwhile is mended by
        the next process that opens the collection)."""
        index_type, params = _index_spec(self.kind_for(rows), rows)
        client = self._client()
        with _calling(self.target, "index"):
            if _index_of(client, self.name) == index_type:
                return
            client.release_collection(self.name, timeout=CALL_TIMEOUT)
            client.drop_index(self.name, "vector", timeout=CALL_TIMEOUT)
            _build_index(client, self.name, index_type, params)
            client.load_collection(self.name, timeout=LONG_TIMEOUT)

    def kind_for(self, rows: int) -> str:
        """The index kind for this many rows (segment.choose_index_type: one rule for both)."""
        return choose_index_type(self.index_type, rows)


def _index_spec(kind: str, n: int) -> tuple[str, dict]:
    if kind == "hnsw":
        return "HNSW", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    if kind == "ivf":
        return "IVF_FLAT", {"nlist": ivf_nlist(n)}
    return "FLAT", {}


def _search_params(kind: str, k: int) -> dict:
    if kind == "hnsw":
        return {"ef": max(HNSW_EF_SEARCH, k)}
    if kind == "ivf":
        return {"nprobe": IVF_NPROBE}
    return {}


def _index_of(client, name: str) -> str | None:
    """The index type of the collection's vectors (None: no index)."""
    try:
        return (client.describe_index(name, "vector", timeout=CALL_TIMEOUT) or {}).get("index_type")
    except Exception:  # noqa: BLE001 - Milvus answers "index not found" with an error
        return None


def _build_index(client, name: str, index_type: str, params: dict) -> None:
    index = client.prepare_index_params()
    index.add_index("vector", index_type=index_type, metric_type="IP", params=params)
    client.create_index(name, index, timeout=LONG_TIMEOUT)


def _ensure_loaded(client, name: str) -> None:
    state = client.get_load_state(name, timeout=CALL_TIMEOUT)
    if "Loaded" not in str(state.get("state") if isinstance(state, dict) else state):
        client.load_collection(name, timeout=LONG_TIMEOUT)


# ---------------------------------------------------------------- collections a rebuild replaced

RETIRED = "retired_vectors"  # the folder's meta: the vectors entries of replaced indexes, and the generation that replaced each


def note_replaced(db, meta: dict[str, str], old: dict, new: dict, generation: int) -> None:
    """In a build's commit (`db`, its open transaction; `meta`, the folder's meta as it stood): the
    replaced index's collection, if it had another one, is dropped one commit after this one
    (`retire_replaced`), when no reader of the replaced index can be searching it any more."""
    if old and old.get("collection") != new.get("collection"):
        retired = json.loads(meta.get(RETIRED, "[]")) + [{"vectors": old, "generation": generation}]
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [RETIRED, json.dumps(retired)])


def retire_replaced(records: Records, generation: int) -> None:
    """Drop exactly the collections of indexes that builds replaced before `generation` (a reader
    of the previous commit may still be searching one); a failure warns, and is tried again after
    the next commit."""
    retired = json.loads(records.meta().get(RETIRED, "[]"))
    kept = [r for r in retired if r["generation"] >= generation]
    for r in retired:
        if r["generation"] < generation:
            try:
                MilvusVectors(r["vectors"]["milvus"], 0, collection=r["vectors"]["collection"]).drop()
            except StoreError as exc:
                logging.getLogger(__name__).warning("%s (the replaced index's collection stays for now)", exc)
                kept.append(r)
    if kept != retired:
        with records.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [RETIRED, json.dumps(kept)])
