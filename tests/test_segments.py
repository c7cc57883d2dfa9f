"""The segmented folder index: many segments answer exactly as one, writes add segments and
deletion marks, merges keep every answer, readers reopen only what changed."""
from __future__ import annotations

import re
import shutil
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from conftest import chunks_of, BATCHED, SPEECH, TOLERANCE, assert_same_ranking, whole_table, write_format_two
from indexer.engine import Engine
from indexer.searching import SnapshotView
from indexer.store import Writer, lock, merge_policy, segment, snapshot

QUESTIONS = ["私立学校怎样建立党组织？", "如何加强党风廉政建设", "逢年过节要提醒干部什么",
             "How should private schools set up Party organisations?", "What are the rules on integrity?"]


def _sections(tmp_path):
    """The speech cut at its top-level headings (一、…): one document per section."""
    text = SPEECH.read_text(encoding="utf-8")
    parts = re.split(r"\n(?=[一二三四五六七八九十]、)", text)
    files = []
    for i, part in enumerate(parts):
        path = tmp_path / f"part{i}.txt"
        path.write_text(part, encoding="utf-8")
        files.append(path)
    return files


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, encoder):
    """The speech's sections added one by one (a segment each), one of them replaced and one
    removed (deletion marks): many segments; beside it, the same index merged into one."""
    tmp = tmp_path_factory.mktemp("segments")
    files = _sections(tmp)
    many = Engine(tmp / "many", encoder=encoder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(merge_policy, "MERGE_FACTOR", 100)  # no merge on the way: every write stays a segment
        for path in files:
            many.add([path])
        files[1].write_text(files[1].read_text(encoding="utf-8") + "\n补充说明：各校要按时报送党建工作总结。", encoding="utf-8")
        many.add([files[1]])
        many.add([SPEECH])
        many.remove(["speech.txt"])
    shutil.copytree(tmp / "many", tmp / "one")
    one = Engine(tmp / "one", encoder=encoder)
    assert one.optimize() == (len(many.store.rows.segments), 1)
    return many, one


def test_many_segments_answer_exactly_as_one(segmented):
    many, one = segmented
    assert len(many.store.rows.segments) > 5 and many.store.rows.dead and len(one.store.rows.segments) == 1
    assert len(many.store) == len(one.store) and not one.store.rows.dead
    for mode in ("dense", "bm25", "hybrid"):
        for group in ("passages", "documents"):
            a = many.query(QUESTIONS, k=8, mode=mode, group=group)
            b = one.query(QUESTIONS, k=8, mode=mode, group=group)
            for x, y in zip(a, b):
                assert_same_ranking(x.documents if group == "documents" else x.hits,
                                    y.documents if group == "documents" else y.hits, (mode, group, x.query))
    assert many.store.keyword_ceiling(["党组织", "建立"]) == pytest.approx(one.store.keyword_ceiling(["党组织", "建立"]),
                                                                           abs=TOLERANCE)
    assert many.check() == [] and one.check() == []


def test_a_merge_copies_the_live_rows_vectors_and_sentence_tables(segmented):
    """The merged segment, written block by block from the parts' maps, holds exactly the live
    rows' vectors and sentence tables of the segments it replaced, owners renumbered."""
    many, one = segmented
    np.testing.assert_array_equal(one.store.all_vectors(), many.store.all_vectors())
    merged, parts = whole_table(one.store), whole_table(many.store).take(many.store.rows_of())
    for name in ("chunks", "sentences", "owner", "spans"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(parts, name), err_msg=name)
    assert len(merged.owner) == one.store.stats()["sentences"] < many.store.stats()["sentences"]


def test_the_use_route_reads_the_sentence_table_in_pieces(segmented, monkeypatch):
    """English questions' USE route scores the sentence table one piece at a time (here 5 rows a
    piece, across segments and deletion marks), never the whole index's table, and ranks exactly
    as scoring the whole table at once."""
    from indexer.crosslingual import use_scores
    from indexer.search import QueryPlan, UseRoute
    from indexer.topk import top_k

    many, _ = segmented
    store = many.store
    monkeypatch.setattr(snapshot, "XL_BLOCK", 5)
    pieces = list(store.sentence_tables())
    assert len(pieces) > len(store.rows.segments) and max(len(t) for _, t in pieces) <= 5
    assert [start for start, _ in pieces] == sorted(start for start, _ in pieces)
    assert sum(len(t.owner) for _, t in pieces) == store.stats()["sentences"] > 0
    vectors = many.models.use().encode_queries(QUESTIONS[3:])
    live = store.rows_of()
    ranked = UseRoute(store, live).run([QueryPlan([], True, v) for v in vectors], 10)
    whole = [top_k(scores[live], live, 10, store.tie_keys) for scores in use_scores(vectors, whole_table(store))]
    for got, (scores, rows) in zip(ranked, whole):
        assert [r for r, _ in got] == rows.tolist() and set(rows.tolist()) <= set(live.tolist())
        np.testing.assert_allclose([s for _, s in got], scores, rtol=0, atol=1e-6)


def test_several_questions_cosines_read_each_vector_once(segmented, monkeypatch):
    """Exact cosines of a batch of questions with their own rows (overlapping, across segments and
    deletion marks) read the vectors in as few reads as FETCH_ROWS allows, each row once a read, and
    equal each question's rows read alone."""
    many, _ = segmented
    store = many.store
    live = store.rows_of()
    vectors = many.models.e5().encode_queries(QUESTIONS[:3])
    rows = [live[:12].tolist(), live[6:20].tolist(), live[::3].tolist()]
    alone = [store.vectors.fetch(r) @ q for q, r in zip(vectors, rows)]
    reads: list[list[int]] = []
    fetch = store.vectors.fetch
    monkeypatch.setattr(store.vectors, "fetch", lambda wanted: reads.append(wanted) or fetch(wanted))
    for limit, expected in ((10_000, 1), (26, 2)):  # all three at once; then the first two, and the third
        reads.clear()
        monkeypatch.setattr(snapshot, "FETCH_ROWS", limit)
        got = store.dense_scores(vectors, rows)
        assert len(reads) == expected and all(len(set(r)) == len(r) for r in reads)
        assert set(sum(reads, [])) == set(sum(rows, []))
        for a, b in zip(got, alone):
            np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE)


