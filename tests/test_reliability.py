"""Bad input, damaged indexes, killed writers and concurrent use: nothing lost, one clear line."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import zipfile
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, SPEECH, assert_same_ranking
from indexer.chunking import ChunkSettings, chunk_document, estimate_tokens
from indexer.cli import main
from indexer.engine import Engine
from indexer.searching import clean_query
from indexer.errors import IndexerError, QueryError
from indexer.highlight import highlight_spans, to_html, worth_marking
from indexer.analysis import Segmenter
from indexer.reading import Document, ReadError, decode_bytes, read_paths
from indexer.store import Snapshot

QUESTION = "私立学校怎样建立党组织？"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, needle: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err


# ---------------------------------------------------------------- bad documents


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


def _pdf_without_text(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60)  # drawing only: no text layer, like a scan
    pdf.output(str(path))


BAD_FILES = {
    "empty.txt": (b"", "empty"),
    "blank.txt": (b"  \n\t\n   ", "empty"),
    "image.txt": (_png(), "binary"),
    "archive.txt": (_zip(), "binary"),
    "nul.txt": ("党建\x00工作".encode() + b"\x00" * 20 + "学习".encode(), "binary"),
    "undecodable.txt": (bytes([0x81, 0x30, 0xFE, 0xFF, 0x80, 0x00, 0x9F, 0x01]) * 64, "binary"),
    "broken.docx": (b"PK\x03\x04 this is not really a docx", ".docx"),
    "broken.jsonl": (b'{"id": "a", "text": "\xe7\xac\xac\xe4\xb8\x80"}\n{"id": "b", "text": \n', "line 2"),
    "dupes.jsonl": ('{"id": "a", "text": "一"}\n{"id": "a", "text": "二"}\n'.encode(), "duplicate id"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_document_is_one_line_and_index_unchanged(name, speech_engine, tmp_path, capsys):
    data, needle = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(data)
    gen = Snapshot.load(speech_engine.path).generation
    code, _, err = cli(capsys, "add", path, "--index", speech_engine.path)
    one_line_error(code, err, needle)
    assert name in err
    assert Snapshot.load(speech_engine.path).generation == gen


def test_pdf_without_text_layer(tmp_path):
    _pdf_without_text(tmp_path / "scan.pdf")
    with pytest.raises(ReadError, match="no text layer"):
        read_paths([tmp_path / "scan.pdf"])


def test_jsonl_broken_line_kept_only_when_asked(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "a", "text": "第一篇"}\nnot json\n{"id": "c", "text": "第三篇"}\n', encoding="utf-8")
    with pytest.raises(ReadError, match="line 2"):
        read_paths([path])
    assert [d.doc_id for d in read_paths([path], skip_bad_lines=True)] == ["a", "c"]


def test_missing_path_and_folder_without_documents(tmp_path, capsys):
    code, _, err = cli(capsys, "build", tmp_path / "nope.txt", "--index", tmp_path / "ix")
    one_line_error(code, err, "no such file")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "picture.gif").write_bytes(_png())
    code, _, err = cli(capsys, "build", tmp_path / "folder", "--index", tmp_path / "ix")
    one_line_error(code, err, "no readable files")
    assert not (tmp_path / "ix").exists()


def test_fifty_megabyte_single_line(tmp_path, capsys):
    """Over the per-file limit: refused at once by size, before any decoding or embedding."""
    line = ("加强党的政治建设就是要坚定政治信仰" * 1_000_000).encode()[:50_000_000]
    path = tmp_path / "huge.txt"
    path.write_bytes(line)
    code, _, err = cli(capsys, "build", path, "--index", tmp_path / "ix")
    one_line_error(code, err, "over the 20 MB limit")


def test_long_single_line_chunks_without_loss():
    """Under the limit, a one-line multi-megabyte text is cut into fitting pieces, losing nothing."""
    sentence = "加强党的政治建设，坚定政治信仰。"
    text = sentence * 200_000  # 3.2 M characters, one line
    chunks = chunk_document(Document("big", text), ChunkSettings(), estimate_tokens)
    assert all(estimate_tokens(c.text) <= ChunkSettings().max_tokens for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(b.start <= a.end for a, b in zip(chunks, chunks[1:]))  # contiguous or overlapping


# ---------------------------------------------------------------- bad queries


@pytest.mark.parametrize("query, error", [
    ("", "empty"), ("   \t\n", "empty"), ("\x00\x07\x1b", "empty"),
])
def test_empty_queries(speech_engine, query, error):
    with pytest.raises(QueryError, match=error):
        speech_engine.search(query)


@pytest.mark.parametrize("query", ["党建" * 50_000, "？！。，……", "😀🎉🇨🇳", "党\x00建\x1b工作", "<script>alert(1)</script>"])
def test_odd_queries_still_answer(speech_engine, query):
    for mode in ("dense", "bm25", "hybrid"):
        hits = speech_engine.search(query, k=3, mode=mode)
        assert len(hits) <= 3 and all(h.doc_id == "speech.txt" for h in hits)


@pytest.mark.parametrize("k", [0, -5])
def test_bad_k(speech_engine, k, capsys):
    with pytest.raises(QueryError, match="k must be at least 1"):
        speech_engine.search(QUESTION, k=k)
    code, _, err = cli(capsys, "search", QUESTION, "-k", k, "--index", speech_engine.path)
    one_line_error(code, err, "k must be at least 1")


def test_k_larger_than_index(speech_engine):
    assert len(speech_engine.search(QUESTION, k=10_000)) == len(speech_engine.store)


@pytest.mark.parametrize("name, content, needle", [
    ("q.jsonl", '{"query": "党建"}\n{"query": \n', ":2"),
    ("q2.jsonl", '{"id": 1}\n', "query"),
    ("q.csv", "question,id\n党建,1\n", "'query' column"),
    ("empty.txt", "\n\n", "no questions"),
])
def test_malformed_batch_files(speech_engine, tmp_path, capsys, name, content, needle):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    code, _, err = cli(capsys, "batch", path, "-o", tmp_path / "out.jsonl", "--index", speech_engine.path)
    one_line_error(code, err, needle)
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------- bad indexes


def _sql(path: Path, statement: str, *params) -> None:
    """Change the record database behind the store's back; closed, so SQLite has checkpointed its
    log into the file before the test notes the files' sizes."""
    with closing(sqlite3.connect(path / "records.db")) as db, db:
        db.execute(statement, params)


