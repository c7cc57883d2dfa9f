"""How an index is made, as plain data: chunking, the vector index kind, the keyword analysis and
BM25, the cross-lingual table, where the vectors go. A new index takes them from the command line
or the page (`IndexSettings.of`); an existing one is read back from its manifest (`of_manifest`), so
a document added later is cut and embedded exactly as the others were."""
from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from .analysis import LEGACY, Analyzer, Segmenter, read_synonyms
from .chunking import ChunkSettings
from .crosslingual import USE_NAME
from .errors import IndexerError, StoreError
from .postings import BM25
from .store.base import Manifest
from .store.segment import choose_index_type
from .store.table import USE_DIM

ANALYZERS = {"default": Analyzer(), "jieba": LEGACY}  # `build --analyzer`


@dataclass(frozen=True)
class IndexSettings:
    """How documents become vectors and terms; stored in the manifest of an index built with them."""

    chunking: ChunkSettings = field(default_factory=ChunkSettings)
    index_type: str = "auto"
    user_terms: tuple[str, ...] = ()  # words the keyword segmenter keeps whole
    crosslingual: bool = True  # keep the USE index for English questions (costs build time: bench/README.md)
    sentence_vectors: bool = False  # also an e5 vector per sentence: better ranking, ~2x the encoding (docs/decisions/sentence-vectors.md)
    synonyms: tuple[tuple[str, ...], ...] = ()  # groups of words a question's keyword search treats as one
    analyzer: Analyzer = field(default_factory=Analyzer)  # how text becomes keyword terms (indexer.analysis)
    bm25: BM25 = field(default_factory=BM25)  # BM25's k1 and b (indexer.postings)
    title_terms: bool = True  # a chunk's keyword terms include its document's title (docs/decisions/fusion.md)
    vectors: str = ""  # a Milvus location to keep a new index's vectors in (indexer.store.milvus_vectors); "": FAISS

    @staticmethod
    def of(*, max_tokens: int = ChunkSettings.max_tokens, overlap: int = ChunkSettings.overlap,
           index_type: str = "auto", user_terms: Iterable[str] = (), crosslingual: bool = True,
           sentence_vectors: bool = False, synonym_lines: Iterable[str] | None = None,
           synonyms_source: str = "the synonyms", analyzer: str = "default", vectors: str = "") -> "IndexSettings":
        """Settings from what a person gives (`build`'s options): the analyzer by name, synonym
        groups as the lines of a file (indexer.analysis.read_synonyms)."""
        if analyzer not in ANALYZERS:
            raise IndexerError(f"unknown analyzer {analyzer!r}; choose one of {', '.join(ANALYZERS)}")
        synonyms = () if synonym_lines is None else read_synonyms(synonym_lines)
        if synonym_lines is not None and not synonyms:
            raise IndexerError(f"{synonyms_source}: no synonym groups (one group per line, two or more words each)")
        choose_index_type(index_type, 0)  # an unknown kind is refused before anything is read
        return IndexSettings(ChunkSettings(max_tokens=max_tokens, overlap=overlap), index_type,
                             tuple(dict.fromkeys(user_terms)), crosslingual, sentence_vectors, synonyms,
                             ANALYZERS[analyzer], vectors=vectors)

    @staticmethod
    def of_manifest(manifest: Manifest) -> "IndexSettings":
        """The settings an index was built with."""
        keyword = manifest.keyword
        return IndexSettings(ChunkSettings(**manifest.chunking), manifest.index_type,
                             tuple(keyword.get("user_terms", ())), bool(manifest.crosslingual),
                             bool(manifest.crosslingual.get("e5_sentences")),
                             tuple(tuple(g) for g in keyword.get("synonyms", ())), Analyzer.of(keyword), BM25.of(keyword),
                             bool(keyword.get("title_terms")))

    def keyword(self) -> dict:
        """The keyword settings as the manifest keeps them."""
        return {"user_terms": list(self.user_terms), "analyzer": self.analyzer.to_json(), "bm25": self.bm25.to_json(),
                **({"synonyms": [list(g) for g in self.synonyms]} if self.synonyms else {}),
                **({"title_terms": True} if self.title_terms else {})}

    def keyword_text(self, title: str, text: str) -> str:
        """What a chunk's keyword terms are cut from: its text, after its document's title where the
        index keeps title terms (notices' titles name what they are about)."""
        return f"{title}\n{text}" if self.title_terms and title else text

    def manifest(self, model: str, dim: int) -> Manifest:
        """The manifest of a new index made with these settings and this model."""
        if self.sentence_vectors and not self.crosslingual:
            raise StoreError("sentence vectors are kept in the cross-lingual sentence table: "
                             "they cannot go with --no-crosslingual")
        table = {"encoder": USE_NAME, "dim": USE_DIM, **({"e5_sentences": True} if self.sentence_vectors else {})}
        return Manifest(model=model, dim=dim, chunking=asdict(self.chunking), index_type=self.index_type,
                        keyword=self.keyword(), crosslingual=table if self.crosslingual else {})

    @property
    def segmenter(self) -> Segmenter:
        """The keyword segmenter of these settings (user terms, synonyms, analyzer)."""
        return _segmenter(self.user_terms, self.synonyms, self.analyzer)


@functools.lru_cache(maxsize=8)
def _segmenter(user_terms: tuple[str, ...], synonyms: tuple[tuple[str, ...], ...], analyzer: Analyzer) -> Segmenter:
    """One segmenter per keyword settings: loading jieba's dictionary takes a second."""
    return Segmenter.of(IndexSettings(user_terms=user_terms, synonyms=synonyms, analyzer=analyzer).keyword())