def test_a_view_keeps_the_records_questions_read_last(segmented, monkeypatch):
    """A question's wording part, grouping and hits read many of the same chunk records: the
    snapshot's view reads each from the store once while it is among the recent ones, returns the
    store's records in the order asked, and keeps no more than its bound."""
    from indexer import searching

    many, _ = segmented
    store = many.store
    monkeypatch.setattr(searching, "RECENT_ROWS", 5)
    view = searching.SnapshotView(store)
    asked: list[list[int]] = []
    chunks = store.chunks
    monkeypatch.setattr(store, "chunks", lambda rows: asked.append(list(rows)) or chunks(rows))
    live = store.rows_of().tolist()
    rows = [live[3], live[1], live[3], live[7]]
    assert view.chunks(rows) == chunks(rows) and asked == [[live[3], live[1], live[7]]]
    assert view.chunks([live[7], live[1]]) == chunks([live[7], live[1]]) and len(asked) == 1  # from memory
    view.chunks(live[10:14])  # four more: the bound is five, so live[3] and live[7] (used least lately) go
    asked.clear()
    assert view.chunks([live[7], live[1], live[3]]) == chunks([live[7], live[1], live[3]])
    assert asked == [[live[7], live[3]]]


def test_filters_and_phrases_across_segments(segmented):
    many, one = segmented
    for kwargs in ({"docs": ["part1.txt", "part3.txt"]}, {"where": ["id=part2.txt"]}):
        a, b = many.search(QUESTIONS[0], k=5, **kwargs), one.search(QUESTIONS[0], k=5, **kwargs)
        assert a
        assert_same_ranking(a, b, kwargs)
    a, b = many.search('"党组织" 学校', k=5), one.search('"党组织" 学校', k=5)
    assert a and all("党组织" in h.text for h in a)
    assert_same_ranking(a, b)


