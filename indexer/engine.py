"""The one object the command line and the page use: read → chunk → embed → store → search."""
from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Union

import numpy as np

from .chunking import Chunk, ChunkSettings, chunk_document, is_heading
from .crosslingual import USE_DIM, USE_NAME, PassageVectors, Translator, USEEncoder, is_cross_lingual
from .embedding import Encoder
from . import filters
from .errors import ModelError, QueryError, StoreError
from .keyword import Analyzer, Segmenter, phrase_is_term, phrase_terms, with_synonyms
from .querytext import ParsedQuery, holds, parse_query
from .search import (MODES, DenseRoute, FusionSettings, KeywordRoute, QueryPlan, Scored, UseRoute, best_sentence,
                     group_documents, retrieve)
from .reading import Document, ReadError, iter_documents, plan_files, tagged
from .store import store_class
from .store.base import DocRecord, Manifest, now
from .store.faiss_store import choose_index_type

Progress = Union[bool, Callable[[float], None]]  # a console bar, or a callback given the fraction done
DEFAULT_INDEX = Path("indexes/default")
DEFAULT_MODE = "hybrid"  # measured better than dense and bm25 alone (README)
GROUPS = ("passages", "documents")
DOC_POOL = 10  # grouped by documents: the best k × 10 passages are grouped into k documents
MAX_QUERY_CHARS = 2000  # the model reads ~512 tokens; longer questions are cut here, visibly


@dataclass(frozen=True)
class Hit:
    """One ranked passage."""

    rank: int
    score: float
    chunk_id: str
    doc_id: str
    title: str
    section: str
    text: str
    start: int
    end: int
    paragraph: int
    position: int
    sentence_start: int | None = None  # the answering sentence, offsets in the document like start/end
    sentence_end: int | None = None
    why: dict = field(default_factory=dict)  # `explain`: each route's score and part of `score`, terms matched

    @property
    def sentence(self) -> str:
        """The answering sentence ("" when none was chosen)."""
        if self.sentence_start is None:
            return ""
        return self.text[self.sentence_start - self.start:self.sentence_end - self.start]

    def to_json(self) -> dict:
        data = asdict(self)
        start, end = data.pop("sentence_start"), data.pop("sentence_end")
        data["sentence"] = None if start is None else {"start": start, "end": end, "text": self.sentence}
        return data


def explain(result: Scored, text: str, terms: list[str]) -> dict:
    """Why a hit ranks where it does: per route its own score (dense: cosine; bm25: BM25; use: USE
    score) and its part of the fused score (the parts sum to the hit's score), and the question's
    keyword terms the passage holds."""
    lowered = text.lower()
    return {"routes": {name: {"score": round(result.raw.get(name, 0.0), 6), "part": round(part, 6)}
                       for name, part in result.parts.items()},
            "matched": [t for t in dict.fromkeys(terms) if t and t.lower() in lowered]}


@dataclass(frozen=True)
class DocHit:
    """One ranked document (`group="documents"`): its score and its best passages."""

    rank: int
    score: float
    doc_id: str
    title: str
    hits: list[Hit]  # its best passages, best first (their rank is within the document)

    def to_json(self) -> dict:
        return {"rank": self.rank, "score": self.score, "doc_id": self.doc_id, "title": self.title,
                "passages": [h.to_json() for h in self.hits]}


@dataclass(frozen=True)
class Result:
    """One question's answer: its ranked hits (or documents) and how it was searched."""

    query: str
    hits: list[Hit]  # ranked passages; grouped by documents: each document's passages in document order
    terms: list[str]  # the keyword terms searched (a cross-lingual question: its Chinese translations)
    cross_lingual: bool = False  # the question took the cross-lingual route (no CJK, some Latin)
    translations: list[tuple[str, list[str]]] = field(default_factory=list)  # English part → terms kept
    generation: str | None = None  # the committed index generation that answered
    documents: list[DocHit] | None = None  # set when the results are grouped by documents

    def to_json(self) -> dict:
        out = {"query": self.query, "generation": self.generation, "cross_lingual": self.cross_lingual,
               "terms": self.terms, "translations": [{"english": e, "terms": t} for e, t in self.translations]}
        if self.documents is not None:
            return {**out, "group": "documents", "documents": [d.to_json() for d in self.documents]}
        return {**out, "hits": [h.to_json() for h in self.hits]}


@dataclass(frozen=True)
class DocReport:
    """What an update did to one document (or to a file that could not be read)."""

    doc_id: str
    status: str  # added | replaced | unchanged | removed | failed
    chunks: int
    encoding: str | None = None
    error: str | None = None  # why a file failed: one line naming it


COMMIT_CHARS = 2_000_000  # `add` commits every ~2M characters read (~90 s of encoding here): Ctrl-C keeps those
VOLATILE_META = frozenset({"modified"})  # a file touched but unchanged is not re-written


