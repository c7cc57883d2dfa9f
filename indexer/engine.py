"""The one object the command line, the page and the API use: an index folder, the models that fill
and search it, a Searcher that answers questions over its last commit and an Indexer that writes
to it (indexer.searching, indexer.indexing). Readers never wait for the writer: a question takes
the last committed snapshot, and a write publishes its own when it commits.

The shells take from here the engine, its options, results and errors (indexer.results,
indexer.errors), and nothing of the layers below it. `Engine.scoped(where)` is the engine as a
reader bound to filters sees it (indexer.access): its questions, document list, counts, texts and
translations hold nothing of the documents outside them.
"""
from __future__ import annotations

import copy
import mimetypes
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from .chunking import Chunk
from .embedding import Encoder
from .indexing import Indexer, Progress
from .models import Models, shared
from .reading import SUPPORTED_SUFFIXES, Document, read_uploads
from .decoding import normalise_newlines
from . import filters
from .errors import Gone, IndexerError, NotFound, ReadError
from .results import DEFAULT_MODE, GROUPS, DocHit, DocReport, Hit, Original, Result, SearchOptions
from .search import MODES, FusionSettings
from .searching import Searcher
from .settings import IndexSettings
from .syncing import SyncPlan, is_line
from .store import Snapshot, check_location, exists
from .store.base import DocRecord
from .store.originals import original_path, usage

DEFAULT_INDEX = Path("indexes/default")
UPLOAD_SUFFIXES = SUPPORTED_SUFFIXES  # the file types an upload may have

__all__ = ["DEFAULT_INDEX", "DEFAULT_MODE", "GROUPS", "MODES", "UPLOAD_SUFFIXES", "DocHit", "DocRecord", "DocReport",
           "Engine", "Hit", "IndexSettings", "Result", "SearchOptions", "SyncPlan"]