def test_phrases_read_only_the_texts_their_postings_allow(segmented, monkeypatch):
    """A quoted phrase's CJK bigrams narrow the rows by their posting lists before any text is
    read; the scope is the one a scan of every text gives, over segments and deletion marks, for
    phrases, Traditional phrases, exclusions, and words no bigram covers (which still scan)."""
    many, _ = segmented
    store = many.store
    read: list[int] = []
    chunks = SnapshotView.chunks  # the records a question asks for (read, or kept from an earlier question)
    monkeypatch.setattr(SnapshotView, "chunks", lambda view, rows: (read.append(len(rows)), chunks(view, rows))[1])
    questions = ['"党组织" 学校', '“三会一课”', '"黨組織"', '民办学校 -幼儿园', '党建 -党组织 -学校',
                 '"党" 建设', '"Party" 建设', '"不存在的短语"', '"党风廉政" -"廉洁"', '"党建" 学校 -民办']
    narrowed = [(many.query([q], k=5)[0], sum(read)) for q in questions if not read.clear()]
    monkeypatch.setattr(store, "rows_with_terms", lambda terms: None)
    scanned = [(many.query([q], k=5)[0], sum(read)) for q in questions if not read.clear()]
    live = len(store.rows_of())
    for q, (a, n_a), (b, n_b) in zip(questions, narrowed, scanned):
        assert [(h.chunk_id, h.score) for h in a.hits] == [(h.chunk_id, h.score) for h in b.hits], q
        assert n_b >= live and (n_a < n_b or q in ('"党" 建设', '"Party" 建设')), (q, n_a, n_b)
    assert narrowed[1][0].hits and all("三会一课" in h.text for h in narrowed[1][0].hits)
    assert not narrowed[7][0].hits


def test_an_exclusion_drops_rows_from_the_usual_search(segmented, monkeypatch):
    """A question with exclusions and no phrase searches as the question without them and drops
    the rows that hold an excluded word: the same ids and scores as the plain question's longer
    list without them, in dense and BM25, across segments. A two-character word's posting list
    decides alone (no text read); for a longer one only the texts of rows indexed under all its
    bigrams are read, not every live row's."""
    many, _ = segmented
    store = many.store
    read: list[int] = []
    chunks = SnapshotView.chunks  # the records a question asks for (read, or kept from an earlier question)
    monkeypatch.setattr(SnapshotView, "chunks", lambda view, rows: (read.append(len(rows)), chunks(view, rows))[1])
    for word in ("民办", "民办学校"):
        for mode in ("dense", "bm25"):
            read.clear()
            got = many.search(f"民办学校党组织 -{word}", k=5, mode=mode)
            texts_read = sum(read) - len(got)  # the hits' own records are read to show them
            plain = [h for h in many.search("民办学校党组织", k=40, mode=mode) if word not in h.text][:5]
            assert len(got) == 5 and [(h.chunk_id, h.score) for h in got] == [(h.chunk_id, h.score) for h in plain]
            assert texts_read == 0 if len(word) == 2 else 0 < texts_read < len(store.rows_of()), (word, mode)


def test_merged_postings_equal_postings_built_from_the_live_rows():
    """Postings.merge of several parts with deletion masks gives exactly the arrays that building
    postings from the surviving rows' terms gives: keys, list starts, rows, term counts, lengths
    (terms whose every row was removed are gone)."""
    from indexer.analysis import Analyzer, Segmenter
    from indexer.postings import Postings

    segmenter = Segmenter(analyzer=Analyzer())
    lines = [line for line in SPEECH.read_text(encoding="utf-8").splitlines() if line.strip()]
    terms = [segmenter.terms(line) for line in lines] + [["独有词", "独有词"]]  # a term only a removed row holds
    cuts = [0, 10, 11, 30, len(terms)]
    rng = np.random.default_rng(0)
    masks = [None, np.zeros(1, bool), rng.random(19) > 0.3, None]
    masks[-1] = rng.random(cuts[4] - cuts[3]) > 0.5
    masks[-1][-1] = False
    parts = [(Postings.build(terms[a:b])[0], m) for a, b, m in zip(cuts, cuts[1:], masks)]
    live = [t for (a, b), m in zip(zip(cuts, cuts[1:]), masks)
            for i, t in enumerate(terms[a:b]) if m is None or m[i]]
    merged, built = Postings.merge(parts), Postings.build(live)[0]
    for name in ("keys", "starts", "rows", "tf", "lengths"):
        assert np.array_equal(getattr(merged, name), getattr(built, name)), name
        assert getattr(merged, name).dtype == getattr(built, name).dtype, name
    assert len(merged) == len(live) > 20