def _changed(record: DocRecord, doc: Document) -> bool:
    """A document differs from its saved record in text or in what it carries (tags, title…)."""
    def kept(meta: dict) -> dict:
        return {k: v for k, v in meta.items() if k not in VOLATILE_META}
    return record.content_hash != doc.content_hash or record.title != doc.title or kept(record.meta) != kept(doc.meta)


class _FileProgress:
    """One progress bar over the files and bytes of an update: a console bar (tqdm) or a callback
    given the fraction of bytes done; a document batch being encoded moves it within its bytes."""

    def __init__(self, progress: Progress, files: int, total: int) -> None:
        self.files, self.total, self.done, self.read = files, max(total, 1), 0, 0
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, desc="adding", leave=True,
                            postfix=f"0/{files} files", file=sys.stderr)

    def file_read(self) -> None:
        self.read += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.read}/{self.files} files", refresh=False)

    def at(self, nbytes: float) -> None:
        """Report `nbytes` of the whole done."""
        nbytes = min(nbytes, self.total)
        if self.bar is not None:
            self.bar.update(max(0, round(nbytes) - self.bar.n))
        if self.callback is not None:
            self.callback(nbytes / self.total)

    def within(self, nbytes: int) -> Callable[[float], None]:
        """A callback for encoding the next `nbytes`: the bar moves across them as it goes."""
        start = self.done
        self.done += nbytes
        return lambda fraction: self.at(start + fraction * nbytes)

    def close(self) -> None:
        self.at(self.done)
        if self.bar is not None:
            self.bar.close()


@dataclass
class IndexSettings:
    """How documents become vectors; stored in the manifest of an index built with them."""

    chunking: ChunkSettings = field(default_factory=ChunkSettings)
    index_type: str = "auto"
    user_terms: tuple[str, ...] = ()  # words the keyword segmenter keeps whole
    crosslingual: bool = True  # keep the USE index for English questions (costs build time; README)
    sentence_vectors: bool = False  # also an e5 vector per sentence: better ranking, ~2x the encoding (README)
    synonyms: tuple[tuple[str, ...], ...] = ()  # groups of words a question's keyword search treats as one
    analyzer: Analyzer = field(default_factory=Analyzer)  # how text becomes keyword terms (indexer.keyword)
    vectors: str = ""  # a Milvus location to keep a new index's vectors in (indexer.store.milvus_vectors); "": FAISS

    def keyword(self) -> dict:
        """The keyword settings as the manifest keeps them."""
        return {"user_terms": list(self.user_terms), "analyzer": self.analyzer.to_json(),
                **({"synonyms": [list(g) for g in self.synonyms]} if self.synonyms else {})}


USE_COST, SENTENCE_COST = 0.9, 2.0  # encoding time of the USE table and of e5 sentence vectors, per unit of e5 passages


def _stages(**costs: float) -> dict[str, tuple[float, float]]:
    """Each stage's [start, end) share of a build's progress, in proportion to its cost."""
    total = sum(costs.values()) or 1.0
    out, at = {}, 0.0
    for name, cost in costs.items():
        out[name] = (at / total, (at + cost) / total)
        at += cost
    return out


def _part(progress: Progress, lo: float, hi: float) -> Progress:
    """A progress callback for one stage that reports into [lo, hi] of the whole; a bool stays as is."""
    if not callable(progress):
        return progress
    return lambda fraction: progress(lo + (hi - lo) * fraction)


@functools.lru_cache(maxsize=8)
def _segmenter(user_terms: tuple[str, ...], synonyms: tuple[tuple[str, ...], ...], analyzer: Analyzer) -> Segmenter:
    """One segmenter per keyword settings: loading jieba's dictionary takes a second."""
    return Segmenter.of(IndexSettings(user_terms=user_terms, synonyms=synonyms, analyzer=analyzer).keyword())


def passage_text(chunk: Chunk, min_chars: int = ChunkSettings.min_chars) -> str:
    """What is embedded for a chunk: its body, without the heading and short lines attached in front.

    Measured on tests/data/speech_qa_*.jsonl: embedding the body alone beats the whole chunk
    (Chinese Hit@3 0.79 → 0.89, English 0.66 → 0.74). A heading shared by a section, or a short
    salutation, pulls every chunk that carries it toward generic questions.
    """
    lines = chunk.text.split("\n")
    while len(lines) > 1 and (is_heading(lines[0]) or len(lines[0].strip()) < min_chars):
        lines = lines[1:]
    return "\n".join(lines)


