"""A Milvus server (or a milvus-lite file) as the store: the same interface as the FAISS folder.

Locations:
    milvus://HOST[:PORT]/[DB/]COLLECTION[?token=…]    a Milvus server (default port 19530)
    milvus+tls://HOST[:PORT]/[DB/]COLLECTION           the same over TLS
    milvus-lite:///path/to/file.db[?collection=NAME]   an in-process milvus-lite file (one process at a time)
Credentials: `?token=…` (or `user:password@` before the host), else the environment variables
INDEXER_MILVUS_TOKEN, or INDEXER_MILVUS_USER + INDEXER_MILVUS_PASSWORD. They are never printed:
every message names the location without them.

What is kept where (COLLECTION is the name in the location):
    COLLECTION_meta            small rows (a dummy 2-d vector each): per generation the manifest
                               (without its documents), the keyword route, the documents replaced or
                               removed by it, then a `pointer` row — inserting that one row is the
                               switch — and a `clean` row once the superseded rows are deleted
    COLLECTION__gB_chunks      one row per chunk: doc_id, gen, seq, the Chunk as JSON, its keyword
                               terms as JSON, and its vector (FLAT / HNSW / IVF_FLAT, inner product);
                               with the server's BM25 also its text (jieba analyzer) and BM25 vector
    COLLECTION__gB_docs        per document: its DocRecord (JSON) and its full text in pieces
    COLLECTION__gB_xl          when the index keeps cross-lingual (USE) vectors: per document, its
                               passage and sentence vectors (float16) with the sentences' owners and
                               spans, the .npz the folder index writes as xl.npz, base64, in pieces
B is the generation that created the data collections (a build creates new ones; add/remove reuse them).

Cross-lingual vectors are written, superseded and deleted per document exactly like the document's
text (same doc_id and gen fields, same clean-up), and loaded whole into the client, where the USE
route scores them by brute force in numpy as it does for the folder index. Why not rows of 512-d
vectors: Milvus 2.3 allows one vector field per collection (a fourth collection would be needed),
the server would never search them, float16 is half their size and the folder index's precision
(so both stores score identically), and a document's payload decodes in one numpy call instead of
512 Python floats per vector.

Atomic writes by generations (a `gen` field on every row, one pointer row as the switch):
a save at live generation L writes all new rows with gen = L+1, then the manifest rows of L+1,
then inserts the pointer row of L+1 (one single-row insert: the switch). Readers search only rows
with gen <= live that are not superseded: until the clean-up after the switch has deleted the old
rows of replaced and removed documents, the live generation's `changed` list hides them. A failure
or kill before the switch leaves rows with gen > L that nobody reads; the next writer deletes them
(and drops any half-made collections) before it writes. Writers are serialised by lock(), a file
lock under the temp dir: one machine only (two machines writing one collection are not guarded).

Keyword search (`keyword_backend` says which route): a build chooses it with INDEXER_MILVUS_BM25 and
the index keeps it. `auto` (default): the server's own full-text search where the server has it
(Milvus >= 2.5, milvus-lite >= 3, judged from the version it reports), with a jieba analyzer set up
like the project's segmenter (search mode, the index's user terms, the same stopwords, no punctuation
tokens); else, and with `local`, the project's BM25 (indexer.keyword.KeywordIndex) over each chunk's
jieba terms, kept in its row and indexed in the client after load exactly as the folder index does.
`server` insists on the server's. Dense search runs on the server with Strong consistency.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
from filelock import FileLock, Timeout

from ..chunking import Chunk
from ..crosslingual import PassageVectors
from ..errors import StoreError
from ..keyword import LEGACY, STOPWORDS, Analyzer, KeywordIndex, Segmenter
from .base import FORMAT_VERSION, DocRecord, Manifest, check_upsert, empty_table, now
from .faiss_store import choose_index_type
from .segment import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M, IVF_NPROBE, ivf_nlist

DEFAULT_PORT = 19530
LITE_COLLECTION = "indexer"
CONNECT_TIMEOUT = float(os.environ.get("INDEXER_MILVUS_CONNECT_TIMEOUT", "5"))
CALL_TIMEOUT = float(os.environ.get("INDEXER_MILVUS_TIMEOUT", "30"))
LONG_TIMEOUT = float(os.environ.get("INDEXER_MILVUS_LOAD_TIMEOUT", "3600"))  # loading / indexing a big collection
LOCK_TIMEOUT = 600.0
MAX_VARCHAR = 65535  # bytes, Milvus's limit for one VARCHAR value
TEXT_PIECE = 16000  # characters per stored text piece (≤ 4 bytes each in UTF-8)
INSERT_BATCH = 1000  # rows per insert call (≈ 5 MB of 384-d rows with text)
SEARCH_BATCH = 256  # query vectors per search call
MAX_TOPK = 16384  # Milvus's limit on limit
MAX_QUERY_ROWS = 16384  # Milvus's limit on one query's window: longer reads are paged
VECTOR_CACHE = 20000  # saved chunk vectors kept after a fetch (dense_scores): ~30 MB at 384-d
DUMMY = [1.0, 0.0]  # the vector of meta and document rows (Milvus needs one per collection)
XL_PIECE = 60000  # base64 characters per stored piece of a document's cross-lingual vectors (ASCII: bytes)
XL_BATCH = 128  # cross-lingual rows per insert and per read (≤ 7.7 MB)
BM25_ENV = "INDEXER_MILVUS_BM25"  # auto | local | server: which BM25 a new index uses (README)
BM25_DEFAULT = "auto"  # the server's where it has full-text search, else the project's
BM25_K1, BM25_B = 1.2, 0.75  # as indexer.keyword.KeywordIndex
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,180}$")
_WORD = re.compile(r"[\w\u4e00-\u9fff]", re.UNICODE)  # as indexer.keyword: a term has a word character
# Punctuation and symbols jieba emits as tokens and the project's segmenter drops (no word character):
# the server's analyzer stops them too, so a chunk's length in terms is the same on both sides.
_SYMBOL_BLOCKS = ((0x21, 0x7E), (0xA1, 0xBF), (0xD7, 0xD7), (0xF7, 0xF7), (0x2010, 0x205E), (0x2100, 0x214F),
                  (0x2190, 0x22FF), (0x2500, 0x257F), (0x25A0, 0x26FF), (0x3000, 0x303F), (0xFE30, 0xFE6B),
                  (0xFF01, 0xFF65))
SYMBOLS = frozenset([chr(c) for lo, hi in _SYMBOL_BLOCKS for c in range(lo, hi + 1)
                     if not _WORD.search(chr(c)) and not chr(c).isspace()]
                    + ["..", "...", "....", "......", "--", "---", "----", "——", "……"])


# ---------------------------------------------------------------- locations


@dataclass(frozen=True)
class Target:
    """A parsed location: where to connect, which collection, and the redacted name to show."""

    uri: str
    collection: str
    db: str = ""
    token: str = ""
    user: str = ""
    password: str = ""
    lite: bool = False
    display: str = ""

    @property
    def secrets(self) -> list[str]:
        return [s for s in (self.token, self.password) if s]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    @property
    def lock_path(self) -> Path:
        if self.lite:
            return Path(self.uri + ".lock")
        key = f"{self.uri}/{self.db}/{self.collection}".lower()
        folder = Path(tempfile.gettempdir()) / "indexer-milvus-locks"
        return folder / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock")


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
        return Target(str(Path(path).expanduser().absolute()), collection, lite=True,
                      display=f"milvus-lite://{path}" + (f"?collection={collection}" if "collection" in query else ""))
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


def _connect(target: Target):
    """A MilvusClient for the target, shared within the process; a StoreError when unreachable."""
    key = (target.uri, target.db, target.token, target.user, target.password)
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
    key = (target.uri, target.db, target.token, target.user, target.password)
    client = _CLIENTS.pop(key, None)
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


# ---------------------------------------------------------------- the store


@dataclass
class _Row:
    pk: int | None  # None: not saved yet
    gen: int | None
    seq: int
    chunk: Chunk
    terms: str  # the jieba terms as JSON: a list of short strings costs ~7x the memory


class MilvusStore:
    """Chunk records, terms and the cross-lingual vectors in memory (for BM25, the USE route and
    context); the e5 vectors and everything else on the server."""

    def __init__(self, location: str, manifest: Manifest) -> None:
        self.target = parse_location(location)
        self.manifest = manifest
        self.generation: str | None = None
        self._live: int | None = None  # the generation this object was loaded from or saved as
        self._base: int | None = None  # data collections' generation; None: new collections on save
        self._changed: list[str] = []  # documents superseded by the live generation, until its clean-up
        self._clean = True
        self._rows: list[_Row] = []
        self._by_pk: dict[int, int] = {}
        self._doc_gen: dict[str, int] = {}  # saved documents: the generation of their rows
        self._doc_parts: dict[str, int] = {}  # saved documents: rows (text pieces) found on the server
        self._doc_expected: dict[str, int] = {}  # saved documents: text pieces their record announces
        self._pending: dict[str, tuple[np.ndarray, str, PassageVectors | None]] = {}  # unsaved: vectors, text, xl
        self._superseded: set[str] = set()  # saved documents deleted or replaced since load
        self._keyword: KeywordIndex | None = None
        self.server_version: str | None = None
        self._dim_on_server: int | None = None
        # cross-lingual vectors in row order, kept exactly when the manifest says so (as the folder index);
        # upserts are appended to _xl_tail and joined on the next read (one copy, not one per document)
        self._xl: PassageVectors | None = empty_table(manifest) if manifest.crosslingual else None
        self._xl_tail: list[PassageVectors] = []
        self._xl_problems: list[str] = []  # what loading the cross-lingual payloads found wrong
        self._keyword_state: dict = {"route": "local"}  # the BM25 route, kept with every generation
        self._bm25_fields: bool | None = None  # whether the chunk collection has the BM25 field (None: not checked)
        self._segmenter: Segmenter | None = None
        self._vector_cache: OrderedDict[int, np.ndarray] = OrderedDict()  # pk → vector, least recently used first

    # ---------------------------------------------------------------- names

    @property
    def location(self) -> str:
        return self.target.display

    @property
    def _meta(self) -> str:
        return f"{self.target.collection}_meta"

    def _chunks_name(self, base: int) -> str:
        return f"{self.target.collection}__g{base}_chunks"

    def _docs_name(self, base: int) -> str:
        return f"{self.target.collection}__g{base}_docs"

    def _xl_name(self, base: int) -> str:
        return f"{self.target.collection}__g{base}_xl"

    def _data_names(self, base: int) -> list[str]:
        """The data collections of `base`: chunks, docs and (whatever the manifest says) xl."""
        return [self._chunks_name(base), self._docs_name(base), self._xl_name(base)]

    @property
    def _server_bm25(self) -> bool:
        return self._keyword_state.get("route") == "server"

    @property
    def keyword_backend(self) -> str:
        """Which BM25 answers keyword search (shown by `info`)."""
        if self._server_bm25:
            return f"server BM25 (Milvus {self._keyword_state.get('server')} full-text search, jieba analyzer)"
        text = "local BM25 (indexer.keyword) over the keyword terms stored in Milvus"
        if self._keyword_state.get("chosen") == "local":
            text += f" ({BM25_ENV}=local at build)"
        elif self._keyword_state.get("chosen") == "analyzer":
            text += " (the index's analyzer folds scripts and adds bigrams and codes: the server's cannot)"
        elif self._keyword_state.get("server"):
            text += f" (Milvus {self._keyword_state['server']} has no BM25)"
        return text

    def _client(self):
        return _connect(self.target)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def index_kind(self) -> str:
        return choose_index_type(self.manifest.index_type, len(self))

    # ---------------------------------------------------------------- class methods

    @classmethod
    def exists(cls, location: str) -> bool:
        """Whether the location holds an index (a live pointer); an unreachable server is an error."""
        target = parse_location(location)
        client = _connect(target)
        with _calling(target, "lookup"):
            if not client.has_collection(f"{target.collection}_meta", timeout=CALL_TIMEOUT):
                return False
            return _read_pointer(client, target) is not None

    @staticmethod
    def display(location: str) -> str:
        """The location as it may be printed: no token, user or password."""
        return parse_location(location).display

    @staticmethod
    def lock(location: str):
        """Writers' lock: a file lock keyed on the location, under the temp dir (one machine)."""
        return _writer_lock(parse_location(location))

    @classmethod
    def load(cls, location: str) -> "MilvusStore":
        """The live generation; read again if a writer switched generations while this one was reading."""
        target = parse_location(location)
        client = _connect(target)
        for attempt in range(3):
            with _calling(target, "load"):
                if not client.has_collection(f"{target.collection}_meta", timeout=CALL_TIMEOUT):
                    raise StoreError(f"no index at {target.display}: build one with "
                                     f"`python -m indexer build PATHS --index {target.display}`")
                pointer = _read_pointer(client, target)
            if pointer is None:
                raise StoreError(f"{target.display}: no complete generation (an earlier build never finished)")
            try:
                return cls._load_at(location, target, client, *pointer)
            except StoreError:
                with _calling(target, "load"):
                    now_live = _read_pointer(client, target)
                if attempt == 2 or now_live is None or now_live[0] == pointer[0]:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _load_at(cls, location: str, target: Target, client, gen: int, info: dict) -> "MilvusStore":
        with _calling(target, "load"):
            state = _read_state(client, target, gen, info)
            manifest = _manifest_from(state.get("manifest"), target)
            store = cls(location, manifest)
            store._live, store._base = gen, int(state["base"])
            store._changed, store._clean = state["changed"], state["clean"]
            store._keyword_state = dict(state.get("keyword") or {"route": "local"})  # older indexes: local
            store.generation = f"gen-{gen:06d}"
            store._load_rows(client)
            try:
                store.server_version = client.get_server_version(timeout=CALL_TIMEOUT)
            except Exception:  # noqa: BLE001 - only for `info`
                store.server_version = None
        problems = store.problems()
        if problems:
            raise StoreError(f"{target.display}: {problems[0]}")
        return store

    def _live_filter(self, gen: int | None = None) -> str:
        gen = self._live if gen is None else gen
        expr = f"gen <= {gen}"
        if self._changed and not self._clean:
            expr += f" and not ({_in('doc_id', self._changed)} and gen < {gen})"
        return expr

    def _load_rows(self, client) -> None:
        docs, chunks = self._docs_name(self._base), self._chunks_name(self._base)
        for name in (docs, chunks):
            if not client.has_collection(name, timeout=CALL_TIMEOUT):
                raise StoreError(f"{self.target.display}: collection {name} is missing")
            _ensure_loaded(client, name)
        records: list[tuple[int, int, DocRecord]] = []
        for row in _query_all(client, docs, self._live_filter(), ["doc_id", "gen", "seq", "part", "record"]):
            self._doc_parts[row["doc_id"]] = self._doc_parts.get(row["doc_id"], 0) + 1
            if row["part"] == 0:
                try:
                    data = json.loads(row["record"])
                    self._doc_expected[row["doc_id"]] = int(data.pop("parts", 1))
                    records.append((row["gen"], row["seq"], DocRecord(**data)))
                except (ValueError, TypeError) as exc:
                    raise StoreError(f"{self.target.display}: document record of {row['doc_id']!r} is damaged ({exc})") from None
                self._doc_gen[row["doc_id"]] = row["gen"]
        records.sort(key=lambda r: (r[0], r[1]))
        self.manifest.documents = {rec.doc_id: rec for _, _, rec in records}
        rows = []
        for row in _query_all(client, chunks, self._live_filter(), ["pk", "gen", "seq", "chunk", "terms"]):
            try:
                rows.append(_Row(row["pk"], row["gen"], row["seq"], _chunk_from_json(row["chunk"]), row["terms"]))
            except (ValueError, TypeError, KeyError) as exc:
                raise StoreError(f"{self.target.display}: chunk records are damaged ({exc})") from None
        rows.sort(key=lambda r: (r.gen, r.seq))
        self._set_rows(rows)
        fields = _field_names(client, chunks)
        self._dim_on_server = fields.get("vector")
        self._bm25_fields = "sparse" in fields
        if self._xl is not None:
            self._xl = self._load_xl(client)

    def _load_xl(self, client) -> PassageVectors:
        """The cross-lingual vectors of the live rows, in row order, from the per-document payloads."""
        name = self._xl_name(self._base)
        if not client.has_collection(name, timeout=CALL_TIMEOUT):
            raise StoreError(f"{self.target.display}: collection {name} is missing (the cross-lingual vectors)")
        _ensure_loaded(client, name)
        pieces: dict[str, list[dict]] = {}
        for page in _query_pages(client, name, self._live_filter(), ["doc_id", "gen", "part", "parts", "body"],
                                 page=XL_BATCH):
            for row in page:
                if row["gen"] == self._doc_gen.get(row["doc_id"]):
                    pieces.setdefault(row["doc_id"], []).append(row)
        order: list[str] = []  # documents in the order of their first row
        local: list[int] = []  # each row's place among its document's rows
        count: dict[str, int] = {}
        for r in self._rows:
            doc_id = r.chunk.doc_id
            if doc_id not in count:
                order.append(doc_id)
                count[doc_id] = 0
            local.append(count[doc_id])
            count[doc_id] += 1
        order += [d for d in self.manifest.documents if d not in count]  # documents without chunks
        parts, offset, missing, torn = [], {}, [], []
        for doc_id in order:
            rows = sorted(pieces.get(doc_id, []), key=lambda r: r["part"])
            if not rows:
                missing.append(doc_id)
                continue
            if [r["part"] for r in rows] != list(range(rows[0]["parts"])):
                torn.append(doc_id)
                continue
            try:
                xl = _xl_decode("".join(r["body"] for r in rows))
            except ValueError:
                torn.append(doc_id)
                continue
            if len(xl) != count.get(doc_id, 0):
                self._xl_problems.append(f"cross-lingual vectors of {doc_id!r} cover {len(xl)} chunks, "
                                         f"not its {count.get(doc_id, 0)}")
                continue
            offset[doc_id] = sum(len(p) for p in parts)
            parts.append(xl)
        if missing:
            self._xl_problems.append(f"no cross-lingual vectors for {missing[:3]}")
        if torn:
            self._xl_problems.append(f"the stored cross-lingual vectors of {torn[:3]} are incomplete or damaged")
        if self._xl_problems:
            return empty_table(self.manifest)
        whole = PassageVectors.concat(parts) if parts else empty_table(self.manifest)
        order_in_whole = np.array([offset[r.chunk.doc_id] + j for r, j in zip(self._rows, local)], np.int64)
        if np.array_equal(order_in_whole, np.arange(len(whole))):
            return whole
        return whole.take(order_in_whole)

    def _set_rows(self, rows: list[_Row]) -> None:
        self._rows = rows
        self._by_pk = {r.pk: i for i, r in enumerate(rows) if r.pk is not None}
        self._keyword = None

    def flush(self) -> None:
        """Nothing to do before `save`: a Milvus index writes its rows when it saves."""

    def rollback(self) -> None:
        """Nothing to undo: a Milvus index writes nothing before `save`, and the engine drops this store."""

    def optimize(self) -> int:
        """Nothing to do here: the server merges its own segments (compaction)."""
        raise StoreError(f"{self.target.display}: Milvus merges its own segments (compaction); "
                         "optimize is for folder indexes")

    @classmethod
    def upgrade(cls, location: str) -> str:
        raise StoreError(f"{cls.display(location)}: a Milvus index has no older format to upgrade")

    def reopened(self) -> "MilvusStore":
        """The index as last committed (read again whole: Milvus keeps the records in this process)."""
        return type(self).load(self.location)

    def is_current(self) -> bool:
        """False once another process has switched in a newer generation."""
        if self._live is None:
            return False
        client = self._client()
        with _calling(self.target, "lookup"):
            pointer = _read_pointer(client, self.target)
        return pointer is not None and pointer[0] == self._live

    # ---------------------------------------------------------------- updates (in memory until save)

    def upsert(self, doc: DocRecord, chunks: list[Chunk], vectors: np.ndarray, text: str,
               terms: list[list[str]], xl: PassageVectors | None = None) -> None:
        check_upsert(chunks, vectors, terms, xl, self._xl is not None)
        if doc.doc_id in self.manifest.documents:
            self.delete([doc.doc_id])
        self._rows.extend(_Row(None, None, 0, c, json.dumps(list(t), ensure_ascii=False))
                          for c, t in zip(chunks, terms))
        self._keyword = None
        if xl is not None:
            self._xl_tail.append(xl)
        self._pending[doc.doc_id] = (np.ascontiguousarray(vectors, dtype=np.float32), text, xl)
        self.manifest.documents[doc.doc_id] = doc
        self.manifest.updated = now()

    def delete(self, doc_ids: list[str]) -> None:
        drop = set(doc_ids)
        keep = [i for i, r in enumerate(self._rows) if r.chunk.doc_id not in drop]
        if self._xl is not None:
            self._xl = self._table().take(np.asarray(keep, np.int64))
        self._set_rows([self._rows[i] for i in keep])
        for doc_id in drop:
            self.manifest.documents.pop(doc_id, None)
            self._pending.pop(doc_id, None)
            if doc_id in self._doc_gen:
                self._superseded.add(doc_id)
                del self._doc_gen[doc_id]
                self._doc_parts.pop(doc_id, None)
                self._doc_expected.pop(doc_id, None)
        self.manifest.updated = now()

    # ---------------------------------------------------------------- reads

    def _rows_of(self, doc_ids: set[str] | None) -> np.ndarray | None:
        if doc_ids is None:
            return None
        return np.flatnonzero([r.chunk.doc_id in doc_ids for r in self._rows]).astype(np.int64)

    def _terms_of_rows(self) -> list[list[str]]:
        try:
            return [json.loads(r.terms) for r in self._rows]
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self.target.display}: keyword terms are damaged ({exc})") from None

    def _keyword_index(self) -> KeywordIndex:
        if self._keyword is None:
            analyzer = Analyzer.of(self.manifest.keyword)
            self._keyword = KeywordIndex(self._terms_of_rows(), analyzer.k1, analyzer.b)
        return self._keyword

    def keyword_ceiling(self, query_terms: list[str]) -> float | None:
        """The query's BM25 ceiling (KeywordIndex.ceiling) on the project's BM25; None on the server's,
        whose statistics stay on the server."""
        return None if self._server_bm25 else self._keyword_index().ceiling(query_terms)

    def vocabulary(self) -> frozenset[str]:
        """Every keyword term of the chunks (the project's jieba terms, whichever BM25 scores them)."""
        if self._server_bm25:
            return frozenset(t for terms in self._terms_of_rows() for t in terms if t)
        return self._keyword_index().vocabulary

    def _table(self) -> PassageVectors | None:
        """The sentence table of every row, kept whole in memory as the rows are (None: none)."""
        if self._xl_tail:
            self._xl, self._xl_tail = PassageVectors.concat([self._xl, *self._xl_tail]), []
        return self._xl

    def sentence_tables(self) -> Iterator[tuple[int, PassageVectors]]:
        """The sentence table as one piece (this store holds it in memory already)."""
        if (table := self._table()) is not None:
            yield 0, table

    def sentence_count(self) -> int:
        table = self._table()
        return 0 if table is None else len(table.owner)

    def keyword_search(self, query_terms: list[str], k: int, doc_ids: set[str] | None = None,
                       rows: np.ndarray | None = None) -> list[tuple[float, int]]:
        """BM25 of the query terms: the project's KeywordIndex over the stored terms (as the folder index),
        or the server's full-text search where the index was built for it; best first, scores > 0.
        The server filters by document: with `rows`, it searches their documents whole and the
        rows are picked from that."""
        if self._server_bm25:
            if rows is None:
                return self._server_keyword_search(query_terms, k, doc_ids)
            docs = set(self.doc_ids(rows.tolist())) & (doc_ids if doc_ids is not None else set(self.manifest.documents))
            wanted = set(rows.tolist())
            every = self._server_keyword_search(query_terms, len(self._rows_of(docs)), docs)
            return [(s, r) for s, r in every if r in wanted][:k]
        allowed = self._rows_of(doc_ids)
        if rows is not None:
            allowed = rows if allowed is None else np.intersect1d(allowed, rows, assume_unique=True)
        scores, found = self._keyword_index().search(query_terms, k, allowed)
        return [(float(s), int(i)) for s, i in zip(scores, found)]

    def rows_of(self, doc_ids: set[str]) -> np.ndarray:
        return self._rows_of(set(doc_ids))

    def live_rows(self) -> np.ndarray:
        return np.arange(len(self._rows), dtype=np.int64)

    def rows_with_terms(self, terms: list[str]) -> None:
        return None  # the terms live on the server: a phrase question reads the allowed texts

    def doc_ids(self, rows: list[int]) -> list[str]:
        return [self._rows[r].chunk.doc_id for r in rows]

    def chunks(self, rows: list[int]) -> list[Chunk]:
        return [self._rows[r].chunk for r in rows]

    def sentences(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        xl = self._table()
        sel = xl.sentences_of(row)
        return xl.spans[sel], xl.sentences[sel], None if xl.dense is None else xl.dense[sel]

    @property
    def segmenter(self) -> Segmenter:
        """The project's segmenter with the index's user terms (for query_text), made on first need."""
        if self._segmenter is None:
            self._segmenter = Segmenter.of(self.manifest.keyword)
        return self._segmenter

    def _server_keyword_search(self, query_terms: list[str], k: int, doc_ids: set[str] | None) -> list[tuple[float, int]]:
        """The server's BM25 over the chunk text (saved rows only). The terms go as one text that the
        server's analyzer segments back into them (query_text). BM25 scores are >= 0: milvus-lite 3.2
        returns them negated as distances (best first) and Milvus 2.5 as they are, so the score is the
        magnitude, divided by (k1 + 1) to be on the project's scale (Lucene's form, as the folder index computes it), which omits that factor."""
        text = query_text(list(query_terms), self.segmenter) if any(query_terms) else ""
        k = min(k, MAX_TOPK)
        if not text or k <= 0 or self._live is None or (doc_ids is not None and not doc_ids):
            return []
        expr = self._live_filter()
        if doc_ids is not None:
            expr = f"({expr}) and {_in('doc_id', sorted(doc_ids))}"
        client = self._client()
        with _calling(self.target, "keyword search"):
            result = client.search(self._chunks_name(self._base), data=[text], limit=k, filter=expr,
                                   output_fields=["pk"], anns_field="sparse",
                                   search_params={"metric_type": "BM25", "params": {}},
                                   consistency_level="Strong", timeout=CALL_TIMEOUT)
        scale = 1.0 + float(self._keyword_state.get("k1", BM25_K1))  # the server's BM25 has the (k1 + 1) factor
        out = []
        for hit in result[0] if result else []:
            i = self._by_pk.get(hit.get("id", hit.get("pk")))
            score = abs(float(hit["distance"])) / scale
            if i is not None and score > 0:
                out.append((score, i))
        return out

    def search(self, queries: np.ndarray, k: int, doc_ids: set[str] | None = None) -> list[list[tuple[float, int]]]:
        """The k best saved chunks per query vector by inner product, best first (server-side)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        empty = [[] for _ in range(len(queries))]
        if self._live is None:
            return empty
        eligible = len(self) if doc_ids is None else int(np.count_nonzero(
            [r.chunk.doc_id in doc_ids for r in self._rows]))
        k = min(k, eligible, MAX_TOPK)
        if k <= 0 or not len(queries):
            return empty
        expr = self._live_filter()
        if doc_ids is not None:
            expr = f"({expr}) and {_in('doc_id', sorted(doc_ids))}"
        params = {"metric_type": "IP", "params": _search_params(self.index_kind, k)}
        client = self._client()
        out: list[list[tuple[float, int]]] = []
        with _calling(self.target, "search"):
            for start in range(0, len(queries), SEARCH_BATCH):
                batch = queries[start:start + SEARCH_BATCH]
                result = client.search(self._chunks_name(self._base), data=batch.tolist(), limit=k, filter=expr,
                                       output_fields=["pk"], search_params=params, anns_field="vector",
                                       consistency_level="Strong", timeout=CALL_TIMEOUT)
                for hits in result:
                    row = []
                    for hit in hits:
                        pk = hit.get("id", hit.get("pk"))
                        i = self._by_pk.get(pk)
                        if i is not None:
                            row.append((float(hit["distance"]), i))
                    out.append(row)
        return out

    def document_text(self, doc_id: str) -> str:
        if doc_id in self._pending:
            return self._pending[doc_id][1]
        if doc_id not in self._doc_gen:
            raise KeyError(doc_id)
        client = self._client()
        with _calling(self.target, "read"):
            rows = _query_all(client, self._docs_name(self._base),
                              f"doc_id == {_lit(doc_id)} and gen == {self._doc_gen[doc_id]}", ["part", "text"])
        return "".join(r["text"] for r in sorted(rows, key=lambda r: r["part"]))

    def _vectors_at(self, rows: list[int]) -> np.ndarray:
        """The vectors of these rows: unsaved ones from memory, saved ones from the cache or the server
        (one query per 4,096 missing)."""
        out = np.zeros((len(rows), self.manifest.dim), np.float32)
        need: dict[int, list[int]] = {}
        first: dict[str, int] = {}  # an unsaved document's first row (its rows are contiguous)
        for j, i in enumerate(rows):
            r = self._rows[i]
            if r.pk is None:
                doc_id = r.chunk.doc_id
                if doc_id not in first:
                    first[doc_id] = next(n for n, x in enumerate(self._rows) if x.chunk.doc_id == doc_id)
                out[j] = self._pending[doc_id][0][i - first[doc_id]]
            elif r.pk in self._vector_cache:
                self._vector_cache.move_to_end(r.pk)
                out[j] = self._vector_cache[r.pk]
            else:
                need.setdefault(r.pk, []).append(j)
        if need:
            pks, found = list(need), 0
            client = self._client()
            with _calling(self.target, "read"):
                for start in range(0, len(pks), MAX_QUERY_ROWS // 4):
                    part = pks[start:start + MAX_QUERY_ROWS // 4]
                    for row in client.query(self._chunks_name(self._base), filter=f"pk in [{', '.join(map(str, part))}]",
                                            output_fields=["pk", "vector"], limit=len(part),
                                            consistency_level="Strong", timeout=CALL_TIMEOUT):
                        vector = np.asarray(row["vector"], np.float32)
                        out[need[row["pk"]]] = vector
                        found += 1
                        self._vector_cache[row["pk"]] = vector
                        if len(self._vector_cache) > VECTOR_CACHE:
                            self._vector_cache.popitem(last=False)
            if found != len(pks):
                raise StoreError(f"{self.target.display}: the vectors of {len(pks) - found} chunks are missing "
                                 "on the server")
        return out

    def dense_scores(self, queries: np.ndarray, rows: list[list[int]]) -> list[np.ndarray]:
        """Exact inner products of each query with the given rows, from their stored vectors (fetched
        once for all queries, computed here as the folder index computes them)."""
        wanted = list(dict.fromkeys(r for group in rows for r in group))
        vectors = self._vectors_at(wanted)
        at = {r: n for n, r in enumerate(wanted)}
        return [vectors[[at[r] for r in group]] @ np.asarray(q, dtype=np.float32) for q, group in zip(queries, rows)]

    def document_vectors(self, doc_id: str) -> tuple[list[Chunk], np.ndarray, PassageVectors | None]:
        """A document's chunks, vectors and cross-lingual vectors in row order (what an update reuses)."""
        rows = [i for i, r in enumerate(self._rows) if r.chunk.doc_id == doc_id]
        xl = PassageVectors.gather([(self._table(), i) for i in rows]) if self._xl is not None else None
        return [self._rows[i].chunk for i in rows], self._vectors_at(rows), xl

    def vectors(self) -> np.ndarray:
        """Every row's vector, in row order (fetched from the server for saved rows)."""
        out = np.zeros((len(self._rows), self.manifest.dim), np.float32)
        if self._by_pk:
            client = self._client()
            with _calling(self.target, "read"):
                for row in _query_all(client, self._chunks_name(self._base), self._live_filter(), ["pk", "vector"]):
                    i = self._by_pk.get(row["pk"])
                    if i is not None:
                        out[i] = row["vector"]
        offsets: dict[str, int] = {}
        for i, r in enumerate(self._rows):
            if r.pk is None:
                n = offsets.get(r.chunk.doc_id, 0)
                out[i] = self._pending[r.chunk.doc_id][0][n]
                offsets[r.chunk.doc_id] = n + 1
        return out

    def recall_vs_exact(self, k: int = 10, sample: int = 200, seed: int = 0) -> float | None:
        """Recall@k of the server's approximate index against exact search, with stored vectors as queries
        (None for FLAT: exact already). The exact neighbours are computed here, streaming every saved
        vector from the server once (memory: one page), so this costs a full read of the collection."""
        saved = [r.pk for r in self._rows if r.pk is not None]
        if self.index_kind == "flat" or not saved or self._live is None:
            return None
        rng = np.random.default_rng(seed)
        picked = [saved[i] for i in rng.choice(len(saved), size=min(sample, len(saved)), replace=False)]
        k = min(k, len(saved))
        name, expr = self._chunks_name(self._base), self._live_filter()
        client = self._client()
        with _calling(self.target, "read"):
            found = {r["pk"]: r["vector"] for r in client.query(
                name, filter=f"pk in [{', '.join(map(str, picked))}]", output_fields=["pk", "vector"],
                consistency_level="Strong", timeout=CALL_TIMEOUT)}
            queries = np.asarray([found[pk] for pk in picked], dtype=np.float32)
            approx = [[hit.get("id", hit.get("pk")) for hit in hits] for start in range(0, len(queries), SEARCH_BATCH)
                      for hits in client.search(name, data=queries[start:start + SEARCH_BATCH].tolist(), limit=k,
                                                filter=expr, output_fields=["pk"], anns_field="vector",
                                                search_params={"metric_type": "IP",
                                                               "params": _search_params(self.index_kind, k)},
                                                consistency_level="Strong", timeout=CALL_TIMEOUT)]
            best = np.full((len(queries), k), -np.inf, np.float32)
            best_pk = np.zeros((len(queries), k), np.int64)
            for rows in _query_pages(client, name, expr, ["vector"]):
                scores = np.hstack([best, queries @ np.asarray([r["vector"] for r in rows], np.float32).T])
                pks = np.hstack([best_pk, np.broadcast_to(np.asarray([r["pk"] for r in rows], np.int64),
                                                          (len(queries), len(rows)))])
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                best, best_pk = np.take_along_axis(scores, top, 1), np.take_along_axis(pks, top, 1)
        return float(np.mean([len(set(a) & set(e.tolist())) / k for a, e in zip(approx, best_pk)]))

    def chunks_of(self, doc_id: str) -> list[Chunk]:
        return sorted((r.chunk for r in self._rows if r.chunk.doc_id == doc_id), key=lambda c: c.position)

    def all_chunks(self) -> list[Chunk]:
        return [r.chunk for r in self._rows]

    # ---------------------------------------------------------------- save: a new generation, then the switch

    def save(self) -> None:
        """Write the changes as generation L+1, switch the pointer to it, then delete what it superseded."""
        client = self._client()
        with _calling(self.target, "save"):
            has_meta = client.has_collection(self._meta, timeout=CALL_TIMEOUT)
            pointer = _read_pointer(client, self.target) if has_meta else None
            live = pointer[0] if pointer else 0
            if self._live is not None and pointer and pointer[0] != self._live:
                raise StoreError(f"{self.target.display}: another writer saved generation {pointer[0]} since this "
                                 f"one loaded {self._live}; load again and redo the change")
            live_state = _read_state(client, self.target, *pointer) if pointer else None
            self._clear_leftovers(client, live, live_state, has_meta)
            if live_state and not live_state["clean"]:
                self._collect(client, live, live_state)
            gen = live + 1
            fresh = self._base is None
            base = gen if fresh else self._base
            if fresh:
                self._keyword_state = self._choose_keyword(client)
            self._create_collections(client, meta=not has_meta, data=base if fresh else None)
            rows, docs = self._write_rows(client, base, gen)
            self._ensure_index(client, self._chunks_name(base))
            if self._server_bm25 and str(self._keyword_state.get("server", "")).startswith("milvus_lite"):
                # milvus-lite scores unflushed rows by rebuilding their BM25 index on every search (~60 ms
                # at 300 chunks); flushed, the index is built once (~2 ms). A Milvus server indexes by itself.
                client.flush(self._chunks_name(base), timeout=LONG_TIMEOUT)
            changed = [] if fresh else sorted(self._superseded)
            state = {"format": FORMAT_VERSION, "base": base, "manifest": self._manifest_core(),
                     "changed": changed, "keyword": self._keyword_state, "written": now()}
            parts = _pieces(json.dumps(state, ensure_ascii=False))
            _insert(client, self._meta, [{"gen": gen, "kind": "state", "part": i, "body": p, "vec": DUMMY}
                                         for i, p in enumerate(parts)])
            self._switch(client, gen, len(parts))
        # committed: the object now mirrors generation `gen`
        self._live, self._base, self._changed, self._clean = gen, base, changed, not changed
        self.generation = f"gen-{gen:06d}"
        for doc_id, g in docs.items():
            self._doc_gen[doc_id] = g
        self._doc_parts.update(self._written_parts)
        self._doc_expected.update(self._written_parts)
        self._pending.clear()
        self._superseded.clear()
        self._set_rows(rows)
        try:  # the clean-up: anything left here is finished by the next writer, readers are unaffected
            with _calling(self.target, "clean-up"):
                self._collect(client, gen, {"base": base, "changed": changed, "clean": False},
                              old_base=live_state["base"] if live_state and fresh else None)
            self._clean = True
        except StoreError:
            pass

    def _choose_keyword(self, client) -> dict:
        """The BM25 route of a new index, from INDEXER_MILVUS_BM25: `auto` (default) the server's where it
        has full-text search (judged by its version) else the project's; `local` the project's; `server`
        the server's, or an error if it has none."""
        wanted = os.environ.get(BM25_ENV, "").strip().lower() or BM25_DEFAULT
        if wanted not in ("auto", "local", "server"):
            raise StoreError(f"{BM25_ENV}={wanted!r} is not a BM25 route; use auto, local or server")
        if wanted == "local":
            return {"route": "local", "chosen": "local"}
        if Analyzer.of(self.manifest.keyword) != LEGACY:  # the server's analyzer is jieba alone, unfolded
            if wanted == "server":
                raise StoreError(f"{BM25_ENV}=server needs the server's own analyzer, plain jieba words; this index "
                                 "folds scripts and adds bigrams and codes (the project's BM25): use auto or local")
            return {"route": "local", "chosen": "analyzer"}
        version = client.get_server_version(timeout=CALL_TIMEOUT)
        if server_has_bm25(version):
            return {"route": "server", "server": version, "k1": BM25_K1, "b": BM25_B,
                    "analyzer": analyzer_params(tuple(self.manifest.keyword.get("user_terms", ())))}
        if wanted == "server":
            raise StoreError(f"{self.target.display}: {BM25_ENV}=server, but Milvus {version} has no full-text "
                             "search (BM25 needs Milvus 2.5 or newer, or milvus-lite 3); use auto or local")
        return {"route": "local", "server": version}

    def _switch(self, client, gen: int, parts: int) -> None:
        """Make `gen` live: one single-row insert. Before it, nothing of `gen` is visible to anyone."""
        _insert(client, self._meta, [{"gen": gen, "kind": "pointer", "part": 0,
                                      "body": json.dumps({"gen": gen, "parts": parts}), "vec": DUMMY}])

    def _manifest_core(self) -> dict:
        data = self.manifest.to_json()
        data.pop("documents")
        return data

    def _create_collections(self, client, meta: bool, data: int | None) -> None:
        """Create the meta collection and/or a new pair of data collections, concurrently (each takes seconds)."""
        specs = []
        if meta:
            schema = _schema(client, [("gen", "INT64"), ("kind", 32), ("part", "INT64"), ("body", MAX_VARCHAR)], "vec", 2)
            specs.append((self._meta, schema, "vec", "FLAT", "L2", {}))
        if data is not None:
            bm25 = self._keyword_state if self._server_bm25 else None
            chunks = _schema(client, [("doc_id", 4096), ("gen", "INT64"), ("seq", "INT64"), ("chunk", MAX_VARCHAR),
                                      ("terms", MAX_VARCHAR)], "vector", self.manifest.dim, bm25=bm25)
            specs.append((self._chunks_name(data), chunks, "vector", *_index_spec(self.index_kind, len(self)),
                          bm25))
            docs = _schema(client, [("doc_id", 4096), ("gen", "INT64"), ("seq", "INT64"), ("part", "INT64"),
                                    ("record", MAX_VARCHAR), ("text", MAX_VARCHAR)], "vec", 2)
            specs.append((self._docs_name(data), docs, "vec", "FLAT", "L2", {}))
            if self._xl is not None:
                xl = _schema(client, [("doc_id", 4096), ("gen", "INT64"), ("seq", "INT64"), ("part", "INT64"),
                                      ("parts", "INT64"), ("body", MAX_VARCHAR)], "vec", 2)
                specs.append((self._xl_name(data), xl, "vec", "FLAT", "L2", {}))
        if len(specs) == 1:
            _create(client, *specs[0])
        elif specs:
            with ThreadPoolExecutor(len(specs)) as pool:
                for future in [pool.submit(_create, client, *spec) for spec in specs]:
                    future.result()

    def _write_rows(self, client, base: int, gen: int) -> tuple[list[_Row], dict[str, int]]:
        """Insert the unsaved documents' rows as `gen`; returns the rows with their new keys."""
        self._written_parts: dict[str, int] = {}
        doc_rows, written = [], {}
        pending_docs = [d for d in self.manifest.documents if d in self._pending]
        for seq, doc_id in enumerate(pending_docs):
            record = asdict(self.manifest.documents[doc_id])
            text = self._pending[doc_id][1]
            pieces = [text[i:i + TEXT_PIECE] for i in range(0, len(text), TEXT_PIECE)] or [""]
            record["parts"] = len(pieces)
            record_json = json.dumps(record, ensure_ascii=False)
            if len(record_json.encode("utf-8")) > MAX_VARCHAR:
                raise StoreError(f"{self.target.display}: the record of {doc_id!r} is too large for Milvus "
                                 f"({len(record_json.encode('utf-8'))} bytes; its meta is too big)")
            for part, piece in enumerate(pieces):
                doc_rows.append({"doc_id": doc_id, "gen": gen, "seq": seq, "part": part,
                                 "record": record_json if part == 0 else "", "text": piece, "vec": DUMMY})
            self._written_parts[doc_id] = len(pieces)
            written[doc_id] = gen
        _insert(client, self._docs_name(base), doc_rows)
        if self._xl is not None:
            xl_rows = []
            for seq, doc_id in enumerate(pending_docs):
                xl = self._pending[doc_id][2]
                blob = _xl_encode(xl if xl is not None else empty_table(self.manifest))
                pieces = [blob[i:i + XL_PIECE] for i in range(0, len(blob), XL_PIECE)]
                xl_rows += [{"doc_id": doc_id, "gen": gen, "seq": seq, "part": part, "parts": len(pieces),
                             "body": piece, "vec": DUMMY} for part, piece in enumerate(pieces)]
            _insert(client, self._xl_name(base), xl_rows, batch=XL_BATCH)
        new = [r for r in self._rows if r.pk is None]
        offsets: dict[str, int] = {}
        data = []
        for seq, r in enumerate(new):
            n = offsets.get(r.chunk.doc_id, 0)
            offsets[r.chunk.doc_id] = n + 1
            chunk_json = json.dumps(asdict(r.chunk), ensure_ascii=False)
            terms_json = r.terms
            if max(len(chunk_json.encode("utf-8")), len(terms_json.encode("utf-8"))) > MAX_VARCHAR:
                raise StoreError(f"{self.target.display}: chunk {r.chunk.chunk_id} is too large for one Milvus "
                                 "row (64 KB); use a smaller --max-tokens")
            data.append({"doc_id": r.chunk.doc_id, "gen": gen, "seq": seq, "chunk": chunk_json, "terms": terms_json,
                         "vector": self._pending[r.chunk.doc_id][0][n].tolist()})
            if self._server_bm25:
                data[-1]["text"] = r.chunk.text  # analyzed by the server's jieba for its BM25
        keys = _insert(client, self._chunks_name(base), data)
        for r, pk, seq in zip(new, keys, range(len(new))):
            r.pk, r.gen, r.seq = int(pk), gen, seq
        return list(self._rows), written

    def _ensure_index(self, client, name: str) -> None:
        """The vector index kind for the row count (faiss_store.choose_index_type: FLAT below
        APPROX_ABOVE, IVF_FLAT from there, with the folder index's nlist and nprobe)."""
        kind = self.index_kind
        index_type, metric, params = _index_spec(kind, len(self))
        try:
            current = client.describe_index(name, "vector", timeout=CALL_TIMEOUT) or {}
        except Exception:  # noqa: BLE001 - no index yet
            current = {}
        if current.get("index_type") == index_type:
            return
        client.release_collection(name, timeout=CALL_TIMEOUT)
        if current:
            client.drop_index(name, "vector", timeout=CALL_TIMEOUT)
        index = client.prepare_index_params()
        index.add_index("vector", index_type=index_type, metric_type=metric, params=params)
        client.create_index(name, index, timeout=LONG_TIMEOUT)
        client.load_collection(name, timeout=LONG_TIMEOUT)

    def _clear_leftovers(self, client, live: int, state: dict | None, has_meta: bool = True) -> None:
        """Remove what a failed or killed writer left after generation `live`: rows and collections nobody reads."""
        if has_meta:
            client.delete(self._meta, filter=f"gen > {live}", timeout=CALL_TIMEOUT)
        keep = set(self._data_names(state["base"])) if state else set()
        for name in keep:
            if client.has_collection(name, timeout=CALL_TIMEOUT):
                _ensure_loaded(client, name)
                client.delete(name, filter=f"gen > {live}", timeout=CALL_TIMEOUT)
        prefix = f"{self.target.collection}__g"
        for name in client.list_collections(timeout=CALL_TIMEOUT):
            if name.startswith(prefix) and name not in keep and re.fullmatch(r"\d+_(chunks|docs|xl)", name[len(prefix):]):
                client.drop_collection(name, timeout=CALL_TIMEOUT)

    def _collect(self, client, gen: int, state: dict, old_base: int | None = None) -> None:
        """After the switch to `gen`: delete superseded rows and older meta rows, then mark `gen` clean."""
        if old_base is not None and old_base != state["base"]:
            for name in self._data_names(old_base):
                if client.has_collection(name, timeout=CALL_TIMEOUT):
                    client.drop_collection(name, timeout=CALL_TIMEOUT)
        changed = state["changed"]
        names = [n for n in self._data_names(state["base"]) if changed and client.has_collection(n, timeout=CALL_TIMEOUT)]
        for start in range(0, len(changed), 500):
            expr = f"{_in('doc_id', changed[start:start + 500])} and gen < {gen}"
            for name in names:
                client.delete(name, filter=expr, timeout=CALL_TIMEOUT)
        client.delete(self._meta, filter=f"gen < {gen}", timeout=CALL_TIMEOUT)
        _insert(client, self._meta, [{"gen": gen, "kind": "clean", "part": 0, "body": "", "vec": DUMMY}])

    # ---------------------------------------------------------------- checks

    def problems(self) -> list[str]:
        """Inconsistencies between manifest, chunk rows, texts and the collection (empty: none)."""
        out = []
        docs = self.manifest.documents
        counts: dict[str, int] = {}
        for r in self._rows:
            counts[r.chunk.doc_id] = counts.get(r.chunk.doc_id, 0) + 1
        if set(counts) - set(docs):
            out.append(f"chunks of unknown documents: {sorted(set(counts) - set(docs))[:3]}")
        bad = [d for d, rec in docs.items() if counts.get(d, 0) != rec.chunks]
        if bad:
            out.append(f"chunk count disagrees with the manifest for {bad[:3]}")
        if len({r.chunk.chunk_id for r in self._rows}) != len(self._rows):
            out.append("duplicate chunk ids")
        missing = [d for d in docs if d not in self._pending and d not in self._doc_gen]
        if missing:
            out.append(f"document texts disagree with the manifest (no text for {missing[:3]})")
        torn = [d for d, n in self._doc_expected.items() if self._doc_parts.get(d) != n]
        if torn:
            out.append(f"the stored text of {torn[:3]} is incomplete")
        if self._dim_on_server is not None and self._dim_on_server != self.manifest.dim:
            out.append(f"the collection's vectors have dimension {self._dim_on_server}, "
                       f"manifest says {self.manifest.dim}")
        if self._server_bm25 and self._bm25_fields is False:
            out.append("the index uses the server's BM25 but its chunk collection has no BM25 field")
        out.extend(self._xl_problems)
        if self._xl is not None and not self._xl_problems:
            out.extend(self._table().problems(
                len(self._rows), self.manifest.dim if self.manifest.crosslingual.get("e5_sentences") else None))
        return out


# ---------------------------------------------------------------- helpers


def _writer_lock(target: Target, timeout: float = LOCK_TIMEOUT):
    @contextmanager
    def held() -> Iterator[None]:
        target.lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(target.lock_path), timeout=timeout):
                yield
        except Timeout:
            raise StoreError(f"{target.display} is being updated by another process; gave up after "
                             f"{timeout:.0f} s") from None

    return held()