def test_a_write_adds_a_segment_and_marks_deletions(segmented, tmp_path, encoder, monkeypatch):
    monkeypatch.setattr(merge_policy, "MERGE_FACTOR", 100)
    many, _ = segmented
    path = tmp_path / "many"
    shutil.copytree(many.path, path)
    engine = Engine(path, encoder=encoder)
    store = engine.store
    before = {s.seg: s for s in store.rows.segments}
    notice = tmp_path / "notice.txt"
    notice.write_text("关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛。", encoding="utf-8")
    Engine(path, encoder=encoder).add([notice])  # another writer
    reopened = engine.store  # the reader picks up the commit …
    assert reopened is not store and len(reopened.rows.segments) == len(before) + 1
    assert all(s is before[s.seg] for s in reopened.rows.segments[:-1])  # … reopening only the new segment
    assert engine.search("足球联赛什么时候举行", k=1)[0].doc_id == "notice.txt"
    engine.remove(["notice.txt"])
    assert len(engine.store.rows.segments) == len(before) + 1  # a removal rebuilds nothing: one more mark
    assert "notice.txt" not in {h.doc_id for h in engine.search("足球联赛什么时候举行", k=20)}


def test_a_merge_moves_no_record(segmented, tmp_path, encoder):
    """Chunk records are keyed by a stable id: a merge writes its rows' ids and leaves every live
    record where it is, byte for byte; the deleted rows' records wait one commit (a reader of the
    previous one may still read them), then go."""
    import sqlite3
    from contextlib import closing

    many, _ = segmented
    shutil.copytree(many.path, tmp_path / "index")
    engine = Engine(tmp_path / "index", encoder=encoder)
    store = engine.store
    live = np.concatenate([s.ids[store.rows.live_mask(i)] if store.rows.live_mask(i) is not None else s.ids
                           for i, s in enumerate(store.rows.segments)])
    dead = sorted(set(np.concatenate([s.ids for s in store.rows.segments]).tolist()) - set(live.tolist()))

    def records():
        with closing(sqlite3.connect(engine.path / "records.db")) as db:
            return dict(db.execute("SELECT id, record FROM chunks")), [i for (i,) in db.execute("SELECT id FROM dropped")]

    before, _ = records()
    assert dead and sorted(before) == sorted(live.tolist() + dead)
    engine.optimize()
    after, dropped = records()
    np.testing.assert_array_equal(engine.store.rows.segments[0].ids, live)  # the live rows' ids, in row order
    assert after == before and sorted(dropped) == dead  # nothing copied; the deleted rows' records wait
    notice = tmp_path / "notice.txt"
    notice.write_text("关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛。", encoding="utf-8")
    engine.add([notice])
    after, dropped = records()
    assert not dropped and {i: after[i] for i in live.tolist()} == {i: before[i] for i in live.tolist()}
    assert not set(after) & set(dead) and min(set(after) - set(before)) > max(before)  # ids never return
    assert engine.check() == []


def test_a_document_replaced_within_one_commit_keeps_one_copy(segmented, tmp_path, encoder):
    """A document written by one flush and replaced before the commit (in an add's store and in a
    build's, which replaces the index) leaves one live copy: its rows in the segment the same
    commit wrote, not yet open, get deletion marks too."""
    from indexer.reading import Document

    many, _ = segmented
    shutil.copytree(many.path, tmp_path / "index")
    engine = Engine(tmp_path / "index", encoder=encoder)
    first = Document("notice.txt", "关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛。", "通知")
    second = Document("notice.txt", "关于开展校园篮球联赛的通知\n各中小学要在十一月组织校园篮球联赛。", "通知")
    for store in (Writer.open(engine.path), engine.indexer._new_store()):
        with lock(engine.path):
            engine.indexer._upsert_all(store, [first], False)
            store.flush()
            engine.indexer._upsert_all(store, [second], False)
            store.commit()
        reopened = Engine(engine.path, encoder=encoder)
        assert reopened.check() == []
        text = "".join(c.text for c in chunks_of(reopened.store, "notice.txt"))
        assert "篮球" in text and "足球" not in text