def clean_query(query: str) -> str:
    """Strip control characters and outer space; refuse a question with nothing in it."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(query)).strip()
    if not text:
        raise QueryError("the question is empty")
    return text[:MAX_QUERY_CHARS]


class _StoreView:
    """What queries keep of one loaded store: the translator over its vocabulary (made on the first
    cross-lingual question) and chunk texts folded to the index's script (made as hits need them)."""

    def __init__(self, store) -> None:
        self.store = store
        self._folded: dict[int, str] = {}

    @functools.cached_property
    def translator(self) -> Translator:
        return Translator(self.store.vocabulary())

    def scope(self, parsed: ParsedQuery, allowed: np.ndarray | None,
              segmenter: Segmenter) -> tuple[np.ndarray | None, frozenset[int]]:
        """(scope, excluded) of a question, comparing in the index's script (the segmenter's fold:
        a Simplified phrase finds its Traditional text). With phrases, the scope is the rows (of the
        allowed ones; None: every live row) that hold them and none of its exclusions, ascending;
        with exclusions alone, the scope is None and `excluded` the rows that hold an excluded word,
        so the routes search as usual and drop those. Posting lists answer first: a two-character
        phrase or word is held exactly by the rows indexed under it (`phrase_is_term`), and a longer
        phrase only by rows indexed under all its bigrams (`phrase_terms`), so the texts read are
        those of the candidates for what the lists cannot decide, never the index's."""
        if not parsed.constrained:
            return None, frozenset()
        fold, analyzer = segmenter.fold, segmenter.analyzer
        phrases, excluded = tuple(map(fold, parsed.phrases)), tuple(map(fold, parsed.excluded))
        rows = self.store.live_rows() if allowed is None else allowed
        held = {x: self._holding(rows, (x,), analyzer) for x in excluded}
        decided = {x: told and phrase_is_term(x, analyzer) for x, (_, told) in held.items()}  # the list alone tells
        known = [held[x][0] for x in excluded if decided[x]]
        unsure_out = tuple(x for x in excluded if not decided[x])
        if phrases:
            suspects, told = self._holding(rows, phrases, analyzer)
            for gone in known:
                suspects = np.setdiff1d(suspects, gone, assume_unique=True)
            unsure = ParsedQuery(parsed.text, tuple(p for p in phrases if not (told and phrase_is_term(p, analyzer))),
                                 unsure_out)
            failed = np.fromiter(self._failing(suspects, unsure, fold), np.int64)
            return np.setdiff1d(suspects, failed, assume_unique=True), frozenset()
        suspects = np.unique(np.concatenate([held[x][0] for x in unsure_out] or [np.zeros(0, np.int64)]))
        gone = frozenset(np.concatenate(known).tolist()) if known else frozenset()
        return None, gone | self._failing(suspects, ParsedQuery(parsed.text, (), unsure_out), fold)

    def _failing(self, rows: np.ndarray, wanted: ParsedQuery, fold: Callable[[str], str]) -> frozenset[int]:
        """Those of `rows` whose text does not hold `wanted` (its phrases, none of its exclusions):
        their texts are read, unless there is nothing to check."""
        if not wanted.constrained or not len(rows):
            return frozenset()
        return frozenset(row for row, c in zip(rows.tolist(), self.store.chunks(rows.tolist()))
                         if not holds(self.folded(row, c.text, fold), wanted))

    def _holding(self, rows: np.ndarray, phrases: tuple[str, ...], analyzer: Analyzer) -> tuple[np.ndarray, bool]:
        """Those of `rows` indexed under every term that all holders of these phrases have, and
        whether the posting lists told (False: all `rows`, as there is no such term or the store
        cannot tell)."""
        must = [t for p in phrases for t in phrase_terms(p, analyzer)]
        held = self.store.rows_with_terms(must) if must else None
        return (rows, False) if held is None else (np.intersect1d(rows, held, assume_unique=True), True)

    def folded(self, row: int, original: str, fold: Callable[[str], str]) -> str:
        """Row `row`'s text in the index's script, folded once per loaded store. OpenCC's t2s
        maps character for character; were a length to change, the original text stands."""
        text = self._folded.get(row)
        if text is None:
            text = fold(original)
            self._folded[row] = text = text if len(text) == len(original) else original
        return text