class Engine:
    """An index folder plus the models that fill and search it.

    `Engine(path)` opens the index there if there is one (else `build`/`add` create it); the models
    are loaded on first need and shared by every later call, from any thread. `scope` is empty but
    in the read-only views `scoped` makes."""

    scope: tuple[str, ...] = ()

    def __init__(self, index: str | Path = DEFAULT_INDEX, encoder: Encoder | None = None,
                 settings: IndexSettings | None = None, model: str | None = None) -> None:
        self.location = str(index)
        check_location(self.location)
        self.path = Path(index)
        self.shown = self.location
        self.models = Models(model, encoder) if encoder is not None else shared(model)
        self.searcher = Searcher(self.path, self.models)
        self.indexer = Indexer(self.path, self.models, settings or IndexSettings(), self.searcher)

    # ---------------------------------------------------------------- parts

    @property
    def encoder(self) -> Encoder:
        """The e5 encoder, made on first need; a search loads only its question side."""
        return self.models.e5()

    @property
    def settings(self) -> IndexSettings:
        """How new documents are chunked and embedded (an existing index's own, once written to)."""
        return self.indexer.settings

    @property
    def fusion(self) -> FusionSettings:
        """How the routes of a question are joined."""
        return self.searcher.fusion

    @fusion.setter
    def fusion(self, value: FusionSettings) -> None:
        self.searcher.fusion = value

    @property
    def store(self) -> Snapshot:
        """The last committed snapshot of the index (reopened when another process has committed)."""
        return self.searcher.current()[0]

    @property
    def reused(self) -> int:
        """Chunks the last update took over from the old version instead of embedding them again."""
        return self.indexer.reused

    @property
    def generation(self) -> str:
        """The commit a question would be answered from now."""
        return self.store.generation

    @property
    def segmenter(self):
        """The keyword segmenter of the index's settings."""
        return self.searcher.current()[1].segmenter

    def exists(self) -> bool:
        return exists(self.path)

    def scoped(self, where: Iterable[str]) -> Engine:
        """This engine as a reader bound to the filters `where` sees it (indexer.filters syntax;
        none: the engine itself): a view sharing its models, searcher and snapshot, whose questions
        search only the documents the filters allow (inside every route, as `where` does), whose
        `documents`, `info` counts, `document_text` and `context` know no other, whose English
        questions are translated into those documents' terms alone, and which cannot write.
        Corpus statistics (BM25's document frequencies) stay the whole index's."""
        where = tuple(w for w in where if w)
        if not where:
            return self
        filters.parse(where)
        view = copy.copy(self)
        view.scope = tuple(dict.fromkeys(self.scope + where))
        return view

    def visible(self) -> dict[str, DocRecord]:
        """The documents this engine (or view) may show, by id, at the last commit."""
        return self.searcher.current()[1].within(self.scope)

    def _writer(self) -> Indexer:
        """The writer side; a scoped view has none."""
        if self.scope:
            raise IndexerError("a reader bound to filters cannot change the index")
        return self.indexer

    def warm_up(self) -> None:
        """Load both sides of the encoder, the index and its translator before the first request
        (a first upload would otherwise load the documents' side while questions wait)."""
        self.models.e5(1).encode_documents(["预热"])
        if self.exists():
            self.query(["预热", "warm up"], 1)

    # ---------------------------------------------------------------- writes

    def build(self, paths: Iterable[str | Path], *, progress: Progress = False, tags: Iterable[str] = (),
              ocr: bool = True, source: str | None = None, include: Iterable[str] = (),
              exclude: Iterable[str] = ()) -> list[DocReport]:
        """Index exactly the documents of these files and folders, from scratch (indexing.Indexer.build)."""
        return self._writer().build(paths, progress=progress, tags=tags, ocr=ocr, source=source, include=include,
                                  exclude=exclude)

    def rebuild(self, *, progress: Progress = False) -> list[DocReport]:
        """Re-chunk and re-embed every document from its stored text, in one commit."""
        return self._writer().rebuild(progress=progress)

    def add(self, paths: Iterable[str | Path], *, progress: Progress = False, skip_bad_lines: bool = False,
            tags: Iterable[str] = (), ocr: bool = True, source: str | None = None, include: Iterable[str] = (),
            exclude: Iterable[str] = ()) -> list[DocReport]:
        """Add or replace the documents of these files and folders; a folder becomes a source
        (indexing.Indexer.add)."""
        return self._writer().add(paths, progress=progress, skip_bad_lines=skip_bad_lines, tags=tags, ocr=ocr,
                                source=source, include=include, exclude=exclude)

    def sync(self, names: Iterable[str] = (), *, dry_run: bool = False, max_delete: int | None = None,
             progress: Progress = False, ocr: bool = True) -> list[tuple[SyncPlan, list[DocReport]]]:
        """Mirror the sources (all, when none is named) into the index (indexing.Indexer.sync)."""
        return self._writer().sync(names, dry_run=dry_run, max_delete=max_delete, progress=progress, ocr=ocr)

    def sources(self) -> list[dict]:
        """The folders the index follows: name, folder, patterns, tags, documents, when added and last synced."""
        if self.scope:  # a reader learns nothing of the folders behind it
            return []
        store, view = self.searcher.current()
        return [{"name": name, **entry, "documents": view.by_source.get(name, 0)}
                for name, entry in sorted(store.manifest.sources.items())]

    def remove_source(self, name: str) -> list[DocReport]:
        """Stop following a source; its documents leave the index."""
        return self._writer().remove_source(name)

    def add_documents(self, docs: list[Document], *, progress: Progress = False) -> list[DocReport]:
        """Add already-read documents."""
        return self._writer().add_documents(docs, progress=progress)

    def add_uploads(self, files: list[tuple[str, bytes]], tags: Iterable[str] = (), *,
                    progress: Progress = False) -> list[DocReport]:
        """Add uploaded files (name as the browser sent it, bytes), read as files on disk are; a
        file that cannot be read is a ReadError naming it, and nothing is added. The index keeps
        each file's bytes, for `original`."""
        return self._writer().add_documents(read_uploads(files, tags), progress=progress,
                                            originals=[data for _, data in files])

    def add_text(self, title: str, text: str, *, progress: Progress = False) -> list[DocReport]:
        """Add pasted text as one document whose id is its title (the same title replaces it)."""
        title = " ".join(str(title or "").split())
        text = normalise_newlines(str(text or ""))
        if not title:
            raise ReadError("give the pasted text a title: it names the document")
        if not text.strip():
            raise ReadError("the pasted text is empty")
        return self.add_documents([Document(doc_id=title, text=text, title=title, origin="pasted")], progress=progress)

    def remove(self, doc_ids: list[str]) -> list[DocReport]:
        """Remove documents by id; an unknown id is NotFound and nothing is removed."""
        return self._writer().remove(doc_ids)

    def optimize(self) -> tuple[int, int]:
        """Merge the index's segments into one, dropping deleted chunks: (segments before, after)."""
        return self._writer().optimize()

    def upgrade(self, *, sources: bool = True) -> str:
        """Convert an index of an earlier format in place (and its folders into sources); what was done."""
        return self._writer().upgrade(sources=sources)

    def chunk(self, doc: Document) -> list[Chunk]:
        """Chunks of a document under this index's settings, measured in the model's tokens."""
        return self.indexer.chunk(doc)

    # ---------------------------------------------------------------- reads

    def answer(self, queries: list[str], options: SearchOptions, *, sentences: bool = True) -> list[Result]:
        """Each question's result under `options` (searching.Searcher.answer), within this view's scope."""
        if self.scope:
            options = replace(options, scope=tuple(dict.fromkeys(options.scope + self.scope)))
        return self.searcher.answer(queries, options, sentences)

    def query(self, queries: list[str], k: int = 10, docs: Iterable[str] | None = None,
              min_score: float | None = None, mode: str = DEFAULT_MODE, where: Iterable[str] | None = None,
              group: str = "passages", sentences: bool = True) -> list[Result]:
        """`answer` with the options given one by one."""
        options = SearchOptions(k, mode, group, tuple(where or ()), None if docs is None else tuple(docs), min_score)
        return self.answer(queries, options, sentences=sentences)

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

    def fold(self, text: str) -> str:
        """The text in the index's script (what its keyword terms are matched in: Traditional as
        Simplified); character for character, so offsets into it are offsets into the text."""
        folded = self.segmenter.fold(text)
        return folded if len(folded) == len(text) else text

    def original(self, doc_id: str) -> Original:
        """The file a document came from: an upload's kept bytes, or a source's (or a named file's)
        file while it is still where it was read. NotFound outside this view's scope, and for text
        that has no file of its own (pasted, or one line of a JSON Lines file, whose file holds
        other documents too); Gone for a file moved or deleted since."""
        record = self.visible().get(doc_id)
        if record is None:
            raise NotFound(f"no document {doc_id!r} in {self.shown}")
        if record.origin.startswith("upload:"):
            name, sha = record.origin[len("upload:"):], record.file.get("sha256")
            path = original_path(self.path, sha) if sha else None
            if path is None or not path.is_file():
                raise Gone(f"{doc_id} was uploaded before the index kept originals: upload it again to keep its file")
        elif not record.origin or record.origin == "pasted" or is_line(record.origin):
            raise NotFound(f"{doc_id} has no file of its own (pasted text, or one line of a JSON Lines file): "
                           f"its text is all there is")
        else:
            path = Path(record.origin)
            name = path.name
            if not path.is_file():
                raise Gone(f"the file of {doc_id} is no longer where it was read (moved or deleted); a sync of "
                           f"its source brings the index up to date")
        return Original(path, name, mimetypes.guess_type(name)[0] or "application/octet-stream")

    def document_text(self, doc_id: str) -> str:
        """A document's whole text, as it was read."""
        try:
            if self.scope and doc_id not in self.visible():
                raise KeyError(doc_id)
            return self.store.document_text(doc_id)
        except KeyError:
            raise NotFound(f"no document {doc_id!r} in {self.shown}") from None

    def context(self, hit: Hit, before: int = 1, after: int = 1) -> list[Chunk]:
        """The chunks around a hit in its document, the hit's own included, in reading order."""
        if self.scope and hit.doc_id not in self.visible():
            raise NotFound(f"no document {hit.doc_id!r} in {self.shown}")
        store = self.store
        chunks = sorted(store.chunks(store.rows_of({hit.doc_id}).tolist()), key=lambda c: c.position)
        i = next((n for n, c in enumerate(chunks) if c.chunk_id == hit.chunk_id), 0)
        return chunks[max(0, i - before): i + after + 1]

    def documents(self) -> list[DocRecord]:
        return list(self.visible().values())

    def info(self, recall: bool = False) -> dict:
        """What the index holds and how it was made; with `recall`, also the vector index's
        recall@10 against exact search (None where it is exact), which costs 200 exact searches:
        seconds at 1M chunks, so the page and /info (polled for the generation) leave it out.
        A scoped view counts its documents and their chunks only, and leaves out what only the
        whole index has a figure for (sentences, the kind of vector index its size chose, recall)."""
        store, view = self.searcher.current()
        m, stats, recall = store.manifest, store.stats(recall and not self.scope), recall and not self.scope
        docs = view.within(self.scope).values()
        if self.scope:
            stats.update(chunks=sum(d.chunks for d in docs), index_type=m.index_type, sentences="their")
        settings = IndexSettings.of_manifest(m)
        updated = max((d.added for d in docs), default=m.created) if self.scope else m.updated
        return {
            "index": self.shown, "generation": store.generation, "format_version": m.format_version,
            "model": m.model, "dim": m.dim, "documents": len(docs), "chunks": stats["chunks"],
            "index_type": stats["index_type"], "index_type_setting": m.index_type, "chunking": m.chunking,
            "created": m.created, "updated": updated,
            "keyword_backend": stats["keyword_backend"],
            "analyzer": settings.analyzer.to_json(), "bm25": settings.bm25.to_json(),
            "title_terms": settings.title_terms if settings.title_terms else "no (`rebuild` indexes each chunk with its title's words)",
            "crosslingual": (f"{m.crosslingual.get('encoder')} ({m.crosslingual.get('dim')}-d, passages and "
                             f"{stats['sentences']} sentences)") if m.crosslingual else "off",
            "sentence_vectors": settings.sentence_vectors,
            **({} if self.scope else {"originals": dict(zip(("files", "bytes"), usage(self.path)))}),
            **({"recall@10_vs_exact": stats["recall@10_vs_exact"]} if recall else {}),
        }

    def check(self) -> list[str]:
        """Problems found in the index on disk (an empty list: it is consistent)."""
        return Snapshot.load(self.path).problems()