def test_rows_are_found_by_id_where_a_merge_left_them_out_of_order():
    """A merge of segments that were not neighbours leaves a segment's ids out of order; rows are
    still found by id."""
    from indexer.store.segment import Segment

    ids = np.array([40, 7, 12, 3, 41], np.int64)
    seg = Segment(1, None, "flat", ids, np.zeros((5, 2), np.float32), None)
    assert seg.rows_holding(np.array([3, 12, 41, 99])).tolist() == [2, 3, 4]
    ascending = Segment(2, None, "flat", np.array([3, 7, 12], np.int64), np.zeros((3, 2), np.float32), None)
    assert ascending.rows_holding(np.array([1, 7, 12])).tolist() == [1, 2]


def test_an_ivf_segment_answers_as_the_exact_one(segmented, tmp_path, encoder, monkeypatch):
    """Merged into a segment big enough for IVF (the threshold lowered to this index's size), the
    index is memory-mapped IVF on disk, its k-means trained on a sample; with every list probed it
    answers as exact search, and a deletion mark on it still hides the removed document."""
    many, one = segmented
    monkeypatch.setattr(segment, "APPROX_ABOVE", 10)
    shutil.copytree(many.path, tmp_path / "ivf")
    ivf = Engine(tmp_path / "ivf", encoder=encoder)
    ivf.optimize()
    assert ivf.info()["index_type"] == "ivf" and len(list(ivf.path.glob("seg-*/index.faiss"))) == 1
    for mode in ("dense", "hybrid"):
        a, b = ivf.query(QUESTIONS, k=8, mode=mode), one.query(QUESTIONS, k=8, mode=mode)
        for x, y in zip(a, b):
            assert_same_ranking(x.hits, y.hits, (mode, x.query))
    gone = ivf.search(QUESTIONS[0], k=1, mode="dense")[0].doc_id
    ivf.remove([gone])
    assert gone not in {h.doc_id for h in ivf.search(QUESTIONS[0], k=20, mode="dense")}
    assert ivf.check() == []


def test_a_merge_into_an_ivf_segment_keeps_its_centroids(segmented, tmp_path, encoder, monkeypatch):
    """A merge whose biggest part is an IVF segment holding at least half the rows keeps that
    segment's lists: no k-means, the same centroids, its rows in the lists they were in, and the
    new rows in their nearest centroid's, as FAISS's own add would put them; answers still exact."""
    from indexer.store import segment

    many, one = segmented
    monkeypatch.setattr(segment, "APPROX_ABOVE", 10)
    monkeypatch.setattr(segment, "ivf_nlist", lambda n: 4)  # four lists of these ~25 rows, every one probed
    shutil.copytree(many.path, tmp_path / "ivf")
    ivf = Engine(tmp_path / "ivf", encoder=encoder)
    ivf.optimize()  # the flat segments become one IVF segment, trained
    before = faiss.downcast_index(ivf.store.rows.segments[0].index.quantizer)
    centroids = before.reconstruct_n(0, before.ntotal)
    extra = tmp_path / "notice.txt"
    extra.write_text("关于举办全市中小学生足球联赛的通知。比赛于五月举行，各校组队参加。", encoding="utf-8")
    ivf.add([extra])
    ivf.remove(["part2.txt"])  # deletion marks in the IVF segment: its kept rows shift
    monkeypatch.setattr(segment, "_training_sample", lambda *a: pytest.fail("k-means ran again"))
    ivf.optimize()
    (merged,) = ivf.store.rows.segments
    after = faiss.downcast_index(merged.index.quantizer)
    assert merged.kind == "ivf" and merged.index.ntotal == len(ivf.store)
    np.testing.assert_array_equal(after.reconstruct_n(0, after.ntotal), centroids)
    nearest = np.argmax(np.asarray(merged.vectors) @ centroids.T, axis=1)
    np.testing.assert_array_equal(segment._row_lists(merged.index), nearest)
    assert len(set(nearest.tolist())) > 1
    for x in ivf.query(QUESTIONS[:3], k=5, mode="dense"):  # Chinese: the dense route is e5's alone
        exact = ivf.store.search(ivf.encoder.encode_queries([x.query]), 5, exact=True)[0]
        assert_same_ranking(x.hits, [SimpleNamespace(chunk_id=c.chunk_id, score=s) for (s, _), c in
                                     zip(exact, ivf.store.chunks([r for _, r in exact]))], x.query)
    assert ivf.check() == []