def _manifest_field(name: str, value):
    def damage(path: Path) -> None:
        with closing(sqlite3.connect(path / "records.db")) as db, db:
            data = json.loads(db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()[0])
            data[name] = value
            db.execute("UPDATE meta SET value = ? WHERE key = 'manifest'", [json.dumps(data)])
    return damage


def _truncate(name: str):
    def damage(path: Path) -> None:
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: len(data) // 2])
    return damage


DAMAGES = {
    "missing vectors": (lambda path: (path / "seg-000001" / "vectors.npy").unlink(), "vectors.npy is missing"),
    "truncated vectors": (_truncate("seg-000001/vectors.npy"), "vectors.npy is damaged"),
    "truncated postings": (_truncate("seg-000001/rows.npy"), "rows.npy is damaged"),
    "truncated records": (_truncate("records.db"), "records.db is damaged"),
    "missing segment": (lambda path: shutil.rmtree(path / "seg-000001"), "seg-000001 is missing"),
    "newer format": (_manifest_field("format_version", 99), "newer than this tool"),
    "other dimension": (_manifest_field("dim", 768), "expected (23, 768)"),
    "lost chunk record": (lambda path: _sql(path, "DELETE FROM chunks WHERE id = 6"),
                          "the segments hold 23 rows but there are 22 chunk records"),
    "missing record ids": (lambda path: (path / "seg-000001" / "ids.npy").unlink(), "ids.npy is missing"),
    "no records": (lambda path: (path / "records.db").unlink(), "not an index folder"),
}


