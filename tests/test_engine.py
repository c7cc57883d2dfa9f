"""The engine on the real speech with the real model: chunks, updates, persistence, batch."""
from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from conftest import chunks_of, BATCHED, SPEECH, assert_same_ranking, whole_table
from indexer.chunking import is_heading
from indexer.engine import Engine
from indexer.errors import ModelError, QueryError, StoreError
from indexer.reading import Document
from indexer.store import Snapshot

QUESTION = "私立学校怎样建立党组织？"
MINBAN = "市教育局党组继续贯彻"


def test_speech_chunks(speech_engine, speech_text):
    chunks = chunks_of(speech_engine.store, "speech.txt")
    assert 18 <= len(chunks) <= 28
    for c in chunks:
        assert speech_text[c.start:c.end] == c.text
        lines = [line for line in c.text.split("\n") if line.strip()]
        assert any(len(line) >= 30 and not is_heading(line) for line in lines), c.text[:40]
        body_line = speech_text[:c.end].split("\n")[-1]
        expected = [line for line in speech_text[:c.end - len(body_line)].split("\n") if is_heading(line)]
        assert c.section == (expected[-1].strip() if expected else ""), (c.chunk_id, c.section)
    assert sum(1 for c in chunks if not c.section) == 2  # the advert block and the opening paragraph
    salutation = next(c for c in chunks if "同志们：" in c.text)
    assert "上周" in salutation.text


def test_question_ranks_minban_first(speech_engine):
    hits = speech_engine.search(QUESTION, k=3)
    assert hits[0].text.split("\n")[-1].startswith(MINBAN) or MINBAN in hits[0].text
    assert hits[0].section.startswith("四、加强民办学校党建工作")
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_add_same_document_twice_changes_nothing(speech_engine):
    gen = speech_engine.store.generation
    reports = speech_engine.add([SPEECH])
    assert [r.status for r in reports] == ["unchanged"]
    assert speech_engine.store.generation == gen


def test_changed_document_replaces_chunks_and_removed_never_returns(speech_engine, tmp_path):
    doc = tmp_path / "notice.txt"
    doc.write_text("关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛，每所学校至少派出一支代表队参加比赛。", encoding="utf-8")
    speech_engine.add([doc])
    assert speech_engine.search("足球比赛什么时候举行", k=1)[0].doc_id == "notice.txt"
    doc.write_text("关于开展校园合唱比赛的通知\n各中小学要在十一月组织合唱比赛，每所学校至少派出一支合唱团参加演出。", encoding="utf-8")
    assert [r.status for r in speech_engine.add([doc])] == ["replaced"]
    texts = [c.text for c in chunks_of(speech_engine.store, "notice.txt")]
    assert all("足球" not in t for t in texts) and any("合唱" in t for t in texts)
    speech_engine.remove(["notice.txt"])
    reloaded = Engine(speech_engine.path, encoder=speech_engine.encoder)
    for hits in reloaded.batch(["足球比赛", "合唱比赛", "校园活动通知"], k=50):
        assert all(h.doc_id == "speech.txt" for h in hits)
    assert len(reloaded.store.all_vectors()) == len(reloaded.store)


def test_update_roundtrip_equals_fresh_build(speech_engine, encoder, tmp_path):
    extra = tmp_path / "docs"
    extra.mkdir()
    (extra / "a.txt").write_text("学校食堂要严格执行食品安全管理制度，每天公示菜谱和食材来源。", encoding="utf-8")
    (extra / "b.md").write_text("# 教师培训\n\n暑假期间全市教师参加为期两周的信息技术应用能力提升培训。", encoding="utf-8")
    speech_engine.add([extra / "a.txt", extra / "b.md"])
    speech_engine.remove(["a.txt"])
    reloaded = Engine(speech_engine.path, encoder=encoder)
    fresh = Engine(tmp_path / "fresh", encoder=encoder)
    fresh.build([SPEECH])
    fresh.add([extra / "b.md"])
    queries = [QUESTION, "教师暑假培训", "食品安全", "党风廉政建设", "How are young cadres trained?"]
    # b.md was embedded beside a.txt here, alone there (conftest.BATCHED)
    for q, a, b in zip(queries, reloaded.batch(queries, k=10), fresh.batch(queries, k=10)):
        assert_same_ranking(a, b, q, BATCHED)