def server_has_bm25(version: str | None) -> bool:
    """Whether a server reporting `version` has full-text search (a BM25 function over an analyzed
    VARCHAR field): Milvus 2.5 and newer ("v2.5.4"), milvus-lite 3 and newer ("milvus_lite-3.2.2").
    The embedded server here reports "v2.3.5-lite": no."""
    if not version:
        return False
    lite = re.match(r"^milvus[_-]lite-v?(\d+)", version)
    if lite:
        return int(lite.group(1)) >= 3
    server = re.match(r"^v?(\d+)\.(\d+)", version)
    return bool(server) and (int(server.group(1)), int(server.group(2))) >= (2, 5)


def analyzer_params(user_terms: tuple[str, ...] = ()) -> dict:
    """The server's jieba analyzer set up like indexer.keyword.Segmenter: search mode, the index's
    user terms added to the default dictionary, lower case, the project's stopwords, and no
    punctuation or symbol tokens."""
    tokenizer: dict = {"type": "jieba", "mode": "search", "hmm": True}
    if user_terms:
        tokenizer["dict"] = ["_default_", *user_terms]
    return {"tokenizer": tokenizer,
            "filter": ["lowercase", {"type": "stop", "stop_words": sorted(STOPWORDS | SYMBOLS)}]}


def query_text(terms: list[str], segmenter: Segmenter) -> str:
    """The text to send to the server's BM25 for these query terms: one that its analyzer (jieba search
    mode, like `segmenter`) turns back into the same terms, repeats included.

    Search mode gives a long word's dictionary sub-words before the word (学术, 研究, 学术研究), and the
    server segments the text it is sent again: the terms joined by spaces would count each sub-word
    twice, and BM25 weighs a query term by its count (on DRCD, BM25 Hit@1 0.901 instead of 0.927). So
    a term is sent only for what its own segmentation does not already give (longest first, a term
    stands for its segmentation when all of it is still wanted). A term that segmentation splits when
    alone (不忘 of 不忘初心) is kept whole by writing the longest terms one after another, as in the
    question; whichever text segments back into the terms is sent.
    """
    wanted = Counter(t for t in terms if t)
    target = Counter(wanted)
    out = []
    for term in sorted(wanted, key=lambda t: (-len(t), terms.index(t))):
        parts = Counter(segmenter.terms(term))
        while wanted[term] > 0 and parts[term] > 0 and all(wanted[k] >= n for k, n in parts.items()):
            wanted -= parts
            out.append(term)
    text = " ".join(out + list(wanted.elements()))
    if Counter(segmenter.terms(text)) != target:
        glued = "".join(t for t in target if not any(t != o and t in o for o in target))
        if Counter(segmenter.terms(glued)) == target:
            return glued
    return text


