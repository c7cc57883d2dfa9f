"""The search page: a Streamlit shell over the same engine the command line uses.

    streamlit run search_app.py                      # index: $INDEXER_INDEX or indexes/default
    streamlit run search_app.py -- --index DIR

Ask a question (Chinese or English) and get the ranked passages, with the question's words marked
and the paragraphs around each hit; choose how many, a minimum score and which documents; see the
index's state; build it from the sample speech when there is none; add (upload or paste), remove
and rebuild documents; run a file of questions and download the results. The model and one engine
per index folder are loaded once per server process; the engine picks up a newer index generation
written by another process on its next query. Every expected failure is an `IndexerError` whose
one-line message is shown as it is. No search logic lives here.

`$INDEXER_SAMPLE` overrides the file the "build" button indexes (default data/speech.txt).

Start it with `python -m indexer page` (`make run`): the launcher (indexer.pageserver) puts the
guard in front of it (indexer.guard: the Host allow-list, the Origin of its websocket and of
writes) and shows a one-time login link on the terminal at each start; opening it sets an
HttpOnly cookie that signs that browser in as the operator, reload after reload. Started with
plain `streamlit run`, the page still refuses a Host that is not this machine's.

Access (indexer.access), on every address: the page is read-only (no build, upload, remove or
rebuild controls) until the browser is signed in by the login link or given the write key as the
password in the sidebar. A reader's key as the password shows only that reader's documents (the
engine's scoped view: the search, the lists, the counts, the texts). Once the read key or a reader
is set, nothing is shown until a key is given. `--access FILE` after `--` (else $INDEXER_ACCESS,
else access.json) names the file of hashed keys.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # `streamlit run /path/to/search_app.py` from another folder
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from indexer.access import ANYONE, Access, Grant, access_path  # noqa: E402
from indexer.engine import (DEFAULT_MODE, GROUPS, MODES, UPLOAD_SUFFIXES, DocHit, DocRecord, Engine, Hit,  # noqa: E402
                            Result, SearchOptions)
from indexer.errors import Gone, IndexerError  # noqa: E402
from indexer.guard import PAGE, RateLimited, allowed_hosts, host_matches, host_of  # noqa: E402
from indexer.highlight import highlight_spans, to_html, worth_marking  # noqa: E402
from indexer.querying import Question, answer, read_questions, write_results  # noqa: E402

DEFAULT_INDEX = ROOT / "indexes" / "default"
SAMPLE = Path(os.environ.get("INDEXER_SAMPLE") or ROOT / "data" / "speech.txt")
DOC_TYPES = sorted(suffix.lstrip(".") for suffix in UPLOAD_SUFFIXES)
QUESTION_TYPES = ("txt", "csv", "jsonl")
CONTEXT_CHUNKS = 2  # chunks shown on each side of a hit when it is expanded
# Up to this many documents, the document filter, the Documents tab and the remove list offer them
# all; beyond, each offers what a typed part of a title or file name finds (at most this many).
# Every list goes to the browser on every click: at 200,000 documents, three lists of them did.
LIST_ALL = int(os.environ.get("INDEXER_PAGE_LIST") or 1000)

# Example questions for the sample speech (shown when it is in the index).
SAMPLE_DOC = "speech.txt"
EXAMPLES = (
    "私立学校怎样建立党组织？",
    "如何加强党风廉政建设？",
    "How are young cadres trained?",
    "What does the speech say about the Xuexi Qiangguo app?",
)

CSS = """
<style>
.hit-head { display: flex; flex-wrap: wrap; gap: .35rem .9rem; align-items: baseline; margin-bottom: .15rem; }
.hit-head .rank { font-weight: 700; font-size: 1.05rem; }
.hit-head .score { font-family: monospace; background: rgba(70, 130, 200, .15); border-radius: .3rem; padding: 0 .35rem; }
.hit-head .doc { opacity: .75; }
.hit-head .section { color: #3a78c2; font-weight: 600; }
.passage, .context { line-height: 1.75; font-size: 1.02rem; }
.passage mark, .context mark { background: #ffe066; color: #111; padding: 0 .08em; border-radius: .15em; }
.passage .answer, .context .answer { background: rgba(60, 170, 110, .16); border-bottom: 2px solid #2e9e62;
  border-radius: .2em; padding: .05em 0; }
.terms { margin: .1rem 0 .6rem 0; line-height: 2; }
.terms .term { display: inline-block; border: 1px solid rgba(58, 120, 194, .45); border-radius: .9rem;
  padding: 0 .55rem; margin: 0 .35rem .25rem 0; font-size: .92rem; }
.terms .term b { color: #3a78c2; font-weight: 600; }
.context .ctx-around { opacity: .65; }
.context .ctx-hit { border-left: 3px solid #f0b400; padding-left: .6rem; margin: .35rem 0; }
.where { font-size: .85rem; opacity: .8; margin: 0 0 .25rem 0; }
.where .id { font-family: monospace; }
.where .gone { opacity: .7; font-style: italic; }
.why { font-size: .82rem; opacity: .8; margin: -.1rem 0 .25rem 0; }
.why .part { font-family: monospace; background: rgba(120, 120, 120, .12); border-radius: .25rem; padding: 0 .3rem; margin-right: .3rem; }
.doc-head { display: flex; gap: .35rem .9rem; align-items: baseline; font-size: 1.1rem; margin: .2rem 0 .35rem 0; }
.doc-head .rank { font-weight: 700; }
.doc-head .score { font-family: monospace; background: rgba(70, 130, 200, .15); border-radius: .3rem; padding: 0 .35rem; font-size: .95rem; }
.doc-head .title { font-weight: 600; }
.doc-head .id { opacity: .65; font-size: .9rem; }
</style>
"""


# ---------------------------------------------------------------------------- loading (once per process)


def page_argument(name: str, argv: list[str] | None = None) -> str | None:
    """`--NAME VALUE` after `--` on the streamlit command line (None when absent or without a value)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(f"--{name}")
    try:
        args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    except SystemExit:  # `--NAME` without a value: fall back to the environment
        return None
    return getattr(args, name)


def index_path(argv: list[str] | None = None) -> str:
    """`--index DIR` after `--` on the streamlit command line, else $INDEXER_INDEX, else indexes/default."""
    return str(page_argument("index", argv) or os.environ.get("INDEXER_INDEX") or DEFAULT_INDEX)


@st.cache_resource(show_spinner="Loading the model…")
def get_engine(path: str) -> Engine:
    """The one engine of this server process ($INDEXER_MODEL or the provisioned default), shared by
    every session: its questions never wait for another session's write, and it picks up a newer
    commit made by another process on its next question."""
    engine = Engine(path)
    try:
        engine.warm_up()
    except IndexerError:  # a damaged index or a missing model: the page says why when it is used
        pass
    return engine


@dataclass(frozen=True)
class Catalog:
    """What the page shows of an index's documents at one commit: the records, by id, and the
    types and tags the filters offer."""

    records: list[DocRecord] = field(default_factory=list)
    by_id: dict[str, DocRecord] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # how the document filter names each one
    table: dict[str, dict] = field(default_factory=dict)  # the Documents tab's row of each
    folded: dict[str, str] = field(default_factory=dict)  # each label case-folded, for finding documents
    types: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


@st.cache_resource(show_spinner="Reading the document list…", max_entries=8)
def catalog(path: str, generation: str, scope: tuple[str, ...] = ()) -> Catalog:
    """The documents of the index at `path` as committed in `generation` that a reader bound to
    `scope` may see (all for none): read once per commit and scope, and shared by every session.
    Read on every rerun, as it was (three times), a click took 13-16 s on the 1M-chunk stub index
    (200,000 documents) and 1.2-1.7 s on the 100k one."""
    records = get_engine(path).scoped(scope).documents()
    labels = {d.doc_id: d.doc_id if not d.title or d.title == Path(d.doc_id).stem else f"{d.title} ({d.doc_id})"
              for d in records}
    table = {d.doc_id: {"id": d.doc_id, "title": d.title, "type": d.meta.get("type", ""),
                        "source": d.source, "tags": "、".join(d.meta.get("tags") or []), "chunks": d.chunks,
                        "characters": d.chars,
                        "read by": d.meta.get("reader") or d.encoding or "", "from": d.origin,
                        "added": when(d.added)} for d in records}
    return Catalog(records, {d.doc_id: d for d in records}, labels, table,
                   {d: label.casefold() for d, label in labels.items()},
                   sorted({str(r.meta["type"]) for r in records if r.meta.get("type")}),
                   sorted({str(t) for r in records for t in (r.meta.get("tags") or [])}))


def find_box(where, known: Catalog, label: str, key: str, placeholder: str) -> str:
    """What is typed in a list's find box, which is there only beyond LIST_ALL documents ("" below)."""
    return "" if len(known.records) <= LIST_ALL else where.text_input(label, key=key, placeholder=placeholder)


def listed(known: Catalog, typed: str = "") -> list[str]:
    """The documents a list offers: all of them up to LIST_ALL; beyond, the first LIST_ALL whose
    title or file name holds what was typed (case-insensitive), or none until something is typed."""
    if len(known.records) <= LIST_ALL:
        return list(known.by_id)
    typed = typed.strip().casefold()
    if not typed:
        return []
    return [d for d, label in known.folded.items() if typed in label][:LIST_ALL]


@st.cache_resource(show_spinner=False)
def get_access(path: str) -> Access:
    """The access rules of this server process: its keys file."""
    return Access(Path(path))


def page_access() -> Access:
    return get_access(str(access_path(page_argument("access"))))


@st.cache_resource(show_spinner=False)
def page_hosts(bind: str) -> tuple[str, ...]:
    """The host names a page bound to `bind` answers to (indexer.guard.allowed_hosts)."""
    return allowed_hosts(bind, PAGE.named)


def host_refusal() -> str | None:
    """Why this session's connection is refused (None: it is not): a Host that is not this page's
    (DNS rebinding). The launcher's guard and Streamlit's `server.allowedHosts` refuse it at the
    websocket's handshake already; this covers a page started by plain `streamlit run`."""
    host = st.context.headers.get("Host")
    if host is None:  # no HTTP request behind this run (AppTest)
        return None
    patterns = st.get_option("server.allowedHosts") or page_hosts(st.get_option("server.address") or "")
    return None if host_matches(host_of(host) or "", patterns) else \
        f"This page does not answer to the host {host[:80]!r}; its operator can add it with --allowed-host."


def signed_in() -> Grant | None:
    """The sign-in this browser's cookie names (made by the login link), if any."""
    return PAGE.sign_ins.grant(st.context.cookies.get(PAGE.cookie)) if PAGE.cookie else None


def session_grant() -> Grant:
    """What this session may do, as `access_gate` found it at the top of this run."""
    return st.session_state.get("_grant") or ANYONE


def can_write() -> bool:
    """Whether this session may change the index (signed in, or given the write key as its password)."""
    return session_grant().may("write")


def read_only_note() -> str:
    """Why this session cannot change the index, and what would let it."""
    if page_access().configured("write"):
        return ("Read-only 只读: open the login link the page showed on its terminal, or give the write password "
                "in the sidebar, to add, remove, build or rebuild.")
    return "Read-only 只读: no write password is set (`python -m indexer access set-write-key`)."


# ---------------------------------------------------------------------------- inputs → documents/questions


def questions_from_upload(name: str, data: bytes) -> list[Question]:
    """An uploaded questions file, read by the command line's reader (by its extension)."""
    name = Path(str(name).replace("\\", "/")).name or "questions.txt"
    with tempfile.TemporaryDirectory(prefix="questions-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            return read_questions(path)
        except IndexerError as exc:
            raise type(exc)(str(exc).replace(str(path), name)) from exc


def questions_from_text(text: str) -> list[Question]:
    return [Question(str(n), line.strip()) for n, line in enumerate(str(text).splitlines(), 1) if line.strip()]


def results_file(questions: list[Question], results: list[Result], suffix: str) -> bytes:
    """Batch results as the command line writes them (.csv one row per hit, .jsonl one line per question)."""
    with tempfile.TemporaryDirectory(prefix="results-") as tmp:
        path = Path(tmp) / f"results{suffix}"
        write_results(path, questions, results)
        return path.read_bytes()


# ---------------------------------------------------------------------------- small helpers


def flash(kind: str, message: str) -> None:
    """A message to show after the rerun that follows a change to the index."""
    st.session_state.setdefault("_flash", []).append((kind, message))


def show_flashes() -> None:
    for kind, message in st.session_state.pop("_flash", []):
        getattr(st, kind)(message)


def shown_path(engine: Engine) -> str:
    """The index location without credentials; a folder inside the project as a relative path."""
    if engine.shown != engine.location or "://" in engine.location:
        return engine.shown
    try:
        return str(Path(engine.location).resolve().relative_to(ROOT))
    except ValueError:
        return engine.location


def when(stamp: str | None) -> str:
    try:
        return datetime.fromisoformat(str(stamp)).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return str(stamp or "?")


def esc(text: object) -> str:
    """HTML-escaped, and safe from Markdown's own reading ($ would start a formula)."""
    return html.escape(str(text)).replace("$", "&#36;")


def progress_bar(where, text: str) -> Callable[[float], None]:
    """An st.progress bar and the callback that moves it (given the fraction done)."""
    bar = where.progress(0.0, text=text)

    def update(fraction: float) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        bar.progress(fraction, text=f"{text} {fraction:.0%}")

    return update


def summarise(reports) -> str:
    by: dict[str, list[str]] = {}
    for r in reports:
        by.setdefault(r.status, []).append(f"{r.doc_id} ({r.chunks} chunks)")
    return "; ".join(f"{status}: {', '.join(items)}" for status, items in by.items()) or "nothing to do"


def marked(engine: Engine, text: str, terms: list[str], sentence: tuple[int, int] | None = None) -> str:
    """HTML of text with the terms marked (found in the index's script) and, if given, the answering
    sentence (offsets in text) set off."""
    return to_html(text, highlight_spans(engine.fold(text), terms), sentence).replace("$", "&#36;")


def sentence_in(hit: Hit, offset: int, length: int) -> tuple[int, int] | None:
    """The hit's answering sentence as offsets into a piece of the document that starts at
    document offset `offset` and is `length` long (None when there is none or it is outside)."""
    if hit.sentence_start is None:
        return None
    start, end = hit.sentence_start - offset, hit.sentence_end - offset
    return (start, end) if 0 <= start < end <= length else None


def translations_html(result: Result) -> str:
    """The English words of a cross-lingual question and the Chinese terms they were searched with."""
    chips = "".join(f'<span class="term">{esc(english)} → <b>{esc("、".join(terms))}</b></span>'
                    for english, terms in result.translations)
    return f'<div class="terms">Searched in Chinese as 翻译检索词: {chips}</div>' if chips else ""


# ---------------------------------------------------------------------------- page parts


def index_state(engine: Engine) -> tuple[dict | None, str | None]:
    """(info, problem): info is None when there is no usable index, problem says why if it is damaged."""
    if not engine.exists():
        return None, None
    try:
        return engine.info(), None
    except IndexerError as exc:
        return None, str(exc)


def sidebar(engine: Engine, info: dict | None, problem: str | None, known: Catalog) -> SearchOptions:
    """Index state, search settings, and index management; returns the settings."""
    sb = st.sidebar
    sb.header("Index 索引")
    sb.caption(f"`{shown_path(engine)}`")
    if info:
        c1, c2 = sb.columns(2)
        c1.metric("Documents 文档", info["documents"])
        c2.metric("Chunks 段落", info["chunks"])
        sb.caption(f"Model **{info['model']}** (dim {info['dim']}) · {info['index_type']} index  \n"
                   f"Built {when(info['created'])}  \nUpdated {when(info['updated'])} · {info['generation']}  \n"
                   f"English questions: {'USE cross-lingual index + CC-CEDICT translation' if info.get('crosslingual', 'off') != 'off' else 'CC-CEDICT translation (no USE index)'}")
    elif problem:
        sb.error(problem)
    else:
        sb.warning("No index yet.")

    sb.header("Settings 设置")
    k = sb.slider("Results 结果数", 1, 30, 5, key="k")
    min_score = sb.slider("Minimum score 最低分", 0.0, 1.0, 0.0, 0.01, key="min_score",
                          help="Passages scoring below this are not shown (0 shows all). Hybrid scores mean the "
                               "same on every question: about 0.4 and up, the index answers it.")
    docs = known.by_id
    if "docs" in st.session_state:  # a removed document leaves the filter
        st.session_state.docs = [d for d in st.session_state.docs if d in docs]
    typed = find_box(sb, known, "Find documents 查找文档", "docs_find", f"{len(docs):,} documents: part of a title or name")
    options = list(dict.fromkeys([*st.session_state.get("docs", []), *listed(known, typed)]))
    chosen = sb.multiselect("Search in 文档筛选", options, key="docs", placeholder="All documents",
                            format_func=known.labels.__getitem__)
    group = sb.radio("Show 显示", GROUPS, key="group", horizontal=True,
                     format_func=lambda g: {"passages": "passages 段落", "documents": "documents 文档"}[g],
                     help="documents: whole documents ranked by their best passage, each with its best passages.")
    where = filters_panel(sb, known)
    mode = sb.selectbox("Mode 检索方式", MODES, key="mode", index=MODES.index(DEFAULT_MODE),
                        help="dense: by meaning (cosine score) · bm25: by words (BM25 score) · hybrid: both, "
                             "0–1. Each mode scores on its own scale.")
    sb.toggle("Why each hit ranks 评分明细", key="show_why",
              help="Under each hit: each route's own score and its part of the hit's score, and the question's "
                   "words the passage holds.")

    sb.header("Manage 管理")
    if not can_write():
        sb.caption(read_only_note())
    elif info and sb.button("Rebuild the index 重建索引", key="rebuild",
                          help="Re-chunk and re-embed every document from its stored text."):
        update = progress_bar(sb, "Rebuilding…")
        try:
            reports = engine.rebuild(progress=update)
        except IndexerError as exc:
            sb.error(str(exc))
        else:
            flash("success", f"Rebuilt the index: {len(reports)} documents, "
                             f"{sum(r.chunks for r in reports)} chunks.")
            st.rerun()
    if can_write():
        sb.caption("Add or remove documents in the **Documents** tab.")
    return SearchOptions(k, mode, group, tuple(where), tuple(chosen) or None, min_score or None)


def tags_from(text: str) -> list[str]:
    """Tags typed in one box, separated by commas, semicolons or spaces (，、 too)."""
    return [t for t in re.split(r"[,;，；、\s]+", str(text or "")) if t]


def filters_panel(sb, known: Catalog) -> list[str]:
    """Filters on what the documents carry (indexer.filters): type, tag, date, and any other
    `FIELD OP VALUE`; returns them as filter expressions, which the engine applies inside the search."""
    types, tags = known.types, known.tags
    box = sb.expander("Filters 筛选", expanded=bool(st.session_state.get("f_types") or st.session_state.get("f_tags")))
    where = []
    chosen = box.multiselect("Type 类型", types, key="f_types", placeholder="All types")
    if chosen:
        where.append("type=" + "|".join(chosen))
    picked = box.multiselect("Tag 标签", tags, key="f_tags", placeholder="Any tag")
    if picked:
        where.append("tag=" + "|".join(picked))
    start, end = box.columns(2)
    span = {"value": None, "format": "YYYY-MM-DD", "min_value": date(1900, 1, 1), "max_value": date(2100, 12, 31)}
    since = start.date_input("From 起", key="f_from", **span)  # archives reach back decades, not the default 10 years
    until = end.date_input("To 止", key="f_to", **span)
    if since:
        where.append(f"date>={since.isoformat()}")
    if until:
        where.append(f"date<={until.isoformat()}")
    more = box.text_input("More 更多", key="f_more", placeholder="department=教育局; folder=2021",
                          help="FIELD OP VALUE, separated by ; — operators = != > >= < <= ~ (contains). "
                               "A document's date is its own date field, else its file's modified date.")
    return where + [part.strip() for part in more.split(";") if part.strip()]


def build_panel(engine: Engine, problem: str | None) -> None:
    """The message and the one-click build when there is no (usable) index."""
    if problem:
        st.error(f"The index cannot be used: {problem}")
    else:
        st.warning(f"There is no index at `{shown_path(engine)}` yet. Build it from the sample speech, "
                   "or add your own documents in the Documents tab.")
    sample = SAMPLE
    label = f"Build the index from {sample.relative_to(ROOT) if sample.is_relative_to(ROOT) else sample}"
    if not sample.is_file():
        st.caption(f"The sample {sample} is not there; add documents in the Documents tab.")
        return
    if not can_write():
        st.caption(read_only_note())
        return
    if st.button(label, type="primary", key="build", icon=":material/build:"):
        update = progress_bar(st, "Building…")
        try:
            reports = engine.build([sample], progress=update)
        except IndexerError as exc:
            st.error(str(exc))
        else:
            flash("success", f"Built the index: {summarise(reports)}.")
            st.rerun()


def set_query(text: str) -> None:
    st.session_state.query = text


def search_tab(engine: Engine, info: dict | None, settings: dict) -> None:
    st.text_input("Question 问题", key="query", placeholder="例如：私立学校怎样建立党组织？  ·  e.g. How are young cadres trained?",
                  help="Chinese or English; press Enter.")
    if info and SAMPLE_DOC in info.get("doc_ids", ()):
        row = st.container(horizontal=True, gap="small", vertical_alignment="center")
        row.caption("Try 试试:", width="content")
        for n, example in enumerate(EXAMPLES):
            row.button(example, key=f"example-{n}", on_click=set_query, args=(example,))
    query = st.session_state.get("query", "")
    if info is None:
        st.info("Search needs an index: build it above, or add documents in the Documents tab.")
        return
    if not query:
        st.info("Type a question and press Enter — in Chinese or English. 输入问题后按回车。")
        return
    try:
        result = engine.answer([query], settings)[0]
    except IndexerError as exc:
        st.warning(str(exc))
        return
    hits = result.hits
    if result.translations:
        st.markdown(translations_html(result), unsafe_allow_html=True)
    if not hits:
        st.info("No passage scores above the minimum score; lower it in the sidebar.")
        return
    # a cross-lingual question is marked by its Chinese translations, others by their own words
    terms = worth_marking(result.terms)  # the words the index searched with, in its script
    found = [t for t in terms if any(highlight_spans(engine.fold(h.text), [t]) for h in hits)]
    counted = (f"{len(result.documents)} documents with their best passages" if result.documents is not None
               else f"{len(hits)} passages")
    st.caption(f"{counted}, ranked by meaning and words (each shows its score's parts) · the answering sentence is "
               "underlined in green · "
               + (f"marked: {'、'.join(found)}" if found else "none of the question's words occur in them literally"))
    for doc in result.documents or []:
        show_document(engine, doc, terms)
    for hit in hits if result.documents is None else []:
        show_hit(engine, hit, terms)


ROUTE_NAMES = {"dense": "meaning 语义 (cosine)", "bm25": "words 关键词 (BM25)", "use": "cross-lingual 跨语言 (USE)",
               "doc": "its document's words 全文关键词 (BM25 of the whole document)",
               "wording": "the question's wording 原文措辞 (share of its 4-character runs the passage repeats)"}


def why_html(hit: Hit) -> str:
    """Why a hit ranks where it does: each route's own score and its part of the fused score, and
    the question's terms the passage holds."""
    routes = hit.why.get("routes", {})
    parts = "".join(f'<span class="part" title="{esc(ROUTE_NAMES.get(name, name))}">{esc(name)} {r["score"]:.3g}'
                    f' → {r["part"]:.3f}</span>' for name, r in routes.items())
    matched = "、".join(hit.why.get("matched", [])[:12])
    return (f'<div class="why">{parts}= {hit.score:.3f}' + (f" · matched 命中: {esc(matched)}" if matched else "")
            + "</div>")


def show_document(engine: Engine, doc: DocHit, terms: list[str]) -> None:
    """A ranked document: its score and title, then its best passages."""
    with st.container(border=True):
        st.markdown(f'<div class="doc-head"><span class="rank">#{doc.rank}</span>'
                    f'<span class="score" title="its best passage\'s score">{doc.score:.4g}</span>'
                    f'<span class="title">{esc(doc.title or doc.doc_id)}</span><span class="id">{esc(doc.doc_id)}</span></div>',
                    unsafe_allow_html=True)
        for hit in doc.hits:
            show_hit(engine, hit, terms)


def original_link(engine: Engine, hit: Hit) -> str:
    """A link that opens the hit's original file (a PDF at the hit's page), through a short-lived
    pass (indexer.guard.Passes) for a document this reader sees; "" where the page is not served
    by its launcher or the document has no file; a note where its file has gone."""
    if PAGE.passes is None:
        return ""
    try:
        engine.original(hit.doc_id)  # within this reader's scope, and still there
    except Gone:
        return '<span class="gone" title="moved or deleted since it was read">original gone 原文已移走</span>'
    except IndexerError:
        return ""
    at = f"#page={hit.place['page']}" if "page" in hit.place else ""
    return (f'<a href="/original?t={esc(PAGE.passes.issue(hit.doc_id))}{at}" target="_blank" rel="noopener noreferrer">'
            f'open original 打开原文</a>')


def where_html(engine: Engine, hit: Hit) -> str:
    """Where a hit is: its document (SOURCE/path for a source's file), its page, slide or sheet,
    and the link to its original."""
    parts = [f'<span class="id">{esc(hit.doc_id)}</span>'] + ([esc(hit.where)] if hit.place else [])
    link = original_link(engine, hit)
    return '<div class="where">' + " · ".join(parts + ([link] if link else [])) + "</div>"


def show_hit(engine: Engine, hit: Hit, terms: list[str]) -> None:
    section, body, body_start = hit.split()
    with st.container(border=True):
        st.markdown(
            f'<div class="hit-head"><span class="rank">#{hit.rank}</span>'
            f'<span class="score" title="score">{hit.score:.4g}</span>'
            f'<span class="doc">{esc(hit.title or hit.doc_id)}</span>'
            f'<span class="section">{esc(section) if section else ""}</span></div>' + where_html(engine, hit)
            + (why_html(hit) if st.session_state.get("show_why") else ""),
            unsafe_allow_html=True)
        st.markdown(f'<div class="passage">{marked(engine, body, terms, sentence_in(hit, body_start, len(body)))}</div>',
                    unsafe_allow_html=True)
        with st.expander("Context 上下文 — the paragraphs around it"):
            try:
                st.markdown(context_html(engine, hit, terms), unsafe_allow_html=True)
            except (IndexerError, KeyError) as exc:
                st.warning(f"the context is not available ({exc})")


def context_html(engine: Engine, hit: Hit, terms: list[str]) -> str:
    """The original text around a hit (the chunks before and after it), the hit itself set off."""
    chunks = engine.context(hit, CONTEXT_CHUNKS, CONTEXT_CHUNKS)
    text = engine.document_text(hit.doc_id)
    start = min([hit.start] + [c.start for c in chunks])
    end = max([hit.end] + [c.end for c in chunks])
    before = text[start:hit.start].rstrip("\n")
    after = text[hit.end:end].lstrip("\n")
    around = '<div class="ctx-around">{}</div>'
    return ('<div class="context">' + (around.format(marked(engine, before, terms)) if before else "")
            + f'<div class="ctx-hit">{marked(engine, text[hit.start:hit.end], terms, sentence_in(hit, hit.start, hit.end - hit.start))}</div>'
            + (around.format(marked(engine, after, terms)) if after else "") + "</div>")


def batch_tab(engine: Engine, info: dict | None, settings: dict) -> None:
    st.markdown("Run many questions at once: a **.txt** file (one per line), a **.csv** with a `query` "
                "column (and `id`), or **.jsonl** lines `{\"id\", \"query\"}`. Uses the sidebar's settings.")
    upload = st.file_uploader("Questions file 问题文件", type=list(QUESTION_TYPES), key="batch_file")
    pasted = st.text_area("…or paste questions, one per line", key="batch_text", height=110)
    if info is None:
        st.info("A batch needs an index: build it, or add documents in the Documents tab.")
        return
    if upload is None and not pasted.strip():
        return
    try:
        if upload is not None:
            data = upload.getvalue()
            questions = questions_from_upload(upload.name, data)
        else:
            data = pasted.encode("utf-8")
            questions = questions_from_text(pasted)
        key = hashlib.sha256(data).hexdigest() + json.dumps([settings, info["generation"]], default=str)
        cached = st.session_state.get("_batch")
        if cached and cached[0] == key:
            results = cached[1]
        else:
            with st.spinner(f"Searching {len(questions)} questions…"):
                results = answer(engine, questions, replace(settings, group="passages"))  # as `batch` does
            st.session_state._batch = (key, results)
    except IndexerError as exc:
        st.warning(str(exc))
        return
    rows = [{"id": q.qid, "query": q.query, "rank": h.rank, "score": round(h.score, 4), "document": h.doc_id,
             "section": h.section, "answer": h.sentence, "passage": h.split()[1]}
            for q, result in zip(questions, results) for h in result.hits]
    st.caption(f"{len(questions)} questions · {len(rows)} hits")
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_config={"passage": st.column_config.TextColumn(width="large"),
                                "answer": st.column_config.TextColumn(width="medium"),
                                "score": st.column_config.NumberColumn(format="%.3f")})
    c1, c2 = st.columns(2)
    c1.download_button("Download CSV", results_file(questions, results, ".csv"), file_name="results.csv",
                       mime="text/csv", key="dl_csv", on_click="ignore", icon=":material/download:")
    c2.download_button("Download JSONL", results_file(questions, results, ".jsonl"), file_name="results.jsonl",
                       mime="application/jsonl", key="dl_jsonl", on_click="ignore", icon=":material/download:")


def add_documents(where, add: Callable[..., list]) -> None:
    """Run one of the engine's adds (uploads, pasted text) with a progress bar; say what it did."""
    update = progress_bar(where, "Embedding…")
    try:
        reports = add(progress=update)
    except IndexerError as exc:
        where.error(str(exc))
        return
    flash("success", f"Index updated — {summarise(reports)}. New documents are searchable now.")
    st.session_state._clear_inputs = True
    st.rerun()


def documents_tab(engine: Engine, info: dict | None, known: Catalog) -> None:
    if st.session_state.pop("_clear_inputs", False):
        st.session_state.paste_title = ""
        st.session_state.paste_text = ""
        st.session_state.upload_round = st.session_state.get("upload_round", 0) + 1
    records = known.records
    sources = engine.sources() if info else []  # none for a scoped reader, who learns nothing of the folders
    if sources:
        st.subheader(f"Folders followed 跟踪的文件夹 ({len(sources)})")
        st.dataframe([{"source": x["name"], "folder": x["root"], "documents": x["documents"],
                       "last sync": when(x.get("synced")) if x.get("synced") else "never",
                       "patterns": " ".join([f"+{p}" for p in x["include"]] + [f"-{p}" for p in x["exclude"]])}
                      for x in sources], hide_index=True, width="stretch")
        st.caption("`python -m indexer sync` mirrors them; `watch` (or `serve --watch`) keeps them in sync.")
    st.subheader(f"In the index 已收录 ({len(records)})")
    typed = find_box(st, known, "Find 查找", "table_find", "part of a title or file name")
    shown = listed(known, typed)
    if len(records) > LIST_ALL:
        st.caption(f"{len(shown):,} of {len(records):,} documents shown" +
                   ("" if typed.strip() else ": type part of a title or file name to list them"))
    if shown:
        st.dataframe([known.table[d] for d in shown], hide_index=True, width="stretch")
    elif not records:
        st.caption("No documents yet.")
    if not can_write():
        st.info(read_only_note())
        return

    add, remove = st.columns([3, 2], gap="large")
    with add:
        st.subheader("Add 添加")
        files = st.file_uploader("Upload files (Word, WPS, Excel, PowerPoint, PDF incl. scans, web pages, images, text)",
                                 type=DOC_TYPES,
                                 accept_multiple_files=True, key=f"doc_files_{st.session_state.get('upload_round', 0)}")
        st.text_input("Tags 标签", key="upload_tags", placeholder="2020, 教育局",
                      help="Tags for the uploaded files; filter on them in the sidebar.")
        if st.button("Add the uploaded files", key="add_files", disabled=not files, type="primary"):
            uploads = [(f.name, f.getvalue()) for f in files]
            add_documents(st, lambda **kw: engine.add_uploads(uploads, tags_from(st.session_state.upload_tags), **kw))
        st.markdown("**…or paste text 粘贴文本**")
        st.text_input("Title 标题", key="paste_title", placeholder="names the document; the same title replaces it")
        st.text_area("Text 文本", key="paste_text", height=180)
        if st.button("Add the pasted text", key="add_paste"):
            title, text = st.session_state.paste_title, st.session_state.paste_text
            add_documents(st, lambda **kw: engine.add_text(title, text, **kw))
    with remove:
        st.subheader("Remove 删除")
        if not records:
            st.caption("Nothing to remove.")
            return
        doc_id = st.selectbox("Document", shown, key="remove_doc",
                              placeholder="Find it above first" if not shown else "Choose a document")
        if st.button("Remove from the index", key="remove", icon=":material/delete:", disabled=doc_id is None):
            try:
                engine.remove([doc_id])
            except IndexerError as exc:
                st.error(str(exc))
            else:
                flash("success", f"Removed {doc_id} from the index.")
                st.rerun()


def access_gate() -> Grant:
    """Who this session is, found once per run: the Host it came by (else the page stops), the
    sign-in of its cookie, else the key given in the sidebar's password field, else anyone while
    no reading key is set; stops the page when reading needs a key, or when the session asks
    faster than its rate (indexer.guard.Limits)."""
    problem = host_refusal()
    if problem:
        st.error(problem)
        st.stop()
    if st.query_params.get("signin") == "expired":
        st.warning("That login link was used already, or is from an earlier start of the page: use the link the "
                   "page showed at its last start, or the write password. 登录链接已失效。")
    acc = page_access()
    signed = signed_in() if acc.configured("write") else None  # with the write key gone, no one writes
    password = None
    if signed is not None:
        st.sidebar.success("Signed in 已登录: this browser may edit")
    elif acc.keys:
        st.sidebar.header("Access 权限")
        password = st.sidebar.text_input("Password 密码", type="password", key="password",
                                         help="A key: the write key unlocks adding, removing and rebuilding; "
                                              "a reader's key shows its documents.") or None
    if "Host" in st.context.headers:  # a browser's session (AppTest has none); before a new key's scrypt
        try:
            PAGE.limits.admit(signed or acc.known(password), st.context.ip_address or "127.0.0.1",
                              st.context.headers.get("X-Forwarded-For"))
        except RateLimited as exc:
            st.error(f"Too many requests 请求过多: {exc}")
            st.stop()
    grant = signed or acc.grant_of(password)
    if password and grant is None:
        st.sidebar.error("Wrong password 密码错误")
    elif password and grant.may("write"):
        st.sidebar.success("Editing unlocked 已解锁")
    elif password and grant.where:
        st.sidebar.info(f"Reading as {grant.name}: its documents only 仅限本部门文档")
    grant = grant or (None if acc.reading_locked() else ANYONE)
    if grant is None:
        st.info("This page needs a password: give it in the sidebar. 请在侧栏输入密码。")
        st.stop()
    st.session_state["_grant"] = grant
    return grant


def main() -> None:
    st.set_page_config(page_title="语义检索 · Semantic search", page_icon=":material/search:", layout="wide")
    st.html(CSS)
    grant = access_gate()
    try:
        engine = get_engine(str(index_path())).scoped(grant.where)  # a reader's view; else the engine itself
        info, problem = index_state(engine)
    except IndexerError as exc:  # the model cannot be loaded, or the index is not a folder
        st.error(str(exc))
        st.stop()
    known = catalog(str(index_path()), info["generation"], grant.where) if info else Catalog()
    if info:
        info["doc_ids"] = known.by_id.keys()
    settings = sidebar(engine, info, problem, known)

    st.title(":material/manage_search: 语义检索 · Semantic search")
    st.caption("Ask in Chinese or English; passages are ranked by meaning, and the question's words are marked.")
    with st.container():  # always there, so the tabs below keep their place (and the open tab) after a change
        show_flashes()
    if info is None:
        build_panel(engine, problem)
    search, batch, documents = st.tabs([":material/search: Search 检索", ":material/checklist: Batch 批量", ":material/description: Documents 文档"],
                                       key="tabs")
    with search:
        search_tab(engine, info, settings)
    with batch:
        batch_tab(engine, info, settings)
    with documents:
        documents_tab(engine, info, known)


if __name__ == "__main__":
    main()