def _files(path: Path) -> list[tuple[str, int]]:
    """Every file of an index folder with its size (SQLite's -wal and -shm beside, which opening makes)."""
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*")
                  if p.is_file() and not p.name.endswith(("-wal", "-shm")))


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_damaged_index_is_refused_not_repaired(case, speech_index, tmp_path, capsys):
    damage, needle = DAMAGES[case]
    path = tmp_path / "index"
    shutil.copytree(speech_index, path)
    damage(path)
    before = _files(path)
    for command in (["check"], ["search", QUESTION], ["add", str(SPEECH)], ["optimize"]):
        code, _, err = cli(capsys, *command, "--index", path)
        one_line_error(code, err, needle)
    assert _files(path) == before  # nothing "repaired"


def test_check_finds_nan_in_vectors_and_sentence_table(speech_index, tmp_path, capsys):
    """`check` reads every vector and the sentence table (a block at a time, from the maps) and
    names the segment whose numbers are not finite; a search still opens the index."""
    import numpy as np

    path = tmp_path / "index"
    shutil.copytree(speech_index, path)
    for name, value in (("vectors.npy", np.nan), ("xl_sentences.npy", np.inf)):
        array = np.load(path / "seg-000001" / name, mmap_mode="r+")
        array[3, 7] = value
        array.flush()
        del array
    code, _, err = cli(capsys, "check", "--index", path)
    one_line_error(code, err, "segment 1: vectors contain NaN or infinity")
    assert "segment 1: cross-lingual vectors contain NaN or infinity" in err
    code, out, _ = cli(capsys, "search", QUESTION, "--index", path)
    assert code == 0 and out


def test_check_finds_records_that_disagree(speech_index, tmp_path, capsys):
    """`check` compares the chunk records with the segments' rows (a row whose record is gone, here
    renumbered so that the counts still agree) and, in SQL, in one pass over the live ones: a chunk
    id held twice, a chunk of a document the index does not know, a document whose live chunks do
    not match its record's count; each named with an example, in one line."""
    path = tmp_path / "index"
    shutil.copytree(speech_index, path)
    _sql(path, "UPDATE chunks SET chunk_id = (SELECT chunk_id FROM chunks WHERE id = 1) WHERE id = 2")
    _sql(path, "UPDATE chunks SET doc_id = 'ghost.txt' WHERE id = 3")
    _sql(path, "UPDATE chunks SET id = 999 WHERE id = 4")
    code, _, err = cli(capsys, "check", "--index", path)
    one_line_error(code, err, "duplicate chunk ids ['speech.txt#0']")
    assert "rows without a chunk record [4]" in err and "chunk records no row holds [999]" in err
    assert "chunks of unknown documents ['ghost.txt']" in err
    assert "chunk count disagrees with the manifest for ['speech.txt']" in err


def test_missing_index_folder(tmp_path, capsys):
    for command in (["check"], ["search", QUESTION], ["info"], ["list"], ["remove", "x"], ["optimize"]):
        code, _, err = cli(capsys, *command, "--index", tmp_path / "none")
        one_line_error(code, err, "no index at")


# ---------------------------------------------------------------- killed writers