def test_batch_equals_search(speech_engine):
    queries = [QUESTION, "怎样加强党风廉政建设", "What is the role of Party branches in schools?", "三会一课"]
    for q, hits in zip(queries, speech_engine.batch(queries, k=5)):
        assert_same_ranking(hits, speech_engine.search(q, k=5), q)


def test_filter_and_min_score(speech_engine, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("民办学校应当依法建立党组织，私立学校的党建工作由教育主管部门负责指导。", encoding="utf-8")
    speech_engine.add([other])
    assert {h.doc_id for h in speech_engine.search(QUESTION, k=10, docs=["speech.txt"])} == {"speech.txt"}
    assert {h.doc_id for h in speech_engine.search(QUESTION, k=10, docs=["other.txt"])} == {"other.txt"}
    top = speech_engine.search(QUESTION, k=10)
    cut = top[2].score
    assert all(h.score >= cut for h in speech_engine.search(QUESTION, k=10, min_score=cut))
    with pytest.raises(QueryError):
        speech_engine.search(QUESTION, docs=["missing.txt"])


def test_encodings_give_same_chunks(encoder, tmp_path, speech_text):
    engines = {}
    for enc in ("utf-8", "gb18030", "utf-16"):
        folder = tmp_path / enc
        folder.mkdir()
        (folder / "speech.txt").write_bytes(speech_text.encode(enc))
        engines[enc] = Engine(tmp_path / f"ix-{enc}", encoder=encoder)
        reports = engines[enc].build([folder / "speech.txt"])
        assert reports[0].encoding.startswith(enc.split("-")[0].replace("gb18030", "gb18030"))
    base = [(c.text, c.start, c.end, c.section) for c in chunks_of(engines["utf-8"].store, "speech.txt")]
    for enc in ("gb18030", "utf-16"):
        assert [(c.text, c.start, c.end, c.section) for c in chunks_of(engines[enc].store, "speech.txt")] == base


def test_kill_during_build_leaves_previous_index(speech_engine, monkeypatch, tmp_path):
    before = [h.chunk_id for h in speech_engine.search(QUESTION, k=5)]
    gen = speech_engine.store.generation
    other = tmp_path / "new.txt"
    other.write_text("这是一份用来替换索引的新文件，内容与原来的讲话完全不同，只讲学校的体育活动安排。", encoding="utf-8")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the new generation was being written

    monkeypatch.setattr("indexer.store.writer.write_segment", crash)
    with pytest.raises(KeyboardInterrupt):
        speech_engine.build([other])
    monkeypatch.undo()
    reloaded = Engine(speech_engine.path, encoder=speech_engine.encoder)
    assert reloaded.store.generation == gen
    assert [h.chunk_id for h in reloaded.search(QUESTION, k=5)] == before
    assert reloaded.check() == []
    assert not [p for p in speech_engine.path.iterdir() if p.name.endswith(".tmp")]


def test_other_model_is_refused(speech_index, tmp_path):
    class Other:
        name, dim = "some-other-model", 768

    with pytest.raises(ModelError, match="built with model multilingual-e5-small"):
        Engine(speech_index, encoder=Other()).search(QUESTION)


def test_bad_queries(speech_engine):
    for q in ("", "   ", "\x00\x01"):
        with pytest.raises(QueryError):
            speech_engine.search(q)
    with pytest.raises(QueryError):
        speech_engine.search(QUESTION, k=0)
    assert len(speech_engine.search(QUESTION, k=1000)) == len(speech_engine.store)
    assert speech_engine.search("？！。" , k=3)  # only punctuation still gets an answer
    assert speech_engine.search("党建" * 5000, k=1)  # over-long question is cut, not an error


def test_missing_and_damaged_index(tmp_path, speech_index, encoder):
    with pytest.raises(StoreError, match="no index"):
        Engine(tmp_path / "nothing", encoder=encoder).search(QUESTION)
    broken = tmp_path / "broken"
    shutil.copytree(speech_index, broken)
    with sqlite3.connect(broken / "records.db") as db:
        db.execute("DELETE FROM chunks WHERE id = (SELECT max(id) FROM chunks)")
    with pytest.raises(StoreError, match="broken: the segments hold 23 rows but there are 22 chunk records"):
        Snapshot.load(broken)


def test_context_shows_neighbours(speech_engine):
    hit = speech_engine.search(QUESTION, k=1)[0]
    around = speech_engine.context(hit, before=1, after=1)
    assert [c.position for c in around] == [hit.position - 1, hit.position, hit.position + 1]


def test_approximate_index_reports_recall(speech_engine, encoder, tmp_path):
    """An HNSW index answers like exact search on the speech, and `info(recall=True)` reports its
    recall (plain `info`, which the page and /info call on every view, does not measure it)."""
    from indexer.engine import IndexSettings

    hnsw = Engine(tmp_path / "hnsw", encoder=encoder, settings=IndexSettings(index_type="hnsw"))
    hnsw.build([SPEECH])
    info = hnsw.info(recall=True)
    assert info["index_type"] == "hnsw" and 0.9 <= info["recall@10_vs_exact"] <= 1.0
    assert "recall@10_vs_exact" not in hnsw.info()
    assert speech_engine.info(recall=True)["recall@10_vs_exact"] is None  # exact: nothing to report
    assert_same_ranking(hnsw.search(QUESTION, k=3, mode="dense"), speech_engine.search(QUESTION, k=3, mode="dense"))


def _xl_of(engine: Engine) -> dict[str, tuple]:
    """chunk id → (USE passage vector, [(sentence span, sentence vector)]) as the store holds them."""
    store = engine.store
    xl = whole_table(store)
    out = {}
    for row, c in zip(store.rows_of().tolist(), store.all_chunks()):
        sel = xl.sentences_of(row)
        out[c.chunk_id] = (xl.chunks[row], list(zip(map(tuple, xl.spans[sel]), xl.sentences[sel])))
    return out


def test_cross_lingual_index_stays_in_step_through_add_replace_remove(speech_engine, tmp_path):
    """The USE vectors follow the rows through every update and a reload: each chunk keeps the
    vectors a fresh encoding of its own text gives, and `check` finds nothing wrong."""
    from indexer.crosslingual import sentence_spans
    from indexer.indexing import passage_text

    doc = tmp_path / "notice.txt"
    doc.write_text("关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛。每所学校至少派出一支代表队参加比赛。", encoding="utf-8")
    speech_engine.add([doc])
    doc.write_text("关于开展校园合唱比赛的通知\n各中小学要在十一月组织合唱比赛！每所学校至少派出一支合唱团。", encoding="utf-8")
    speech_engine.add([doc])
    other = tmp_path / "other.txt"
    other.write_text("学校食堂要严格执行食品安全管理制度。每天公示菜谱和食材来源。", encoding="utf-8")
    speech_engine.add([other])
    speech_engine.remove(["other.txt"])
    reloaded = Engine(speech_engine.path, encoder=speech_engine.encoder)
    assert reloaded.check() == []
    held = _xl_of(reloaded)
    chunks = reloaded.store.all_chunks()
    assert set(held) == {c.chunk_id for c in chunks} and len(chunks) == len(reloaded.store)
    use = reloaded.models.use()
    for c in chunks:
        vec, sentences = held[c.chunk_id]
        assert [span for span, _ in sentences] == sentence_spans(c.text)
        fresh = use.encode_documents([passage_text(c)] + [c.text[a:b] for a, b in sentence_spans(c.text)])
        kept = np.vstack([vec] + [v for _, v in sentences])
        assert np.sum(kept * fresh, axis=1).min() > 0.999  # bulk builds run USE in bf16: cosine, not equality
    assert not any("足球" in c.text for c in chunks) and any("合唱" in c.text for c in chunks)
    assert "USE" in reloaded.info()["crosslingual"] or "use" in reloaded.info()["crosslingual"]


def test_check_finds_a_damaged_or_missing_cross_lingual_file(speech_engine):
    seg = speech_engine.path / "seg-000001"
    owner = np.load(seg / "xl_owner.npy")
    np.save(seg / "xl_owner.npy", owner[::-1].copy())  # rows out of order
    problems = Engine(speech_engine.path, encoder=speech_engine.encoder).check()
    assert problems == ["segment 1: sentence owners are out of order or out of range"]
    (seg / "xl_spans.npy").unlink()
    with pytest.raises(StoreError, match="xl_spans.npy is missing"):
        Engine(speech_engine.path, encoder=speech_engine.encoder).search(QUESTION)

def test_index_without_cross_lingual_vectors(encoder, tmp_path):
    """--no-crosslingual: no USE file, `info` says off, English questions still get e5 and translated BM25."""
    from indexer.engine import IndexSettings

    engine = Engine(tmp_path / "plain", encoder=encoder, settings=IndexSettings(crosslingual=False))
    engine.build([SPEECH])
    assert engine.info()["crosslingual"] == "off" and not list(engine.store.sentence_tables())
    assert not list(engine.path.glob("seg-*/xl_*.npy"))
    result = engine.query(["How do private schools set up Party organisations?"], 5)[0]
    assert result.cross_lingual and "党组织" in result.terms and result.hits[0].sentence


def test_changed_document_embeds_only_its_changed_chunks(speech_engine, speech_text, tmp_path):
    """Editing one paragraph of the speech re-embeds that chunk alone; the others keep their
    vectors, and the result equals a fresh build of the edited text."""
    edited = speech_text.replace("市教育局党组继续贯彻", "市教育局党组今年继续认真贯彻")
    assert edited != speech_text
    folder = tmp_path / "v2"
    folder.mkdir()
    (folder / "speech.txt").write_text(edited, encoding="utf-8")
    before = {c.text: v for c, v in zip(*speech_engine.store.document_vectors("speech.txt")[:2])}
    refused = speech_engine.add([folder / "speech.txt"])  # another file of that name: refused, naming both
    assert [r.status for r in refused] == ["failed"] and str(folder / "speech.txt") in refused[0].error
    assert speech_engine.documents()[0].origin in refused[0].error
    record = speech_engine.documents()[0]
    reports = speech_engine.add_documents([Document("speech.txt", edited, record.title, record.origin)])  # the file, edited
    assert [r.status for r in reports] == ["replaced"]
    chunks, vectors, xl = speech_engine.store.document_vectors("speech.txt")
    assert speech_engine.reused == len(chunks) - 1
    kept = [c for c in chunks if c.text in before]
    assert len(kept) == len(chunks) - 1 and all(np.array_equal(before[c.text], v) for c, v in zip(chunks, vectors)
                                                  if c.text in before)
    assert len(xl) == len(chunks) and speech_engine.check() == []
    fresh = Engine(tmp_path / "fresh", encoder=speech_engine.encoder)
    fresh.build([folder / "speech.txt"])
    got = speech_engine.search(QUESTION, k=3)
    assert_same_ranking(got, fresh.search(QUESTION, k=3), QUESTION, BATCHED)  # the edited chunk: alone here, in a batch there
    assert any("今年继续认真贯彻" in h.text for h in got)  # the edited passage is found in its new words


def test_a_question_never_waits_for_a_write(speech_engine, monkeypatch):
    """One engine for every reader and writer, as the page and the API keep: while a write is held
    inside its encoding, a question is answered from the last commit (the write holds the writers'
    lock; questions never take it); once the write commits, the next question sees it."""
    import threading

    from indexer.reading import Document

    inside, release = threading.Event(), threading.Event()
    documents = speech_engine.models.e5(1)
    real = documents.encode_documents

    def held(texts, **kwargs):
        inside.set()
        assert release.wait(300)
        return real(texts, **kwargs)

    monkeypatch.setattr(documents, "encode_documents", held)
    before = speech_engine.generation
    notice = Document("notice.txt", "关于举办全市中小学生足球联赛的通知。比赛于五月举行，各校组队参加。", "足球联赛通知")
    writer = threading.Thread(target=speech_engine.add_documents, args=([notice],))
    writer.start()
    try:
        assert inside.wait(300)
        hits = speech_engine.search("足球联赛什么时候举行", k=3)  # asked while the write is held
        assert hits and {h.doc_id for h in hits} == {"speech.txt"} and speech_engine.generation == before
    finally:
        release.set()
        writer.join(300)
    assert speech_engine.generation != before
    assert speech_engine.search("足球联赛什么时候举行", k=1)[0].doc_id == "notice.txt"