class Engine:
    """An index folder plus the encoder that fills and searches it.

    `Engine(path)` opens the index there if there is one (else `build`/`add` create it). The
    encoder is loaded on first need and reused for every later call.
    """

    def __init__(self, index: str | Path = DEFAULT_INDEX, encoder: Encoder | None = None,
                 settings: IndexSettings | None = None, model: str | None = None) -> None:
        self.location = str(index)
        self.path = Path(index)
        self._store_cls = store_class(self.location)
        self.shown = self._store_cls.display(self.location)  # no token or password
        self.settings = settings or IndexSettings()
        self._encoder = encoder
        self._model = model
        self._store = None
        self._lock = threading.RLock()  # one Engine may serve many threads (the page's sessions)
        self._xl_encoder: USEEncoder | None = None
        self._view: _StoreView | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.fusion = FusionSettings()
        self.reused = 0  # chunks the last update took over from the old version instead of embedding

    # ---------------------------------------------------------------- parts

    @property
    def encoder(self) -> Encoder:
        """The e5 encoder, made on first need; a search loads only its question side."""
        return self._encoder_with(0)

    def _encoder_with(self, side: int) -> Encoder:
        """The encoder, made (if not yet) with `side` (0 questions, 1 documents) loaded first: a
        build or an add never loads the question side (4 s and 0.5 GB of ONNX it would not use)."""
        if self._encoder is None:
            self._encoder = Encoder(self._model, first=side)
        return self._encoder

    @property
    def xl_encoder(self) -> USEEncoder:
        """The cross-lingual (USE) encoder, loaded on first need."""
        if self._xl_encoder is None:
            self._xl_encoder = USEEncoder()
        return self._xl_encoder

    def _encoding_pool(self) -> ThreadPoolExecutor:
        """Threads that encode questions with e5 while the calling thread does the rest of the
        question's work (keywords, translation, the USE vector): onnxruntime and numpy release the
        GIL, so the two overlap on two cores."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="indexer-encode")
            return self._pool

    @property
    def segmenter(self) -> Segmenter:
        """The keyword segmenter of the index's keyword settings (user terms, synonyms, analyzer)."""
        return _segmenter(self.settings.user_terms, self.settings.synonyms, self.settings.analyzer)

    @property
    def store(self):
        """The loaded index; reloaded when another process has switched in a newer generation."""
        with self._lock:
            if self._store is None or not self._store.is_current():
                self._store = self._store_cls.load(self.location) if self._store is None else self._store.reopened()
                self._adopt_settings(self._store.manifest)
            return self._store

    def exists(self) -> bool:
        return self._store_cls.exists(self.location)

    def check_model(self, manifest: Manifest) -> None:
        """Refuse to mix vectors of two models in one index."""
        enc = self.encoder
        if manifest.model != enc.name or manifest.dim != enc.dim:
            raise ModelError(f"index {self.shown} was built with model {manifest.model} (dim {manifest.dim}), "
                             f"not {enc.name} (dim {enc.dim}); use that model or rebuild the index")

    def _table_settings(self) -> dict:
        """The manifest's record of the sentence table: USE vectors, and e5 sentence vectors if asked."""
        if self.settings.sentence_vectors and not self.settings.crosslingual:
            raise StoreError("sentence vectors are kept in the cross-lingual sentence table: "
                             "they cannot go with --no-crosslingual")
        if not self.settings.crosslingual:
            return {}
        return {"encoder": USE_NAME, "dim": USE_DIM, **({"e5_sentences": True} if self.settings.sentence_vectors else {})}

    def _new_store(self, vectors: str | None = None):
        """An empty store with these settings (its vectors at `vectors`, else as the settings say)."""
        choose_index_type(self.settings.index_type, 0)  # validate early
        manifest = Manifest(model=self.encoder.name, dim=self.encoder.dim,
                            chunking=asdict(self.settings.chunking), index_type=self.settings.index_type,
                            keyword=self.settings.keyword(),
                            crosslingual=self._table_settings())
        return self._store_cls(self.location, manifest, vectors=vectors or self.settings.vectors or None)

    # ---------------------------------------------------------------- writes

    def build(self, paths: Iterable[str | Path], *, progress: Progress = False, tags: Iterable[str] = (),
              ocr: bool = True) -> list[DocReport]:
        """Index exactly the documents of these files and folders, from scratch; the old index stays
        until the new one is committed. A file that cannot be read is reported (status failed) and
        left out. Documents are read, embedded and written in batches of COMMIT_CHARS characters,
        so memory does not grow with the corpus; where there was no index yet, each batch is
        committed as it is done, so an interrupted build keeps them and `add` of the same paths
        picks up the rest."""
        files = plan_files(paths)
        bar = _FileProgress(progress, len(files), sum(f.size for f in files))
        reports: list[DocReport] = []
        failed: list[DocReport] = []
        self._encoder_with(1)
        try:
            with self._lock, self._store_cls.lock(self.location):
                store, fresh = self._new_store(), not self.exists()
                try:
                    for docs, part in self._batches(files, bar, failed, tags=tags, ocr=ocr):
                        reports += self._upsert_all(store, docs, part)
                        store.save() if fresh else store.flush()
                    if not reports:
                        raise ReadError(failed[0].error if len(failed) == 1 else
                                        f"none of the {len(failed)} files could be read")
                    if not fresh:
                        store.save()
                except BaseException:
                    store.rollback()
                    raise
                self._store = store
        finally:
            bar.close()
        return reports + failed

    def _batches(self, files: list, bar: "_FileProgress", failed: list[DocReport], *, skip_bad_lines: bool = False,
                 tags: Iterable[str] = (), ocr: bool = True) -> Iterator[tuple[list[Document], Progress]]:
        """The documents of these files in batches of about COMMIT_CHARS characters, each with the
        progress callback of its bytes; a file that cannot be read goes to `failed`."""
        batch: list[Document] = []
        chars = nbytes = 0
        last = None
        for src, got in iter_documents(files, skip_bad_lines=skip_bad_lines, ocr=ocr):
            if src.path != last:  # a large JSON Lines file comes in several parts
                bar.file_read()
                last = src.path
            nbytes += src.size
            if isinstance(got, ReadError):
                failed.append(DocReport(src.doc_id, "failed", 0, error=str(got)))
                continue
            batch += [tagged(d, tags) for d in got]
            chars += sum(len(d.text) for d in got)
            if chars >= COMMIT_CHARS:
                yield batch, bar.within(nbytes)
                batch, chars, nbytes = [], 0, 0
        if batch:
            yield batch, bar.within(nbytes)
        bar.done = bar.total

    def rebuild(self, *, progress: Progress = False) -> list[DocReport]:
        """Re-chunk and re-embed every indexed document from its stored text (e.g. after a model
        change), in batches of about COMMIT_CHARS characters written as they are done (bounded
        memory), all in one commit: the old index answers until it lands."""
        self._encoder_with(1)
        with self._lock, self._store_cls.lock(self.location):
            old = self._store_cls.load(self.location)
            records = old.manifest.documents.values()
            total = max(1, sum(d.chars for d in records))
            store = self._new_store(old.manifest.vectors.get("milvus"))  # the vectors stay where they were
            reports: list[DocReport] = []
            batch: list[Document] = []
            done = chars = 0
            try:
                for n, d in enumerate(records, 1):
                    batch.append(Document(d.doc_id, old.document_text(d.doc_id), d.title, d.source, d.encoding, d.meta))
                    chars += d.chars
                    if chars >= COMMIT_CHARS or n == len(records):
                        reports += self._upsert_all(store, batch, _part(progress, done / total, (done + chars) / total))
                        store.flush()
                        batch, done, chars = [], done + chars, 0
                store.save()
            except BaseException:
                store.rollback()
                raise
            self._store = store
        return reports

    def add(self, paths: Iterable[str | Path], *, progress: Progress = False, skip_bad_lines: bool = False,
            tags: Iterable[str] = (), ocr: bool = True) -> list[DocReport]:
        """Add or replace the documents of these files and folders; an unchanged one is left as it is.

        Files are read one by one and committed every COMMIT_CHARS characters, so an interrupted
        add of a large folder keeps what was committed, and running it again skips those (their
        content hashes match) and picks up the rest. A file that cannot be read is reported
        (status failed, one line naming it) and does not stop the others. One progress bar runs over
        the files and their bytes.
        """
        files = plan_files(paths)
        bar = _FileProgress(progress, len(files), sum(f.size for f in files))
        reports: list[DocReport] = []
        try:
            for docs, part in self._batches(files, bar, reports, skip_bad_lines=skip_bad_lines, tags=tags, ocr=ocr):
                reports += self.add_documents(docs, progress=part)
        finally:
            bar.close()
        return reports

    def add_documents(self, docs: list[Document], *, progress: Progress = False) -> list[DocReport]:
        """Add already-read documents (the page's uploads and pasted text come this way)."""
        if not docs:
            return []
        self._encoder_with(1)
        with self._lock, self._store_cls.lock(self.location):
            store = self._store_cls.load(self.location) if self.exists() else self._new_store()
            self.check_model(store.manifest)
            self._adopt_settings(store.manifest)
            reports = self._upsert_all(store, docs, progress)
            if any(r.status != "unchanged" for r in reports):
                store.save()
            self._store = store
        return reports

    def remove(self, doc_ids: list[str]) -> list[DocReport]:
        """Remove documents by id; an unknown id is an error and nothing is removed."""
        with self._lock, self._store_cls.lock(self.location):
            store = self._store_cls.load(self.location)
            unknown = [d for d in doc_ids if d not in store.manifest.documents]
            if unknown:
                raise StoreError(f"no document {unknown[0]!r} in {self.shown} (see `list`)")
            reports = [DocReport(d, "removed", store.manifest.documents[d].chunks) for d in doc_ids]
            store.delete(doc_ids)
            store.save()
            self._store = store
        return reports

    def optimize(self) -> tuple[int, int]:
        """Merge the index's segments into one, dropping deleted chunks: (segments before, after)."""
        with self._lock, self._store_cls.lock(self.location):
            store = self._store_cls.load(self.location)
            before = store.optimize()
            self._store = store
        return before, min(before, 1)

    def upgrade(self) -> str:
        """Convert an index of the previous format in place; what was done, in one line."""
        with self._lock, self._store_cls.lock(self.location):
            self._store = None
            return self._store_cls.upgrade(self.location)

    def _adopt_settings(self, manifest: Manifest) -> None:
        """Chunk new documents the way the index was built."""
        self.settings = IndexSettings(ChunkSettings(**manifest.chunking), manifest.index_type,
                                      tuple(manifest.keyword.get("user_terms", ())), bool(manifest.crosslingual),
                                      bool(manifest.crosslingual.get("e5_sentences")),
                                      tuple(tuple(g) for g in manifest.keyword.get("synonyms", ())),
                                      Analyzer.of(manifest.keyword))

    def _upsert_all(self, store, docs: list[Document], progress: Progress) -> list[DocReport]:
        """Chunk the new and changed documents, embed them in one pass, and put them in the store.

        A changed document keeps the vectors of its chunks whose text did not change: only new
        text is embedded (editing one paragraph of a long document embeds one chunk)."""
        known = store.manifest.documents
        todo = [d for d in docs if d.doc_id not in known or _changed(known[d.doc_id], d)]
        chunked = {d.doc_id: self.chunk(d) for d in todo}
        all_chunks = [c for d in todo for c in chunked[d.doc_id]]
        replaced = {d.doc_id for d in todo if d.doc_id in known}
        reuse = self._reusable(store, sorted(replaced))
        fresh = [i for i, c in enumerate(all_chunks) if c.text not in reuse]
        min_chars = self.settings.chunking.min_chars
        bodies = [passage_text(all_chunks[i], min_chars) for i in fresh]
        # keyword terms (jieba: one Python thread) are cut while the encoders, which release the GIL, run
        cutting = self._encoding_pool().submit(self.segmenter.terms_many, [c.text for c in all_chunks])
        table = store.manifest.crosslingual
        stages = _stages(e5=1.0, use=USE_COST if table else 0.0, sentences=SENTENCE_COST if table.get("e5_sentences") else 0.0)
        vectors = np.zeros((len(all_chunks), self.encoder.dim), np.float32)
        vectors[fresh] = self.encoder.encode_documents(bodies, progress=_part(progress, *stages["e5"]))
        xl = None
        if table:
            new_xl = self.xl_encoder.encode_passages([all_chunks[i].text for i in fresh], bodies,
                                                     progress=_part(progress, *stages["use"]))
            if table.get("e5_sentences"):
                texts = [all_chunks[fresh[o]].text[a:b] for o, (a, b) in zip(new_xl.owner, new_xl.spans)]
                dense = self.encoder.encode_documents(texts, progress=_part(progress, *stages["sentences"]))
                new_xl.dense = dense.astype(np.float16).astype(np.float32)  # kept in float16
            position = {i: n for n, i in enumerate(fresh)}
            xl = new_xl if len(fresh) == len(all_chunks) else PassageVectors.gather(
                [(new_xl, position[i]) if i in position else reuse[c.text][1] for i, c in enumerate(all_chunks)])
        for i, c in enumerate(all_chunks):
            if c.text in reuse:
                vectors[i] = reuse[c.text][0]
        terms = cutting.result()
        reports, offset = [], 0
        unchanged = {d.doc_id: known[d.doc_id].chunks for d in docs if d.doc_id not in chunked}
        if replaced:
            store.delete(sorted(replaced))  # all at once: one pass over the rows, not one per document
        for doc in docs:
            if doc.doc_id not in chunked:
                reports.append(DocReport(doc.doc_id, "unchanged", unchanged[doc.doc_id], doc.encoding))
                continue
            chunks = chunked[doc.doc_id]
            status = "replaced" if doc.doc_id in replaced else "added"
            record = DocRecord(doc.doc_id, doc.content_hash, doc.title, doc.source, doc.encoding,
                               len(chunks), now(), len(doc.text), dict(doc.meta))
            rows = slice(offset, offset + len(chunks))
            doc_xl = xl.rows(rows.start, rows.stop) if xl is not None else None
            store.upsert(record, chunks, vectors[rows], doc.text, terms[rows], doc_xl)
            offset += len(chunks)
            reports.append(DocReport(doc.doc_id, status, len(chunks), doc.encoding))
        self.reused = len(all_chunks) - len(fresh)
        return reports

    @staticmethod
    def _reusable(store, doc_ids: list[str]) -> dict[str, tuple[np.ndarray, tuple[PassageVectors, int] | None]]:
        """Chunk text → (its vector, (cross-lingual vectors, row)) for the saved chunks of these documents."""
        out: dict[str, tuple[np.ndarray, tuple[PassageVectors, int] | None]] = {}
        for doc_id in doc_ids:
            chunks, vectors, xl = store.document_vectors(doc_id)
            for row, (c, v) in enumerate(zip(chunks, vectors)):
                out.setdefault(c.text, (v, (xl, row) if xl is not None else None))
        return out

    def chunk(self, doc: Document) -> list[Chunk]:
        """Chunks of a document under this index's settings, measured in the model's tokens."""
        return chunk_document(doc, self.settings.chunking, self.encoder.count_tokens)

    # ---------------------------------------------------------------- reads

    def search(self, query: str, k: int = 5, docs: Iterable[str] | None = None,
               min_score: float | None = None, mode: str = DEFAULT_MODE,
               where: Iterable[str] | None = None) -> list[Hit]:
        """The k best passages for one question."""
        return self.query([query], k, docs, min_score, mode, where)[0].hits

    def batch(self, queries: list[str], k: int = 10, docs: Iterable[str] | None = None,
              min_score: float | None = None, mode: str = DEFAULT_MODE,
              where: Iterable[str] | None = None) -> list[list[Hit]]:
        """Ranked passages for many questions, encoded together."""
        return [r.hits for r in self.query(queries, k, docs, min_score, mode, where)]

    def query(self, queries: list[str], k: int = 10, docs: Iterable[str] | None = None,
              min_score: float | None = None, mode: str = DEFAULT_MODE,
              where: Iterable[str] | None = None, group: str = "passages",
              fusion: FusionSettings | None = None, sentences: bool = True) -> list[Result]:
        """Each question's ranked passages, with the terms it was searched with and each hit's
        answering sentence. Questions are encoded together.

        mode: dense (embeddings), bm25 (keywords) or hybrid (both, fused: indexer.search).
        A question with no CJK character and some Latin letters is cross-lingual: where the index
        keeps the USE vectors it also takes the USE route, and its English words are translated
        into the corpus's Chinese terms for BM25 (`fusion`, default `self.fusion`, switches either off).
        `docs` (ids) and `where` (filters on the documents' metadata, indexer.filters) limit the
        search to the documents they allow, inside every route; a question's quoted phrases and
        `-word` exclusions (indexer.querytext) limit it to the passages that hold them.
        group="documents" ranks documents by their passages' evidence (search.group_documents),
        each with its best passages; k then counts documents and min_score applies to them.
        sentences=False leaves out the answering sentences (what `eval` needs no sentence for).
        """
        if k is None or k < 1:
            raise QueryError(f"k must be at least 1 (got {k})")
        if mode not in MODES:
            raise QueryError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if group not in GROUPS:
            raise QueryError(f"unknown grouping {group!r}; choose one of {', '.join(GROUPS)}")
        texts = [clean_query(q) for q in queries]
        conditions = filters.parse(where)
        fusion = fusion or self.fusion
        with self._lock:
            store = self.store
            if self._view is None or self._view.store is not store:
                self._view = _StoreView(store)
            view = self._view
        self.check_model(store.manifest)
        allowed = self._doc_filter(store, docs, conditions)
        rows = store.live_rows() if allowed is None else store.rows_of(allowed)
        parsed = [parse_query(t) for t in texts]
        asked = [p.text for p in parsed]  # what the routes read: no quotes, no exclusions
        encoding = self._encoding_pool().submit(self.encoder.encode_queries, asked) if mode != "bm25" else None
        plans, translations, use_vecs = self._plans(asked, view, fusion)  # meanwhile: keywords, USE vectors
        fold = self.segmenter.fold
        scopes = [view.scope(p, rows, self.segmenter) for p in parsed]
        plans = [replace(plan, terms=plan.terms + [t for t in (fold(x).lower() for x in p.phrases) if t not in plan.terms],
                         scope=scope, excluded=excluded)  # repeats count in BM25
                 for plan, p, (scope, excluded) in zip(plans, parsed, scopes)]
        if encoding is not None:
            plans = [replace(p, vector=v) for p, v in zip(plans, encoding.result())]
        share = fusion.sentence_share if store.manifest.crosslingual.get("e5_sentences") else 0.0
        routes = {"dense": DenseRoute(store, allowed, share), "use": UseRoute(store, rows),
                  "bm25": KeywordRoute(store, allowed)}
        by_doc = group == "documents"
        ranked = retrieve(routes, plans, max(k * DOC_POOL, fusion.candidates) if by_doc else k, mode, fusion,
                          store.tie_keys)
        out = []
        for i, (text, plan) in enumerate(zip(texts, plans)):
            use_vector = None if use_vecs is None else use_vecs[i]
            if not by_doc:
                hits = self._hits(store, view, ranked[i], min_score, plan.terms, use_vector, sentences)
                out.append(Result(text, hits, plan.terms, plan.cross_lingual, translations[i], store.generation))
                continue
            found_rows = [r.row for r in ranked[i]]
            grouped = group_documents(ranked[i], dict(zip(found_rows, store.doc_ids(found_rows))), k,
                                      fusion.doc_weights)
            found = [DocHit(n, round(d.score, 6), d.doc_id, store.manifest.documents[d.doc_id].title,
                            self._hits(store, view, d.chunks, None, plan.terms, use_vector, sentences))
                     for n, d in enumerate((d for d in grouped if min_score is None or d.score >= min_score), 1)]
            out.append(Result(text, [h for d in found for h in d.hits], plan.terms, plan.cross_lingual,
                              translations[i], store.generation, found))
        return out

    def _plans(self, texts: list[str], view: "_StoreView",
               fusion: FusionSettings) -> tuple[list[QueryPlan], list, np.ndarray | None]:
        """Per question: its keyword terms (translated for a cross-lingual question), its language,
        and its USE vector where the USE route runs; the translations; every question's USE
        vector (which also picks the answering sentences), None when the index keeps no USE vectors."""
        cross = [is_cross_lingual(t) for t in texts]
        terms = self.segmenter.terms_many(texts)
        translations: list[list[tuple[str, list[str]]]] = [[] for _ in texts]
        for i, text in enumerate(texts):
            if cross[i] and fusion.translate:
                translations[i] = view.translator.explain(text)
                terms[i] = list(dict.fromkeys(t for _, part in translations[i] for t in part)) or terms[i]
            terms[i] = with_synonyms(terms[i], self.settings.synonyms)
        use_vecs = self.xl_encoder.encode_queries(texts) if view.store.manifest.crosslingual else None
        plans = [QueryPlan(terms[i], cross[i],
                           use_vecs[i] if use_vecs is not None and cross[i] and fusion.use_route else None)
                 for i in range(len(texts))]
        return plans, translations, use_vecs

    @staticmethod
    def _doc_filter(store, docs: Iterable[str] | None, conditions: list[filters.Condition]) -> set[str] | None:
        """The documents a question may search (None: all): the ids given, that meet every filter."""
        records = store.manifest.documents
        wanted = None if docs is None else set(docs)
        unknown = sorted(d for d in wanted or () if d not in records)
        if unknown:
            raise QueryError(f"no document {unknown[0]!r} in the index")
        if conditions:
            met = filters.matching(records.values(), conditions)
            wanted = met if wanted is None else wanted & met
        return wanted

    def _hits(self, store, view: "_StoreView", ranked: list[Scored], min_score: float | None, terms: list[str],
              use_vector: np.ndarray | None, sentences: bool = True) -> list[Hit]:
        """Fused results as hits: each chunk with its answering sentence and why it ranks there
        (terms are matched in the text folded to the index's script; offsets are the original's).
        The chunks' records are read here, for these rows only."""
        docs, table = store.manifest.documents, bool(store.manifest.crosslingual)
        ranked = [r for r in ranked if min_score is None or r.score >= min_score]
        out = []
        for r, c in zip(ranked, store.chunks([r.row for r in ranked])):
            folded = view.folded(r.row, c.text, self.segmenter.fold)
            if not sentences:
                span = None
            elif table:
                spans, vectors, _ = store.sentences(r.row)
                span = best_sentence(folded, terms, spans, vectors, use_vector)
            else:
                span = best_sentence(folded, terms)
            s_start, s_end = (c.start + span[0], c.start + span[1]) if span else (None, None)
            out.append(Hit(len(out) + 1, round(r.score, 6), c.chunk_id, c.doc_id, docs[c.doc_id].title, c.section,
                           c.text, c.start, c.end, c.paragraph, c.position, s_start, s_end, explain(r, folded, terms)))
        return out

    def context(self, hit: Hit, before: int = 1, after: int = 1) -> list[Chunk]:
        """The chunks around a hit in its document, the hit's own included, in reading order."""
        chunks = self.store.chunks_of(hit.doc_id)
        i = next((n for n, c in enumerate(chunks) if c.chunk_id == hit.chunk_id), 0)
        return chunks[max(0, i - before): i + after + 1]

    def documents(self) -> list[DocRecord]:
        return list(self.store.manifest.documents.values())

    def info(self, recall: bool = False) -> dict:
        """What the index holds and how it was made; with `recall`, also the vector index's
        recall@10 against exact search (None where it is exact), which costs 200 exact searches:
        seconds at 1M chunks, so the page and /info (polled for the generation) leave it out."""
        store = self.store
        m = store.manifest
        return {
            "index": self.shown, "generation": store.generation, "format_version": m.format_version,
            "model": m.model, "dim": m.dim, "documents": len(m.documents), "chunks": len(store),
            "index_type": store.index_kind, "index_type_setting": m.index_type, "chunking": m.chunking,
            "created": m.created, "updated": m.updated,
            "keyword_backend": store.keyword_backend,
            "analyzer": Analyzer.of(m.keyword).to_json(),
            "crosslingual": (f"{m.crosslingual.get('encoder')} ({m.crosslingual.get('dim')}-d, passages and "
                             f"{store.sentence_count()} sentences)") if m.crosslingual else "off",
            "sentence_vectors": bool(m.crosslingual.get("e5_sentences")),
            **({"recall@10_vs_exact": store.recall_vs_exact()} if recall else {}),
        }

    def check(self) -> list[str]:
        """Problems found in the index on disk (an empty list: it is consistent)."""
        store = self._store_cls.load(self.location)
        return store.problems()