PAUSE = """
import os, sys, time
point = os.environ["PAUSE_AT"]
import indexer.store.writer as fs
import indexer.embedding as embedding

def pause():
    print("paused", flush=True)
    time.sleep(60)

if point == "encode":
    orig = embedding.Encoder.encode_documents
    def slow(self, *a, **k):
        out = orig(self, *a, **k); pause(); return out
    embedding.Encoder.encode_documents = slow
elif point == "before-rename":  # the segment's files written, not yet in place
    real = os.replace
    def replace(src, dst):
        pause() if ".tmp" in str(src) else None
        real(src, dst)
    fs.os.replace = replace
elif point == "before-commit":  # the transaction holds everything but has not committed
    orig = fs.Writer._commit_meta
    def commit(self, db, gen):
        orig(self, db, gen); pause()
    fs.Writer._commit_meta = commit
elif point == "upgrade-before-commit":  # format 2 → 3: ids.npy written, the records' transaction open
    from contextlib import contextmanager
    import indexer.store.migrate as legacy
    real_transaction = legacy.Records.transaction
    @contextmanager
    def transaction(self):
        with real_transaction(self) as db:
            yield db
            pause()
    legacy.Records.transaction = transaction
else:  # after-commit: committed, nothing cleaned up yet
    def after(self):
        pause()
    fs.Writer._after_commit = after
from indexer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _kill_at(point: str, args: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", PAUSE, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PAUSE_AT": point})
    try:
        line = proc.stdout.readline().strip()
        assert line == "paused", proc.stderr.read()[-2000:]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("command, point", [
    ("build", "encode"), ("build", "before-rename"), ("build", "before-commit"), ("build", "after-commit"),
    ("add", "encode"), ("add", "before-commit"), ("add", "after-commit"),
    ("remove", "before-commit"), ("remove", "after-commit"),
    ("optimize", "before-rename"), ("optimize", "before-commit"), ("optimize", "after-commit"),
])
def test_sigkill_leaves_old_or_new_index(command, point, speech_engine, tmp_path, capsys):
    """A writer killed anywhere (a write's segment, its commit, a merge) leaves the old index or
    the new one, complete; the next writer works and clears what the killed one left."""
    other = tmp_path / "other.txt"
    other.write_text("学校图书馆周末开放，学生可以凭借阅证借阅图书和报刊。", encoding="utf-8")
    if command in ("remove", "optimize"):
        speech_engine.add([other])  # two segments: something to remove, something to merge
    before = speech_engine.search(QUESTION, k=5)
    gen = speech_engine.store.generation
    args = {"build": ["build", str(other)], "add": ["add", str(other)], "remove": ["remove", "other.txt"],
            "optimize": ["optimize"]}[command]
    _kill_at(point, [*args, "--index", str(speech_engine.path)])
    code, out, err = cli(capsys, "check", "--index", speech_engine.path)
    assert code == 0 and out.startswith("ok:"), err
    reloaded = Engine(speech_engine.path, encoder=speech_engine.encoder)
    if reloaded.store.generation == gen:  # the old index, untouched
        assert point != "after-commit"
        assert_same_ranking(reloaded.search(QUESTION, k=5), before)
    else:  # the commit had happened: the new index, complete
        assert point == "after-commit"
        expected = {"build": {"other.txt"}, "add": {"speech.txt", "other.txt"}, "remove": {"speech.txt"},
                    "optimize": {"speech.txt", "other.txt"}}[command]
        assert {d.doc_id for d in reloaded.documents()} == expected
    third = tmp_path / "third.txt"
    third.write_text("学校运动会定于下月举行，各班要提前做好报名工作。", encoding="utf-8")
    reloaded.add([SPEECH, third])  # and the next writer works, and clears what the killed one left
    assert reloaded.check() == []
    live = {f"seg-{s:06d}" for s, _, _ in reloaded.store.records.segments()}
    assert not [p.name for p in speech_engine.path.iterdir() if p.name.endswith(".tmp")]
    assert {p.name for p in speech_engine.path.glob("seg-*")} <= live | {
        f"seg-{s:06d}" for (s,) in reloaded.store.records.query("SELECT seg FROM retired")}


def test_sigkill_in_an_upgrade_leaves_the_old_format_or_the_new(speech_engine, tmp_path, capsys):
    """An upgrade from format 2 killed with its ids written and its transaction open leaves format
    2 whole: refused with the upgrade command, never misread; the upgrade run again converts it."""
    from conftest import write_format_two

    before = speech_engine.search(QUESTION, k=5)
    old = tmp_path / "old"
    write_format_two(speech_engine.path, old)
    _kill_at("upgrade-before-commit", ["upgrade", "--index", str(old)])
    code, _, err = cli(capsys, "search", QUESTION, "--index", old)
    one_line_error(code, err, f"format 2 (its chunk records keyed by segment and row); convert it once with "
                              f"`python -m indexer upgrade --index {old}`")
    code, out, _ = cli(capsys, "upgrade", "--index", old)
    assert code == 0 and "from format 2 to 3" in out
    code, out, err = cli(capsys, "check", "--index", old)
    assert code == 0 and out.startswith("ok:"), err
    assert_same_ranking(Engine(old, encoder=speech_engine.encoder).search(QUESTION, k=5), before)


# ---------------------------------------------------------------- concurrent use


def test_two_writers_are_serialised(speech_engine, tmp_path):
    docs = []
    for name, text in (("a.txt", "校园安全教育每学期至少开展两次应急疏散演练。"), ("b.txt", "各校要建立家校沟通机制，定期召开家长会。")):
        docs.append(tmp_path / name)
        docs[-1].write_text(text, encoding="utf-8")
    procs = [subprocess.Popen([sys.executable, "-m", "indexer", "add", str(d), "--index", str(speech_engine.path)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in docs]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    reloaded = Engine(speech_engine.path, encoder=speech_engine.encoder)
    assert {d.doc_id for d in reloaded.documents()} == {"speech.txt", "a.txt", "b.txt"}
    assert reloaded.check() == []


def test_second_writer_fails_clearly_when_lock_held(speech_engine, tmp_path):
    from filelock import FileLock

    doc = tmp_path / "c.txt"
    doc.write_text("学校要落实课后服务，满足学生多样化需求。", encoding="utf-8")
    with FileLock(str(speech_engine.path) + ".lock"):
        out = subprocess.run([sys.executable, "-m", "indexer", "add", str(doc), "--index", str(speech_engine.path)],
                             cwd=ROOT, capture_output=True, text=True, env={**os.environ, "INDEXER_LOCK_TIMEOUT": "1"})
    one_line_error(out.returncode, out.stderr, "being updated by another process")


def test_reader_answers_from_old_index_during_update_then_switches(speech_engine, tmp_path):
    reader = Engine(speech_engine.path, encoder=speech_engine.encoder)
    assert reader.search(QUESTION, k=1)
    doc = tmp_path / "d.txt"
    doc.write_text("全市学校开展垃圾分类进校园活动，每个班级设立环保小卫士。", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-c", PAUSE, "add", str(doc), "--index", str(speech_engine.path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PAUSE_AT": "before-rename"})
    try:
        assert proc.stdout.readline().strip() == "paused"
        hits = reader.search("垃圾分类", k=3)  # the writer is mid-save: the old index answers
        assert hits and all(h.doc_id == "speech.txt" for h in hits)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    Engine(speech_engine.path, encoder=speech_engine.encoder).add([doc])  # another process completes it
    assert reader.search("垃圾分类 环保", k=1, mode="hybrid")[0].doc_id == "d.txt"  # reader switched


def test_engine_is_thread_safe_for_readers(speech_engine):
    errors: list[BaseException] = []

    def ask():
        try:
            for _ in range(3):
                assert speech_engine.search(QUESTION, k=2)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------- fuzzing (bounded)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_decode_bytes(data):
    try:
        text, encoding = decode_bytes(data, "fuzz.txt")
    except ReadError as exc:
        assert str(exc).startswith("fuzz.txt: ") and "\n" not in str(exc)
    else:
        assert isinstance(text, str) and encoding and "\r" not in text


@FUZZ
@given(st.text(max_size=400))
def test_fuzz_jsonl_reader(tmp_path_factory, line):
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    path.write_text(line, encoding="utf-8")
    try:
        docs = read_paths([path])
    except ReadError as exc:
        assert "f.jsonl" in str(exc)
    else:
        assert all(d.text.strip() for d in docs)


_SEGMENTER = Segmenter()  # loading jieba's dictionary once, not per example


@FUZZ
@given(st.text(max_size=300))
def test_fuzz_query_text_path(query):
    """Cleaning, keyword terms and highlighting never crash, whatever the characters."""
    try:
        cleaned = clean_query(query)
    except QueryError:
        assert not "".join(c for c in query if c.isprintable()).strip()
        return
    terms = worth_marking(_SEGMENTER.terms(cleaned))
    html = to_html("党建工作" + cleaned, highlight_spans("党建工作" + cleaned, terms))
    assert "<script" not in html


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=60))
def test_fuzz_search_with_real_model(speech_engine, query):
    try:
        hits = speech_engine.search(query, k=3, mode="hybrid")
    except QueryError:
        return
    assert len(hits) <= 3
    assert all(np.isfinite(h.score) for h in hits)


def test_every_error_is_an_indexer_error():
    """The CLI's one-line promise rests on expected failures being IndexerError subclasses."""
    assert issubclass(ReadError, IndexerError) and issubclass(QueryError, IndexerError)
