"""The command line, `python -m indexer …`: a thin shell over Engine."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import click
import typer

from .engine import DEFAULT_INDEX, DEFAULT_MODE, MODES, Engine, IndexSettings, Result, SearchOptions
from .errors import IndexerError
from .evaluation import evaluate, read_labelled
from .guard import ADDRESS_RATE, KEY_RATE
from .querying import answer, read_questions, write_results

INDEX_ENV = "INDEXER_INDEX"
DEFAULTS = IndexSettings()

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Semantic search over Chinese (and any-language) documents.")

IndexOpt = typer.Option(None, "--index", "-i", help=f"index folder (default ${INDEX_ENV} or {DEFAULT_INDEX})")
ModelOpt = typer.Option(None, "--model", "-m", help="embedding model folder or name (default $INDEXER_MODEL "
                                                    "or models/multilingual-e5-small)")
JsonOpt = typer.Option(False, "--json", help="print JSON instead of text")
ModeOpt = typer.Option(DEFAULT_MODE, "--mode", help="dense | bm25 | hybrid")
UseOpt = typer.Option(True, "--use/--no-use", help="English questions: the USE cross-lingual route")
TranslateOpt = typer.Option(True, "--translate/--no-translate",
                            help="English questions: search BM25 with their Chinese translations (CC-CEDICT)")
TagOpt = typer.Option(None, "--tag", "-t", help="a tag for every document added, e.g. 2020 or 教育局 (repeatable; "
                                                "filter on it with --where tag=…)")
OcrOpt = typer.Option(True, "--ocr/--no-ocr", help="recognise the text of scanned PDF pages and images (OCR)")
GroupOpt = typer.Option("passages", "--group", help="passages | documents: rank whole documents by their "
                                                      "passages, each shown with its best passages")
SourceOpt = typer.Option(None, "--source", help="the name of the folder given, as ids carry it (SOURCE/path/in/it); "
                                                "default: the folder's own name")
IncludeOpt = typer.Option(None, "--include", help="only the folder's files matching this pattern, e.g. '*.docx' or "
                                                  "'2024/*' (repeatable; kept for `sync`)")
ExcludeOpt = typer.Option(None, "--exclude", help="not the folder's files matching this pattern, e.g. '草稿/*' "
                                                  "(repeatable; kept for `sync`)")
WhereOpt = typer.Option(None, "--where", "-w", help="only documents where FIELD OP VALUE holds, e.g. type=pdf, "
                                                    "year>=2020, tag=党建, folder=reports (repeatable: all must hold)")


def _engine(index: Optional[str], model: Optional[str], settings: IndexSettings | None = None) -> Engine:
    return Engine(index or os.environ.get(INDEX_ENV) or str(DEFAULT_INDEX), model=model, settings=settings)


def _user_terms(words: Optional[list[str]], files: Optional[list[Path]]) -> tuple[str, ...]:
    """Terms jieba must keep whole: given one by one, or one per line in UTF-8 files."""
    terms = list(words or [])
    for path in files or []:
        if not path.is_file():
            raise IndexerError(f"{path}: no such user dictionary file")
        terms += [line.split()[0] for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return tuple(dict.fromkeys(terms))


def _synonyms(path: Optional[Path]) -> list[str] | None:
    """The lines of a UTF-8 synonyms file (one group per line)."""
    if path is None:
        return None
    if not path.is_file():
        raise IndexerError(f"{path}: no such synonyms file")
    return path.read_text(encoding="utf-8-sig").splitlines()


def _progress() -> bool:
    return sys.stderr.isatty()


def _print_reports(reports, limit: int = 20) -> None:
    """One line per document; past `limit` documents, a count per status instead. Files that could
    not be read are listed last, one line each, and make the command fail once the rest is done."""
    done = [r for r in reports if r.status != "failed"]
    for r in done[:limit] if len(done) <= limit else []:
        enc = f", {r.encoding}" if r.encoding else ""
        typer.echo(f"{r.status:9} {r.doc_id}  ({r.chunks} chunks{enc})")
    if len(done) > limit:
        counts: dict[str, list[int]] = {}
        for r in done:
            counts.setdefault(r.status, []).append(r.chunks)
        for status, chunks in counts.items():
            typer.echo(f"{status:9} {len(chunks)} documents ({sum(chunks)} chunks)")
    failed = [r for r in reports if r.status == "failed"]
    if len(failed) == 1 and not done:
        raise IndexerError(failed[0].error)  # the one file given: its one line
    for r in failed:
        typer.echo(f"failed    {r.error}", err=True)
    if failed:
        raise IndexerError(f"{len(failed)} file{'s' * (len(failed) > 1)} could not be read (listed above); "
                           f"{'the other documents are in the index' if done else 'nothing else was read'}")


@app.command()
def build(paths: list[Path] = typer.Argument(..., help="files or folders (.txt .md .jsonl .docx .pdf)"),
          index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt,
          max_tokens: int = typer.Option(DEFAULTS.chunking.max_tokens, help="largest chunk, in model tokens"),
          overlap: int = typer.Option(DEFAULTS.chunking.overlap, help="sentences repeated when a paragraph is split"),
          index_type: str = typer.Option("auto", help="auto | flat | hnsw | ivf"),
          crosslingual: bool = typer.Option(True, "--crosslingual/--no-crosslingual",
                                            help="keep the USE index that English questions use (about 1/3 of build time)"),
          sentence_vectors: bool = typer.Option(False, "--sentence-vectors/--no-sentence-vectors",
                                                help="also embed every sentence with e5 and score a chunk by its best sentence "
                                                     "(better ranking of long paragraphs; about 2x the encoding)"),
          user_term: Optional[list[str]] = typer.Option(None, "--user-term", help="a word the keyword search keeps whole, e.g. 三重一大 (repeatable)"),
          user_dict: Optional[list[Path]] = typer.Option(None, "--user-dict", help="a file of such words, one per line"),
          synonyms: Optional[Path] = typer.Option(None, "--synonyms", help="a file of synonym groups, one per line "
                                                  "(民办学校 私立学校 民校): a question's keyword search takes each "
                                                  "word with its group; kept with the index"),
          analyzer: str = typer.Option("default", "--analyzer", help="default: words, bigrams and codes on text "
                                       "folded to Simplified; jieba: jieba words alone"),
          vectors: str = typer.Option("", "--vectors", envvar="INDEXER_VECTORS",
                                      help="keep the vectors in Milvus: milvus://HOST:PORT/NAME, milvus+tls://… or "
                                           "milvus-lite:///FILE.db (default: FAISS files in the index folder)"),
          tag: Optional[list[str]] = TagOpt, ocr: bool = OcrOpt, source: Optional[str] = SourceOpt,
          include: Optional[list[str]] = IncludeOpt, exclude: Optional[list[str]] = ExcludeOpt) -> None:
    """(Re)build an index from scratch from PATHS; each folder becomes a source that `sync` mirrors."""
    settings = IndexSettings.of(max_tokens=max_tokens, overlap=overlap, index_type=index_type,
                                user_terms=_user_terms(user_term, user_dict), crosslingual=crosslingual,
                                sentence_vectors=sentence_vectors, synonym_lines=_synonyms(synonyms),
                                synonyms_source=str(synonyms), analyzer=analyzer, vectors=vectors)
    engine = _engine(index, model, settings)
    reports = engine.build(paths, progress=_progress(), tags=tag or (), ocr=ocr, source=source, include=include or (),
                           exclude=exclude or ())
    info = engine.info()
    typer.echo(f"built {info['index']}: {info['documents']} documents, {info['chunks']} chunks, {info['index_type']}")
    _print_reports(reports)


@app.command()
def add(paths: list[Path] = typer.Argument(..., help="files or folders to add or replace"),
        index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt,
        skip_bad_lines: bool = typer.Option(False, help="in JSONL files, skip broken lines instead of failing"),
        tag: Optional[list[str]] = TagOpt, ocr: bool = OcrOpt, source: Optional[str] = SourceOpt,
        include: Optional[list[str]] = IncludeOpt, exclude: Optional[list[str]] = ExcludeOpt) -> None:
    """Add documents; a changed document replaces its old chunks, an unchanged one is skipped.
    A folder becomes a source (ids SOURCE/path/in/it) that `sync` mirrors later. A large folder is
    committed as it goes: after Ctrl-C, the same command picks up the rest."""
    _print_reports(_engine(index, model).add(paths, progress=_progress(), skip_bad_lines=skip_bad_lines,
                                             tags=tag or (), ocr=ocr, source=source, include=include or (),
                                             exclude=exclude or ()))


@app.command()
def sync(names: Optional[list[str]] = typer.Argument(None, help="sources to sync (default: every one)"),
         index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt,
         dry_run: bool = typer.Option(False, "--dry-run", help="print what would be done, change nothing"),
         max_delete: Optional[int] = typer.Option(None, "--max-delete", min=0, help="allow a sync to remove up to this many "
                                                  "documents of a source even when that is more than half of them"),
         ocr: bool = OcrOpt) -> None:
    """Mirror the sources' folders: new files added, changed ones read again, vanished ones removed.
    A file whose size and time are unchanged is not opened. A missing or empty folder, or a sync
    removing more than half of a source, is refused. After Ctrl-C, run it again to finish."""
    done = _engine(index, model).sync(names or (), dry_run=dry_run, max_delete=max_delete, progress=_progress(),
                                      ocr=ocr)
    for plan, reports in done:
        typer.echo(("would sync " if dry_run else "synced ") + plan.summary())
        if dry_run:
            for label, paths in (("new", plan.new), ("changed", plan.changed)):
                typer.echo("".join(f"  {label:8} {p.relative_to(plan.root).as_posix()}\n" for p in paths), nl=False)
            typer.echo("".join(f"  removed  {d}\n" for d in plan.removed), nl=False)
    _print_reports([r for _, reports in done for r in reports if r.status != "unchanged"])


PollOpt = typer.Option(False, "--poll", help="poll every folder for changes (network shares are polled anyway: "
                                            "they send no change events)")
IntervalOpt = typer.Option(5.0, "--interval", min=0.5, help="seconds between two polls of a polled folder")
DebounceOpt = typer.Option(2.0, "--debounce", min=0.1, help="quiet seconds after a change before its source is synced")


@app.command()
def watch(names: Optional[list[str]] = typer.Argument(None, help="sources to watch (default: every one)"),
          index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt, poll: bool = PollOpt,
          interval: float = IntervalOpt, debounce: float = DebounceOpt) -> None:
    """Keep the sources in sync while their files change, until Ctrl-C: a sync first, then one sync
    of a source each time its changes settle. A refused sync is reported and the watch goes on."""
    from .watching import Watcher

    import signal

    watcher = Watcher(_engine(index, model), tuple(names or ()), poll, interval, debounce,
                      lambda line: typer.echo(line, err=True))
    signal.signal(signal.SIGTERM, lambda *_: watcher.stop.set())  # a service manager's stop: as Ctrl-C
    try:
        watcher.run()
    except KeyboardInterrupt:
        pass
    typer.echo("stopped watching (the index is as last committed)", err=True)


source_app = typer.Typer(no_args_is_help=True, help="The folders the index follows (`add FOLDER` adds one).")
app.add_typer(source_app, name="source")


@source_app.command("list")
def source_list(index: Optional[str] = IndexOpt, as_json: bool = JsonOpt) -> None:
    """The sources: name, folder, documents, patterns, last sync."""
    sources = _engine(index, None).sources()
    if as_json:
        typer.echo(json.dumps(sources, ensure_ascii=False, indent=1))
        return
    for s in sources:
        patterns = " ".join([f"+{p}" for p in s["include"]] + [f"-{p}" for p in s["exclude"]])
        typer.echo(f"{s['name']}\t{s['root']}\t{s['documents']} documents\t"
                   f"synced {s.get('synced') or 'never'}" + (f"\t{patterns}" if patterns else ""))


@source_app.command("remove")
def source_remove(name: str = typer.Argument(..., help="the source's name, as `source list` shows it"),
                  index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt) -> None:
    """Stop following a source; its documents leave the index (its folder is not touched)."""
    reports = _engine(index, model).remove_source(name)
    typer.echo(f"source {name} removed with its {len(reports)} documents")


@app.command()
def remove(doc_ids: list[str] = typer.Argument(..., help="document ids, as `list` shows them"),
           index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt) -> None:
    """Remove documents and their vectors."""
    _print_reports(_engine(index, model).remove(doc_ids))


@app.command("list")
def list_docs(index: Optional[str] = IndexOpt, as_json: bool = JsonOpt) -> None:
    """List the indexed documents."""
    docs = _engine(index, None).documents()
    if as_json:
        typer.echo(json.dumps([d.__dict__ for d in docs], ensure_ascii=False, indent=1))
        return
    for d in docs:
        typer.echo(f"{d.doc_id}\t{d.chunks} chunks\t{d.chars} chars\t{d.title}\t{d.added}")


@app.command()
def info(index: Optional[str] = IndexOpt, as_json: bool = JsonOpt,
         recall: bool = typer.Option(False, "--recall", help="also measure the vector index's recall@10 "
                                     "against exact search (200 searches: seconds on a big index)")) -> None:
    """Show what the index holds and how it was built."""
    data = _engine(index, None).info(recall)
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=1))
        return
    for key, value in data.items():
        typer.echo(f"{key:20} {value}")


@app.command()
def check(index: Optional[str] = IndexOpt) -> None:
    """Verify that the index on disk is complete and consistent."""
    engine = _engine(index, None)
    problems = engine.check()
    if problems:
        raise IndexerError(f"{engine.shown}: {'; '.join(problems)}")
    info = engine.info()
    typer.echo(f"ok: {engine.shown} ({info['generation']}): {info['documents']} documents, {info['chunks']} chunks")


@app.command()
def rebuild(index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt) -> None:
    """Re-chunk and re-embed every document from its stored text, in one commit (after a model
    change, or to index titles' words with their chunks): the old index answers until it lands."""
    engine = _engine(index, model)
    reports = engine.rebuild(progress=_progress())
    typer.echo(f"rebuilt {engine.shown}: {len(reports)} documents, {sum(r.chunks for r in reports)} chunks")


@app.command()
def optimize(index: Optional[str] = IndexOpt) -> None:
    """Merge the index's segments into one, dropping removed documents' chunks for good."""
    engine = _engine(index, None)
    before, after = engine.optimize()
    typer.echo(f"optimized {engine.shown}: {before} segments merged into {after}")


@app.command()
def upgrade(index: Optional[str] = IndexOpt,
            keep_ids: bool = typer.Option(False, "--keep-ids", help="leave the documents of an index of before "
                                          "sources as they are, named by their paths (files added one by one)")) -> None:
    """Convert an index of an earlier format in place, and make the folders an index of before
    sources read into sources (ids SOURCE/path, as a build gives them now); say what was done,
    each id changed as `old → new`."""
    typer.echo(_engine(index, None).upgrade(sources=not keep_ids))


def _print_result(result: Result) -> None:
    if result.translations:
        typer.echo("translated: " + "; ".join(f"{e} → {' '.join(t)}" for e, t in result.translations))
    if not result.hits:
        typer.echo("no results")
    if result.documents is not None:
        for d in result.documents:
            typer.echo(f"{d.rank:2}. {d.score:.4f}  {d.doc_id}" + (f"  {d.title}" if d.title else ""))
            for h in d.hits:
                _print_hit(h, f"    › {h.section or '(no section)'}", "      ")
        return
    for h in result.hits:
        where = f"{h.doc_id} › {h.section}" if h.section else h.doc_id
        _print_hit(h, f"{h.rank:2}. {h.score:.4f}  {where}", "    ")


def _print_hit(h, head: str, indent: str) -> None:
    """A passage: where it is, its text, its answering sentence (») and why it ranks there."""
    typer.echo(f"{head}  [{h.chunk_id}, {h.where + ', ' if h.where else ''}chars {h.start}–{h.end}]")
    typer.echo(f"{indent}{h.text}")
    if h.sentence:
        typer.echo(f"{indent}» {h.sentence}  [chars {h.sentence_start}–{h.sentence_end}]")
    routes = h.why.get("routes", {})
    if routes:
        parts = " + ".join(f"{name} {r['score']:.4g} → {r['part']:.3f}" for name, r in routes.items())
        matched = "、".join(h.why.get("matched", []))
        typer.echo(f"{indent}why: {parts} = {h.score:.4f}" + (f"; terms matched: {matched}" if matched else ""))
    typer.echo("")


@app.command()
def search(query: str = typer.Argument(..., help="the question, in any language"),
           index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt,
           k: int = typer.Option(5, "-k", "--top-k", help="how many passages"),
           doc: Optional[list[str]] = typer.Option(None, "--doc", help="search only these document ids"),
           min_score: Optional[float] = typer.Option(None, help="drop hits scoring below this"),
           where: Optional[list[str]] = WhereOpt, group: str = GroupOpt,
           mode: str = ModeOpt, use: bool = UseOpt, translate: bool = TranslateOpt, as_json: bool = JsonOpt) -> None:
    """Search the index with one question; each hit marks its answering sentence (») and says why it
    ranks there. Quoted phrases ("三重一大") must occur in a hit; -word and -"a phrase" exclude."""
    options = SearchOptions(k, mode, group, tuple(where or ()), doc, min_score, use, translate)
    result = _engine(index, model).answer([query], options)[0]
    if as_json:
        typer.echo(json.dumps(result.to_json(), ensure_ascii=False, indent=1))
    else:
        _print_result(result)


@app.command()
def batch(queries: Path = typer.Argument(..., help="questions: .txt (one per line), .csv (query column) or .jsonl"),
          output: Path = typer.Option(..., "-o", "--output", help="results file, .jsonl or .csv"),
          index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt,
          k: int = typer.Option(10, "-k", "--top-k", help="passages per question"), mode: str = ModeOpt,
          where: Optional[list[str]] = WhereOpt, group: str = GroupOpt,
          use: bool = UseOpt, translate: bool = TranslateOpt) -> None:
    """Answer a file of questions; questions are encoded in batches. A question may carry its own
    filters (JSONL "where": [...], CSV column where: filters separated by ";")."""
    questions = read_questions(queries)
    options = SearchOptions(k, mode, group, tuple(where or ()), use=use, translate=translate)
    results = answer(_engine(index, model), questions, options)
    write_results(output, questions, results)
    typer.echo(f"{len(questions)} questions → {output}")


@app.command("eval")
def evaluate_cmd(labelled: Path = typer.Argument(..., help='JSONL: {"query", "relevant": [doc ids or exact substrings]}'),
                 index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt,
                 mode: str = typer.Option(DEFAULT_MODE, "--mode", help="dense | bm25 | hybrid | all"),
                 k: int = typer.Option(10, "-k", help="depth for Recall and MRR"),
                 use: bool = UseOpt, translate: bool = TranslateOpt,
                 group: str = typer.Option("auto", "--group", help="auto | passages | documents: auto scores documents "
                                                                  "when every label is a document id"),
                 json_out: Optional[Path] = typer.Option(None, "--json", help="also write the figures here")) -> None:
    """Score retrieval on labelled questions: Hit@1, Hit@3, Recall@k, MRR@k."""
    labels = read_labelled(labelled)
    engine = _engine(index, model)
    modes = list(MODES) if mode == "all" else [mode]
    rows = {m: evaluate(engine, labels, m, k, group, use=use, translate=translate) for m in modes}
    keys = [key for key in next(iter(rows.values())) if key != "n"]
    typer.echo(f"{labelled} ({len(labels)} questions, index {engine.shown})")
    typer.echo(f"{'mode':8}" + "".join(f"{key:>11}" for key in keys))
    for m, row in rows.items():
        typer.echo(f"{m:8}" + "".join(f"{row[key]:11.3f}" for key in keys))
    if "hybrid" in rows and len(rows) > 1:
        mrr = next(key for key in keys if key.startswith("mrr"))
        best = max((m for m in rows if m != "hybrid"), key=lambda m: rows[m][mrr])
        gap = rows["hybrid"][mrr] - rows[best][mrr]
        typer.echo(f"best single route: {best} ({mrr} {rows[best][mrr]:.3f}); hybrid {gap:+.3f} against it"
                   + ("  <- the fusion loses to one of its routes" if gap < -0.005 else ""))
    if json_out:
        json_out.write_text(json.dumps({"labelled": str(labelled), "index": engine.shown, "results": rows},
                                       indent=1), encoding="utf-8")


AccessOpt = typer.Option(None, "--access", help="the access file of hashed keys (default $INDEXER_ACCESS or access.json)")
AllowedHostOpt = typer.Option(None, "--allowed-host", envvar="INDEXER_ALLOWED_HOSTS",
                              help="a host name colleagues reach this server by, beyond this machine's own names and "
                                   "addresses (repeatable; *.example.com for a domain's names; * for any)")
TrustedProxyOpt = typer.Option(None, "--trusted-proxy", envvar="INDEXER_TRUSTED_PROXIES",
                               help="a reverse proxy's address or network whose X-Forwarded-For is believed (repeatable)")
KeyRateOpt = typer.Option(KEY_RATE, envvar="INDEXER_KEY_RATE",
                          help="requests per second per key (bursts of twice that; 0: no limit)")
AddressRateOpt = typer.Option(ADDRESS_RATE, envvar="INDEXER_ADDRESS_RATE",
                              help="requests per second per client address without a key (0: no limit)")


def _warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


@app.command()
def serve(index: Optional[str] = IndexOpt, model: Optional[str] = ModelOpt,
          host: str = typer.Option("127.0.0.1", help="address to listen on; 0.0.0.0 opens it to the network"),
          port: int = typer.Option(8000, help="port to listen on"), access: Optional[Path] = AccessOpt,
          allowed_host: Optional[list[str]] = AllowedHostOpt, trusted_proxy: Optional[list[str]] = TrustedProxyOpt,
          key_rate: float = KeyRateOpt, address_rate: float = AddressRateOpt,
          max_k: int = typer.Option(100, envvar="INDEXER_API_MAX_K", help="largest k a request may ask for"),
          max_batch: int = typer.Option(256, envvar="INDEXER_API_MAX_BATCH", help="most questions in one /batch"),
          max_body_kb: int = typer.Option(1024, envvar="INDEXER_API_MAX_BODY_KB", help="largest JSON request body, KB"),
          max_upload_mb: int = typer.Option(50, envvar="INDEXER_API_MAX_UPLOAD_MB", help="largest upload request, MB"),
          watch: bool = typer.Option(False, "--watch", help="keep the index's sources in sync while serving (see `watch`)"),
          poll: bool = PollOpt) -> None:
    """Serve the HTTP API (OpenAPI page at /docs); keys go in `Authorization: Bearer KEY`. At the
    first start (no write key yet) a write key is made and shown once on the terminal."""
    from .access import access_path
    from .api import ServeSettings, serve as run
    from .guard import first_start
    from .watching import Watcher

    if watch:
        Watcher(_engine(index, model)).sources()  # nothing to watch: refused before the server starts

    settings = ServeSettings(index=index or os.environ.get(INDEX_ENV) or str(DEFAULT_INDEX), access=access_path(access),
                             model=model, host=host, port=port, max_k=max_k, max_batch=max_batch,
                             max_body_bytes=max_body_kb << 10, max_upload_bytes=max_upload_mb << 20,
                             allowed_hosts=tuple(allowed_host or ()), trusted_proxies=tuple(trusted_proxy or ()),
                             key_rate=key_rate, address_rate=address_rate, watch=watch, poll=poll)
    first_start(settings.access, _warn)
    run(settings)


@app.command()
def page(index: Optional[str] = IndexOpt, access: Optional[Path] = AccessOpt,
         host: str = typer.Option("127.0.0.1", help="address to listen on; 0.0.0.0 opens it to the network"),
         port: int = typer.Option(8501, help="port to listen on"),
         allowed_host: Optional[list[str]] = AllowedHostOpt, trusted_proxy: Optional[list[str]] = TrustedProxyOpt,
         key_rate: float = KeyRateOpt, address_rate: float = AddressRateOpt) -> None:
    """Serve the search page (what `make run` starts). Each start shows a one-time login link on the
    terminal that signs its browser in; the first also makes the write key and shows it once."""
    from .access import access_path
    from .pageserver import PageSettings, run

    run(PageSettings(index=index or os.environ.get(INDEX_ENV) or str(DEFAULT_INDEX), access=access_path(access),
                     host=host, port=port, allowed_hosts=tuple(allowed_host or ()),
                     trusted_proxies=tuple(trusted_proxy or ()), key_rate=key_rate, address_rate=address_rate), _warn)


access_app = typer.Typer(no_args_is_help=True, help="The keys that writes (and, optionally, reads) need, and "
                                                    "readers bound to filters.")
app.add_typer(access_app, name="access")


def _new_key() -> str:
    """A key from stdin (its first line) or, at a terminal, typed twice without echo."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().strip()
    import getpass

    key = getpass.getpass("new key: ")
    if getpass.getpass("again: ") != key:
        raise IndexerError("the two keys differ; nothing was changed")
    return key


def _set_key(right: str, access: Optional[Path]) -> None:
    from .access import access_path, set_key

    path = access_path(access)
    set_key(path, right, _new_key())
    typer.echo(f"{right} key set in {path} (stored hashed; a running server or page applies it at once)")


@access_app.command("set-write-key")
def set_write_key(access: Optional[Path] = AccessOpt) -> None:
    """Set the write key (the page's password too), from stdin or a prompt."""
    _set_key("write", access)


@access_app.command("set-read-key")
def set_read_key(access: Optional[Path] = AccessOpt) -> None:
    """Set a read key that reads everything: then searching needs a key."""
    _set_key("read", access)


@access_app.command("add-reader")
def add_reader(name: str = typer.Argument(..., help="the reader's name, e.g. 教育科"),
               where: list[str] = typer.Option(..., "--where", "-w", help="a filter its documents meet, e.g. "
                                               "folder=教育科 or tag=教育科 (repeatable: all must hold)"),
               key_stdin: bool = typer.Option(False, "--key-stdin", help="take the key from stdin (or a prompt) "
                                              "instead of making one"),
               access: Optional[Path] = AccessOpt) -> None:
    """Add (or replace) a reader whose key reads only the documents its filters allow: its searches,
    document lists, counts and texts. Then searching needs a key. The key made is shown once."""
    from .access import access_path, add_reader as add

    path = access_path(access)
    key = add(path, name, where, _new_key() if key_stdin else None)
    typer.echo(f"reader {name!r} set in {path}, reading only where {' and '.join(where)}"
               + ("" if key_stdin else f"; its key (shown this once):\n{key}"))


@access_app.command("remove-reader")
def remove_reader(name: str = typer.Argument(..., help="the reader's name"), access: Optional[Path] = AccessOpt) -> None:
    """Remove a reader (its key stops working at once)."""
    _clear(name, access)


@access_app.command("clear")
def clear_key(right: str = typer.Argument(..., help="write | read"), access: Optional[Path] = AccessOpt) -> None:
    """Remove the write or the read key (without a write key, no one can write)."""
    if right not in ("write", "read"):
        raise IndexerError(f"unknown key {right!r}; choose write or read (a reader: access remove-reader NAME)")
    _clear(right, access)


def _clear(name: str, access: Optional[Path]) -> None:
    from .access import access_path, remove_key

    path = access_path(access)
    typer.echo(f"{name} key removed from {path}" if remove_key(path, name) else f"no {name} key in {path}")


@access_app.command("show")
def show_access(access: Optional[Path] = AccessOpt) -> None:
    """Which keys are set, with their rights and scopes (never the keys or their hashes)."""
    from .access import access_path, describe

    path = access_path(access)
    lines = describe(path)
    typer.echo(f"{path}: " + ("no keys" if not lines else f"{len(lines)} key{'s' * (len(lines) > 1)}"))
    for line in lines:
        typer.echo(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    """Run the app; every failure is one line on stderr and a non-zero exit."""
    try:
        app(args=argv, standalone_mode=False)
        return 0
    except (click.exceptions.Exit, typer.Exit) as exc:
        return exc.exit_code
    except (click.ClickException, typer.TyperException) as exc:  # typer keeps a click of its own: both
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        print("interrupted; the index is as last committed (nothing half-written)", file=sys.stderr)
        return 130
    except IndexerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - never a traceback unless asked for
        if os.environ.get("INDEXER_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (INDEXER_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