def _schema(client, fields, vector_field: str, dim: int, bm25: dict | None = None):
    """A collection schema: auto primary key `pk`, the scalar fields, one dense vector; with `bm25`
    (the keyword state of a server-BM25 index) also the chunk `text`, analyzed, and its BM25 `sparse`."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    for name, kind in fields:
        if kind == "INT64":
            schema.add_field(name, DataType.INT64)
        else:
            schema.add_field(name, DataType.VARCHAR, max_length=kind)
    schema.add_field(vector_field, DataType.FLOAT_VECTOR, dim=dim)
    if bm25:
        from pymilvus import Function, FunctionType

        schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR, enable_analyzer=True,
                         analyzer_params=bm25["analyzer"])
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                                     output_field_names=["sparse"]))
    return schema


def _index_spec(kind: str, n: int) -> tuple[str, str, dict]:
    if kind == "hnsw":
        return "HNSW", "IP", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
    if kind == "ivf":
        return "IVF_FLAT", "IP", {"nlist": ivf_nlist(n)}
    return "FLAT", "IP", {}


def _search_params(kind: str, k: int) -> dict:
    if kind == "hnsw":
        return {"ef": max(HNSW_EF_SEARCH, k)}
    if kind == "ivf":
        return {"nprobe": IVF_NPROBE}
    return {}


def _create(client, name: str, schema, vector_field: str, index_type: str, metric: str, params: dict | None = None,
            bm25: dict | None = None) -> None:
    if client.has_collection(name, timeout=CALL_TIMEOUT):  # a leftover under this name: never live
        client.drop_collection(name, timeout=CALL_TIMEOUT)
    index = client.prepare_index_params()
    index.add_index(vector_field, index_type=index_type, metric_type=metric, params=params or {})
    if bm25:
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                        params={"bm25_k1": bm25["k1"], "bm25_b": bm25["b"]})
        if str(bm25.get("server", "")).startswith("milvus_lite"):
            _json_params(index, "sparse", {"bm25_k1": str(bm25["k1"]), "bm25_b": str(bm25["b"])})
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong",
                             timeout=CALL_TIMEOUT)
    _ensure_loaded(client, name)


def _json_params(index_params, field: str, params: dict) -> None:
    """milvus-lite 3.2 reads index build parameters only from one JSON `params` entry, which pymilvus 3
    no longer sends (it sends each parameter as an entry of its own, which is what Milvus reads); without
    it BM25's k1 silently stays at 1.5. Adds that entry to `field`'s index."""
    for param in index_params:
        if getattr(param, "field_name", None) == field and isinstance(getattr(param, "_configs", None), dict):
            param._configs["params"] = params


def _ensure_loaded(client, name: str) -> None:
    state = client.get_load_state(name, timeout=CALL_TIMEOUT)
    if "Loaded" not in str(state.get("state") if isinstance(state, dict) else state):
        client.load_collection(name, timeout=LONG_TIMEOUT)


def _field_names(client, name: str) -> dict[str, int | None]:
    """A collection's fields: name → dimension (vector fields) or None."""
    out = {}
    for field in client.describe_collection(name, timeout=CALL_TIMEOUT).get("fields", []):
        dim = field.get("params", {}).get("dim")
        out[field.get("name")] = int(dim) if dim is not None else None
    return out