def test_segments_of_a_tier_are_merged(tmp_path, encoder, monkeypatch):
    monkeypatch.setattr(merge_policy, "MERGE_FACTOR", 3)
    engine = Engine(tmp_path / "index", encoder=encoder)
    files = _sections(tmp_path)
    counts = []
    for path in files[:5]:
        engine.add([path])
        counts.append(len(engine.store.rows.segments))
    assert max(counts) < 3 and counts[2] == 1  # the third one-tier segment merged the three
    assert engine.check() == [] and len(engine.documents()) == 5
    retired = {f"seg-{s:06d}" for (s,) in engine.store.records.query("SELECT seg FROM retired")}
    live = {f"seg-{s.seg:06d}" for s in engine.store.rows.segments}
    assert {p.name for p in engine.path.glob("seg-*")} == live | retired  # older ones are gone


def test_flat_segments_merge_into_one_approximate_segment_at_its_size(tmp_path, encoder, monkeypatch):
    """Each question scans every flat segment whole: once together they hold as many live rows as
    an approximate segment starts at, they are merged into one, below the tiers' own merges."""
    monkeypatch.setattr(merge_policy, "MERGE_FACTOR", 100)
    monkeypatch.setattr(segment, "APPROX_ABOVE", 12)
    engine = Engine(tmp_path / "index", encoder=encoder)
    flat_rows = []
    for path in _sections(tmp_path):
        engine.add([path])
        flat = [s for i, s in enumerate(engine.store.rows.segments) if s.kind == "flat"]
        flat_rows.append(sum(len(s) for s in flat))
        assert len(flat) <= 1 or flat_rows[-1] < 12, flat_rows
    kinds = [s.kind for s in engine.store.rows.segments]
    assert "ivf" in kinds and engine.check() == []
    assert any(b < a for a, b in zip(flat_rows, flat_rows[1:]))  # the flat rows grew to the size, then merged
    exact = Engine(tmp_path / "exact", encoder=encoder)
    monkeypatch.setattr(segment, "APPROX_ABOVE", 10**9)
    exact.build(_sections(tmp_path))
    for x, y in zip(engine.query(QUESTIONS, k=5), exact.query(QUESTIONS, k=5)):  # encoded in other batches
        assert_same_ranking(x.hits, y.hits, x.query, BATCHED)


def test_format_one_index_is_refused_then_upgraded(tmp_path, encoder, capsys):
    """An index of the previous layout is never misread: it is refused with the command that
    converts it, and the conversion keeps every answer."""
    from indexer.cli import main

    engine = Engine(tmp_path / "new", encoder=encoder)
    engine.build([SPEECH])
    want = engine.search(QUESTIONS[0], k=5)
    legacy = tmp_path / "legacy"
    _write_format_one(engine, legacy)
    assert main(["search", QUESTIONS[0], "--index", str(legacy)]) != 0
    err = capsys.readouterr().err.strip()
    assert "format 1" in err and f"python -m indexer upgrade --index {legacy}" in err and len(err.splitlines()) == 1
    assert main(["upgrade", "--index", str(legacy)]) == 0
    assert "upgraded" in capsys.readouterr().out
    assert not (legacy / "CURRENT").exists()
    upgraded = Engine(legacy, encoder=encoder)
    assert_same_ranking(upgraded.search(QUESTIONS[0], k=5), want)
    assert upgraded.check() == []
    assert main(["upgrade", "--index", str(legacy)]) != 0
    assert "nothing to upgrade" in capsys.readouterr().err