def _insert(client, name: str, rows: list[dict], batch: int = INSERT_BATCH) -> list[int]:
    keys: list[int] = []
    for start in range(0, len(rows), batch):
        result = client.insert(name, rows[start:start + batch], timeout=CALL_TIMEOUT)
        keys.extend(result["ids"])
    return keys


def _xl_encode(xl: PassageVectors) -> str:
    """A document's sentence table as text: the .npz the folder index writes (PassageVectors.to_bytes), base64."""
    return base64.b64encode(xl.to_bytes()).decode("ascii")


def _xl_decode(text: str) -> PassageVectors:
    """What _xl_encode wrote, vectors back in float32; a ValueError when damaged."""
    try:
        return PassageVectors.from_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _query_pages(client, name: str, expr: str, fields: list[str], page: int = MAX_QUERY_ROWS // 4) -> Iterator[list[dict]]:
    """Every row matching `expr`, a page at a time, paged by primary key (Milvus returns the smallest keys
    first) so no single answer is too large."""
    last = None
    fields = list(dict.fromkeys(["pk", *fields]))
    while True:
        page_expr = expr if last is None else f"({expr}) and pk > {last}"
        rows = client.query(name, filter=page_expr, output_fields=fields, limit=page,
                            consistency_level="Strong", timeout=CALL_TIMEOUT)
        if rows:
            yield rows
        if len(rows) < page:
            return
        last = max(r["pk"] for r in rows)


def _query_all(client, name: str, expr: str, fields: list[str]) -> list[dict]:
    return [row for rows in _query_pages(client, name, expr, fields) for row in rows]


def _pieces(text: str) -> list[str]:
    return [text[i:i + TEXT_PIECE] for i in range(0, len(text), TEXT_PIECE)] or [""]


def _read_pointer(client, target: Target) -> tuple[int, dict] | None:
    """The live generation and its pointer body (the highest pointer row), or None."""
    name = f"{target.collection}_meta"
    _ensure_loaded(client, name)
    rows = client.query(name, filter='kind == "pointer"', output_fields=["gen", "body"],
                        consistency_level="Strong", timeout=CALL_TIMEOUT)
    if not rows:
        return None
    best = max(rows, key=lambda r: r["gen"])
    return int(best["gen"]), json.loads(best["body"])


def _read_state(client, target: Target, gen: int, pointer: dict) -> dict:
    """The state written for generation `gen`, plus whether its clean-up finished."""
    rows = client.query(f"{target.collection}_meta", filter=f"gen == {gen}", output_fields=["kind", "part", "body"],
                        consistency_level="Strong", timeout=CALL_TIMEOUT)
    parts = sorted((r for r in rows if r["kind"] == "state"), key=lambda r: r["part"])
    if len(parts) != pointer.get("parts") or [r["part"] for r in parts] != list(range(len(parts))):
        raise StoreError(f"{target.display}: the manifest of generation {gen} is incomplete")
    try:
        state = json.loads("".join(r["body"] for r in parts))
    except ValueError as exc:
        raise StoreError(f"{target.display}: the manifest of generation {gen} is damaged ({exc})") from None
    version = state.get("format")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(f"{target.display}: index format version {version!r} is newer than this tool "
                         f"understands ({FORMAT_VERSION}); upgrade the tool")
    state["clean"] = any(r["kind"] == "clean" for r in rows)
    return state


def _manifest_from(data, target: Target) -> Manifest:
    try:
        return Manifest.from_json({**data, "documents": {}})
    except (TypeError, AttributeError) as exc:
        raise StoreError(f"{target.display}: the manifest is damaged ({exc})") from None


def _chunk_from_json(text: str) -> Chunk:
    data = json.loads(text)
    data["section_path"] = tuple(data.get("section_path", ()))
    return Chunk(**data)