def _write_format_one(engine: Engine, folder) -> None:
    """The files format 1 kept (indexer.store.migrate), written from a loaded index."""
    import json
    from dataclasses import asdict, fields

    from indexer.store.base import Manifest

    store = engine.store
    gen = folder / "gen-000001"
    gen.mkdir(parents=True)
    (folder / "CURRENT").write_text("gen-000001\n", encoding="utf-8")
    manifest = {**{f.name: getattr(store.manifest, f.name) for f in fields(Manifest) if f.name != "documents"},
                "format_version": 1,
                "documents": {r.doc_id: asdict(r) for r in store.manifest.documents.values()}}
    (gen / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    chunks = store.all_chunks()
    (gen / "chunks.jsonl").write_text("".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in chunks),
                                      encoding="utf-8")
    (gen / "texts.jsonl").write_text(json.dumps({"doc_id": "speech.txt", "text": store.document_text("speech.txt")},
                                                ensure_ascii=False) + "\n", encoding="utf-8")
    terms = [engine.segmenter.terms(engine.settings.keyword_text(store.manifest.documents[c.doc_id].title, c.text))
             for c in chunks]
    (gen / "terms.jsonl").write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in terms), encoding="utf-8")
    np.save(gen / "vectors.npy", store.all_vectors())
    (gen / "xl.npz").write_bytes(whole_table(store).to_bytes())


def test_format_two_index_is_refused_then_upgraded(segmented, tmp_path, encoder, capsys):
    """Format 2 kept chunk records keyed (segment, row), so every merge copied them. It is refused
    with the command that converts it; the conversion, in place, gives every record a stable id and
    every segment its ids.npy, and keeps every answer, deletion marks included."""
    from indexer.cli import main

    many, one = segmented
    old = tmp_path / "old"
    write_format_two(many.path, old)
    assert main(["search", QUESTIONS[0], "--index", str(old)]) != 0
    err = capsys.readouterr().err.strip()
    assert "format 2" in err and f"python -m indexer upgrade --index {old}" in err and len(err.splitlines()) == 1
    assert main(["upgrade", "--keep-ids", "--index", str(old)]) == 0  # its files, added one by one, stay as they are
    assert "from format 2 to 3" in capsys.readouterr().out
    upgraded = Engine(old, encoder=encoder)
    assert upgraded.check() == []
    for x, y in zip(upgraded.query(QUESTIONS, k=5), many.query(QUESTIONS, k=5)):
        assert_same_ranking(x.hits, y.hits, x.query)
    upgraded.optimize()
    for x, y in zip(upgraded.query(QUESTIONS, k=5), one.query(QUESTIONS, k=5)):
        assert_same_ranking(x.hits, y.hits, x.query)
    assert main(["upgrade", "--keep-ids", "--index", str(old)]) != 0
    assert "nothing to upgrade" in capsys.readouterr().err


def test_build_streams_in_batches(tmp_path, encoder, monkeypatch):
    """A build reads, embeds and writes in batches (a segment each): into a new location each batch
    is committed (an interrupted first build keeps them); over an index, the batches land in one
    commit, and a build that fails halfway leaves the old index as it was."""
    from indexer import indexing as engine_module
    from indexer.indexing import Indexer

    monkeypatch.setattr(engine_module, "COMMIT_CHARS", 800)
    monkeypatch.setattr(merge_policy, "MERGE_FACTOR", 100)
    files = _sections(tmp_path)
    engine = Engine(tmp_path / "index", encoder=encoder)
    engine.build(files)
    first = engine.store
    assert len(first.rows.segments) > 2 and int(first.generation[4:]) == len(first.rows.segments)  # a commit per batch
    assert {d.doc_id for d in engine.documents()} == {p.name for p in files} and engine.check() == []
    engine.build(files[:4])
    again = engine.store
    assert int(again.generation[4:]) == int(first.generation[4:]) + 1  # the batches in one commit
    assert len(again.rows.segments) > 1 and {d.doc_id for d in engine.documents()} == {p.name for p in files[:4]}
    want = [(h.chunk_id, h.score) for h in engine.search(QUESTIONS[1], k=5)]
    calls = {"n": 0}
    real = Indexer._upsert_all

    def fail_second(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the build
        return real(self, *args)

    monkeypatch.setattr(Indexer, "_upsert_all", fail_second)
    with pytest.raises(KeyboardInterrupt):
        engine.build(files)
    reopened = Engine(tmp_path / "index", encoder=encoder)
    assert reopened.store.generation == again.generation and reopened.check() == []
    assert [(h.chunk_id, h.score) for h in reopened.search(QUESTIONS[1], k=5)] == want
    assert {p.name for p in engine.path.glob("seg-*")} == {f"seg-{s.seg:06d}" for s in reopened.store.rows.segments} | {
        f"seg-{s:06d}" for (s,) in reopened.store.records.query("SELECT seg FROM retired")}
