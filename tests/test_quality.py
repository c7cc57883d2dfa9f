"""Keyword, hybrid and evaluation: the arithmetic, and hybrid's gain on exact terms."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, ROOT, SPEECH, assert_same_ranking, whole_table
from indexer.engine import Engine
from indexer.evaluation import Labelled, metrics, read_labelled, relevance_matrix
from indexer.analysis import Segmenter, bigrams, char_ngrams, wording_share
from indexer.postings import Postings, bm25, top_positive
from indexer.search import rrf_fuse, score_fuse


def test_eval_arithmetic_by_hand():
    labels = [Labelled("q1", ("d2",)), Labelled("q2", ("apple", "pear")), Labelled("q3", ("zzz",))]
    ranked = [
        [("d1", "x"), ("d2", "y"), ("d3", "z")],          # first relevant at rank 2
        [("a", "an apple"), ("b", "plum"), ("c", "pear")],  # rank 1; both items found
        [("a", "nothing"), ("b", "here")],                  # not found
    ]
    m = metrics(relevance_matrix(ranked, labels), k=10)
    assert m["n"] == 3
    assert m["hit@1"] == pytest.approx(1 / 3)
    assert m["hit@3"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    only_one = metrics(relevance_matrix([[("a", "an apple")]], [labels[1]]), k=10)
    assert only_one["recall@10"] == pytest.approx(0.5)


A, B, C = 7, 3, 5  # three chunks' rows


def test_rrf_fusion_by_hand():
    fused = rrf_fuse({"dense": [(A, 0.9), (B, 0.8)], "bm25": [(B, 5.0), (C, 1.0)]},
                     {"dense": 1.0, "bm25": 1.0}, rrf_k=60)
    assert [r.row for r in fused] == [B, A, C]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61) == sum(fused[0].parts.values())
    assert fused[0].raw == {"dense": 0.8, "bm25": 5.0} and fused[2].raw == {"bm25": 1.0}


def test_score_fusion_by_hand():
    dense = [(A, 0.90), (B, 0.80)]  # cosine: a first
    bm25 = [(B, 10.0), (C, 1.0)]  # BM25: b far ahead of c; a has no term
    fused = score_fuse(dense, bm25, {C: 0.70}, bm25_share=0.45)
    # a: 0.55·(0.9-0.7)/0.2 = 0.55; b: 0.55·0.5 + 0.45·1 = 0.725; c: 0 + 0.45·0.1 = 0.045
    assert [r.row for r in fused] == [B, A, C]
    assert [r.score for r in fused] == pytest.approx([0.725, 0.55, 0.045])
    assert [sum(r.parts.values()) for r in fused] == pytest.approx([0.725, 0.55, 0.045])
    assert fused[0].parts == pytest.approx({"dense": 0.275, "bm25": 0.45}) and fused[2].raw == {"dense": 0.70, "bm25": 1.0}
    # BM25 far ahead wins; BM25 barely ahead does not: rank fusion cannot tell the two apart
    close = score_fuse(dense, [(B, 10.0), (A, 9.0)], {}, bm25_share=0.45)
    assert [r.row for r in close] == [A, B]
    rank = rrf_fuse({"dense": dense, "bm25": [(B, 10.0), (A, 9.0)]}, {"dense": 1.0, "bm25": 2.0}, 10)
    assert [r.row for r in rank] == [B, A]
    # no BM25 hit at all: the dense order, scaled
    assert [r.row for r in score_fuse(dense, [], {}, 0.45)] == [A, B]


def test_hybrid_is_at_least_as_good_as_either_route_on_the_speech(speech_engine):
    from indexer.evaluation import evaluate

    labels = read_labelled(DATA / "speech_qa_zh.jsonl")
    got = {mode: evaluate(speech_engine, labels, mode) for mode in ("dense", "bm25", "hybrid")}
    for key in ("hit@1", "hit@3", "mrr@10"):
        assert got["hybrid"][key] >= max(got["dense"][key], got["bm25"][key]), (key, got)


def test_segmenter_user_terms_and_filters():
    plain = Segmenter()
    custom = Segmenter(("述职述廉述学",))
    assert "述职述廉述学" in custom.terms("党组织书记要述职述廉述学。")
    assert "述职述廉述学" not in plain.terms("党组织书记要述职述廉述学。")
    terms = plain.terms("如何加强学习强国平台的使用？ The App!")
    assert "学习" in terms and "app" in terms
    assert "如何" not in terms and "？" not in terms and "the" not in terms


def test_bm25_scores_rank_term_matches():
    seg = Segmenter()
    docs = ["落实三会一课制度", "开展主题党日活动", "三会一课和主题党日都要坚持"]
    postings, _ = Postings.build(seg.terms_many(docs))

    def search(question: str, within: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ((hit, scores),), _ = bm25([(postings, None)], seg.terms(question))
        return top_positive(hit, scores, 5, within)

    scores, rows = search("三会一课")
    assert set(rows.tolist()) == {0, 2} and np.all(np.diff(scores) <= 0)
    assert search("足球")[1].size == 0
    assert search("主题党日", np.array([1]))[1].tolist() == [1]


def test_bm25_over_segments_is_the_formula_over_the_live_rows():
    """BM25 over two segments, one with deletion marks, scores exactly the live rows that hold a
    query term, each as Lucene's formula computed over the live rows alone, and top_positive
    ranks them (within a row set too) as a sort of every score would."""
    seg = Segmenter()
    terms = seg.terms_many([p for p in SPEECH.read_text(encoding="utf-8").split("\n") if p.strip()])
    cut = len(terms) // 2
    (a, _), (b, _) = Postings.build(terms[:cut]), Postings.build(terms[cut:])
    live_b = np.ones(len(terms) - cut, bool)
    live_b[[0, 3, 5]] = False
    question = seg.terms("学校党组织要加强党风廉政建设，学校")
    parts, ceiling = bm25([(a, None), (b, live_b)], question)
    live = [t for i, t in enumerate(terms) if i < cut or live_b[i - cut]]
    n, avg = len(live), np.mean([len(t) for t in live])
    idf = {q: np.log1p((n - df + 0.5) / (df + 0.5)) for q in set(question) if (df := sum(q in t for t in live))}
    want = {}
    for i, t in enumerate(terms):
        if (i < cut or live_b[i - cut]) and any(q in t for q in idf):
            want[i] = sum(idf[q] * t.count(q) / (t.count(q) + 1.2 * (0.25 + 0.75 * len(t) / avg)) for q in question if q in idf)
    rows = np.concatenate([parts[0][0], parts[1][0] + cut])
    scores = np.concatenate([parts[0][1], parts[1][1]])
    assert rows.tolist() == sorted(want) and len(want) > 10
    np.testing.assert_allclose(scores, [want[r] for r in rows.tolist()], rtol=1e-5)
    assert ceiling == pytest.approx(sum(idf[q] for q in question if q in idf), rel=1e-6)
    within = np.arange(0, len(terms), 2)
    for allowed in (None, within):
        pool = rows if allowed is None else np.intersect1d(rows, allowed)
        ranked = sorted(pool.tolist(), key=lambda r: (-scores[rows.tolist().index(r)], r))[:7]
        assert top_positive(rows, scores, 7, allowed)[1].tolist() == ranked


def test_hybrid_lifts_an_exact_term_question(speech_engine):
    question = "党组织书记述职述廉述学要怎么做？"
    label = next(l for l in read_labelled(DATA / "speech_qa_zh.jsonl") if l.query == question)

    def rank(mode):
        hits = speech_engine.search(question, k=10, mode=mode)
        return next(h.rank for h in hits if any(r in h.text for r in label.relevant))

    assert rank("hybrid") < rank("dense")
    assert rank("hybrid") == 1


def test_keyword_index_follows_updates(speech_engine, tmp_path):
    doc = tmp_path / "sports.txt"
    doc.write_text("全市中小学将举办阳光体育节，设置跳绳、踢毽子和拔河三个集体项目。", encoding="utf-8")
    speech_engine.add([doc])
    assert speech_engine.search("拔河", k=1, mode="bm25")[0].doc_id == "sports.txt"
    speech_engine.remove(["sports.txt"])
    assert all(h.doc_id == "speech.txt" for h in speech_engine.search("拔河 跳绳", k=5, mode="bm25"))


def test_eval_command_prints_table_and_json(speech_index, tmp_path):
    out = subprocess.run([sys.executable, "-m", "indexer", "eval", str(DATA / "speech_qa_zh.jsonl"),
                          "--index", str(speech_index), "--mode", "all", "--json", str(tmp_path / "e.json")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[1].split() == ["mode", "hit@1", "hit@3", "recall@10", "mrr@10"]
    assert [line.split()[0] for line in lines[2:5]] == ["dense", "bm25", "hybrid"]
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["results"]["hybrid"]["n"] == len(read_labelled(DATA / "speech_qa_zh.jsonl"))
    assert 0.8 <= data["results"]["dense"]["hit@3"] <= 1.0


@pytest.fixture(scope="module")
def sentence_index(tmp_path_factory, encoder):
    """The speech indexed with e5 sentence vectors (build --sentence-vectors)."""
    from conftest import SPEECH
    from indexer.engine import Engine, IndexSettings

    path = tmp_path_factory.mktemp("sentences") / "index"
    Engine(path, encoder=encoder, settings=IndexSettings(sentence_vectors=True)).build([SPEECH])
    return path


def test_sentence_vectors_lift_chinese_ranking_and_leave_english_alone(sentence_index, speech_index, encoder):
    """Scoring a chunk also by its best sentence's e5 vector: Chinese hybrid Hit@1 and MRR rise on
    the speech (long paragraphs), Hit@3 holds, and English questions (not rescored) are untouched."""
    from indexer.engine import Engine
    from indexer.evaluation import evaluate

    with_s, without = Engine(sentence_index, encoder=encoder), Engine(speech_index, encoder=encoder)
    assert with_s.info()["sentence_vectors"] and not without.info()["sentence_vectors"]
    zh = read_labelled(DATA / "speech_qa_zh.jsonl")
    a, b = evaluate(with_s, zh, "hybrid"), evaluate(without, zh, "hybrid")
    assert a["hit@1"] > b["hit@1"] and a["mrr@10"] > b["mrr@10"] and a["hit@3"] >= b["hit@3"], (a, b)
    en = [q.query for q in read_labelled(DATA / "speech_qa_en.jsonl")]
    for q, x, y in zip(en, with_s.batch(en, 5), without.batch(en, 5)):
        assert_same_ranking(x, y, q)


def test_sentence_vectors_follow_updates_and_reload(sentence_index, encoder, tmp_path):
    import shutil

    from indexer.engine import Engine

    path = tmp_path / "index"
    shutil.copytree(sentence_index, path)
    engine = Engine(path, encoder=encoder)
    doc = tmp_path / "notice.txt"
    doc.write_text("关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛。每所学校至少派出一支代表队。", encoding="utf-8")
    engine.add([doc])
    doc.write_text("关于开展校园合唱比赛的通知\n各中小学要在十一月组织合唱比赛。每所学校至少派出一支合唱团。", encoding="utf-8")
    engine.add([doc])
    reloaded = Engine(path, encoder=encoder)
    assert reloaded.check() == []
    table = whole_table(reloaded.store)
    assert table.dense is not None and table.dense.shape == (len(table.owner), encoder.dim)
    rows = reloaded.store.rows_of().tolist()
    row, chunk = next((r, c) for r, c in zip(rows, reloaded.store.chunks(rows)) if c.doc_id == "notice.txt" and "合唱" in c.text)
    sel = table.sentences_of(row)
    texts = [chunk.text[s:e] for s, e in table.spans[sel]]
    np.testing.assert_allclose(table.dense[sel], encoder.encode_documents(texts), atol=3e-3)
    assert reloaded.search("合唱比赛什么时候举行？", k=1)[0].doc_id == "notice.txt"


def test_sentence_vectors_need_the_sentence_table(tmp_path):
    out = subprocess.run([sys.executable, "-m", "indexer", "build", str(ROOT / "data" / "speech.txt"), "--index",
                          str(tmp_path / "x"), "--no-crosslingual", "--sentence-vectors"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "--no-crosslingual" in out.stderr


def test_score_fusion_with_the_documents_part_by_hand():
    """A third part, doc_share · the candidate's document BM25 / the best candidate document's,
    all parts divided by 1 + doc_share: the scores stay within 0-1 and the parts sum to them."""
    dense = [(A, 0.90), (B, 0.80)]
    bm25 = [(B, 10.0), (C, 1.0)]
    fused = score_fuse(dense, bm25, {C: 0.70}, 0.45, documents={A: 2.0, B: 1.0, C: 4.0}, doc_share=0.75)
    # A: (0.55 + 0 + 0.375) / 1.75; B: (0.275 + 0.45 + 0.1875) / 1.75; C: (0 + 0.045 + 0.75) / 1.75
    want = {A: 0.925 / 1.75, B: 0.9125 / 1.75, C: 0.795 / 1.75}
    assert [r.row for r in fused] == [A, B, C] and [r.score for r in fused] == pytest.approx([want[A], want[B], want[C]])
    assert all(sum(r.parts.values()) == pytest.approx(r.score) and set(r.parts) == {"dense", "bm25", "doc"} for r in fused)
    assert fused[2].raw == {"dense": 0.70, "bm25": 1.0, "doc": 4.0}
    plain = score_fuse(dense, bm25, {C: 0.70}, 0.45)
    assert [r.score for r in score_fuse(dense, bm25, {C: 0.70}, 0.45, documents={A: 0, B: 0, C: 0}, doc_share=0.75)] \
        == pytest.approx([r.score / 1.75 for r in plain])  # no document evidence: the order of the two routes


def test_score_fusion_with_the_wording_part_by_hand():
    """A fourth part, wording_share · the candidate's share of the question's n-grams (no max to
    divide by: a share is already 0-1), every part divided by 1 + doc_share + wording_share · the
    best candidate's share: a candidate best in every part would score 1, and a question that no
    candidate repeats scores as without the part."""
    dense = [(A, 0.90), (B, 0.80)]
    bm25 = [(B, 10.0), (C, 1.0)]
    documents = {A: 2.0, B: 1.0, C: 4.0}
    fused = score_fuse(dense, bm25, {C: 0.70}, 0.45, documents=documents, doc_share=0.75,
                       wording={A: 0.0, B: 0.5, C: 1.0}, wording_share=0.5)
    # A: (0.55 + 0 + 0.375 + 0) / 2.25; B: (0.275 + 0.45 + 0.1875 + 0.25) / 2.25; C: (0 + 0.045 + 0.75 + 0.5) / 2.25
    assert [r.row for r in fused] == [C, B, A]
    assert [r.score for r in fused] == pytest.approx([1.295 / 2.25, 1.1625 / 2.25, 0.925 / 2.25])
    assert all(sum(r.parts.values()) == pytest.approx(r.score) for r in fused)
    assert fused[0].raw == {"dense": 0.70, "bm25": 1.0, "doc": 4.0, "wording": 1.0}
    half = score_fuse(dense, bm25, {C: 0.70}, 0.45, documents=documents, doc_share=0.75,
                      wording={A: 0.0, B: 0.5, C: 0.25}, wording_share=0.5)  # the best share 0.5: divided by 2.0
    assert {r.row: r.score for r in half} == pytest.approx({A: 0.925 / 2.0, B: 1.1625 / 2.0, C: 0.92 / 2.0})
    without = score_fuse(dense, bm25, {C: 0.70}, 0.45, documents=documents, doc_share=0.75)
    none = score_fuse(dense, bm25, {C: 0.70}, 0.45, documents=documents, doc_share=0.75,
                      wording={A: 0.0, B: 0.0, C: 0.0}, wording_share=0.5)
    assert [(r.row, r.score) for r in none] == [(r.row, r.score) for r in without]


def test_char_ngrams_and_the_share_of_a_question_s_wording():
    assert bigrams("私立学校，GB/T 7714 上") == char_ngrams("私立学校，GB/T 7714 上", 2) == \
        ["私立", "立学", "学校", "gb", "t", "7714", "上"]
    assert char_ngrams("私立学校怎样建立", 4) == ["私立学校", "立学校怎", "学校怎样", "校怎样建", "怎样建立"]
    assert char_ngrams("党建，ＰＰＲ", 4) == ["党建", "ppr"]  # a short run stands alone; NFKC, lower-cased
    grams = frozenset(char_ngrams("私立学校怎样建立", 4))
    assert wording_share(grams, "私立学校应当建立") == pytest.approx(1 / 5)
    assert wording_share(grams, "问：私立学校怎样建立？") == 1.0 and wording_share(frozenset(), "任何") == 0.0


def test_document_bm25_is_the_formula_over_whole_documents(tmp_path, encoder):
    """A document's BM25, taken whole, is Lucene's formula over the documents: each term's count
    summed over its live chunks, lengths summed, idf over the live documents; across segments and
    after a replaced document (deletion marks); for every row of a document, the same."""
    from indexer.settings import IndexSettings

    paragraphs = [p for p in SPEECH.read_text(encoding="utf-8").split("\n") if len(p) > 60]
    folder = tmp_path / "docs"
    folder.mkdir()
    for n in range(4):
        (folder / f"d{n}.txt").write_text("\n\n".join(paragraphs[n * 3:n * 3 + 3]), encoding="utf-8")
    engine = Engine(tmp_path / "index", encoder=encoder, settings=IndexSettings(crosslingual=False))
    engine.build([folder / "d0.txt", folder / "d1.txt"])
    engine.add([folder / "d2.txt", folder / "d3.txt"])
    (folder / "d1.txt").write_text("\n\n".join(paragraphs[12:14]), encoding="utf-8")
    engine.add([folder / "d1.txt"])  # replaced: its old chunks stay as deletion marks
    store = engine.store
    segmenter = engine.segmenter
    assert len(store.rows.segments) == 3 and store.rows.dead
    question = segmenter.terms("学校党组织要加强党风廉政建设，学校")
    rows = store.rows_of().tolist()
    chunks = store.chunks(rows)
    by_doc: dict[str, list[str]] = {}
    for c in chunks:
        by_doc.setdefault(c.doc_id, []).extend(segmenter.terms(engine.settings.keyword_text(
            store.manifest.documents[c.doc_id].title, c.text)))
    n, avg = len(by_doc), np.mean([len(t) for t in by_doc.values()])
    idf = {q: np.log1p((n - df + 0.5) / (df + 0.5)) for q in set(question) if (df := sum(q in t for t in by_doc.values()))}
    want = {d: sum(idf[q] * t.count(q) / (t.count(q) + 1.2 * (0.25 + 0.75 * len(t) / avg)) for q in question if q in idf)
            for d, t in by_doc.items()}
    got = store.document_bm25(question, rows)
    np.testing.assert_allclose(got, [want[c.doc_id] for c in chunks], rtol=1e-6)
    assert len(set(np.round(got, 6))) == 4  # four documents, four scores


def test_a_title_adds_its_words_to_its_chunks_but_not_to_their_phrases(tmp_path, encoder):
    """A notice's title names what it is about: its words find the notice's chunks by keywords
    (the index keeps title terms), but a quoted phrase must still stand in a hit's own text, even
    where the title holds it (its two characters are indexed under the title's bigram too)."""
    from indexer.reading import Document

    engine = Engine(tmp_path / "index", encoder=encoder)
    engine.add_documents([Document("notice.txt", "比赛于五月举行，各校组队参加。\n\n请各校在四月底前报名。", "校园足球联赛通知"),
                          Document("other.txt", "学生足球队在市运动会上获得冠军。", "体育新闻")])
    found = engine.search("足球联赛", k=3, mode="bm25")
    assert found[0].doc_id == "notice.txt" and "足球" not in found[0].text  # by its title's words
    quoted = engine.search('"足球" 比赛', k=5)
    assert quoted and all("足球" in h.text for h in quoted) and {h.doc_id for h in quoted} == {"other.txt"}


def test_policy_notices_hybrid_does_not_lose_to_its_routes(tmp_path, encoder):
    """On real policy notices (80 of ../shared/eval/ncp_policy_dev and their questions, ranked
    as documents), the default fusion with titles and whole-document evidence is not below its
    better route, and the document part adds to it. (The figures on the whole set, cross-validated:
    docs/quality.md; the margins here leave room for another CPU's last bits.)"""
    import json
    from dataclasses import replace

    from indexer.evaluation import evaluate
    from indexer.settings import IndexSettings

    sets = ROOT.parent / "shared" / "eval" / "ncp_policy_dev"
    notices = [json.loads(line) for line in (sets / "passages.jsonl").read_text(encoding="utf-8").splitlines()][:80]
    ids = {d["id"] for d in notices}
    questions = [json.loads(line) for line in (sets / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    (tmp_path / "notices.jsonl").write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in notices), encoding="utf-8")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in questions
                                                if set(q["positive_ids"]) <= ids), encoding="utf-8")
    engine = Engine(tmp_path / "index", encoder=encoder, settings=IndexSettings(crosslingual=False))
    engine.build([tmp_path / "notices.jsonl"])
    labels = read_labelled(tmp_path / "q.jsonl")
    assert len(labels) >= 90
    mrr = {mode: evaluate(engine, labels, mode, group="documents")["mrr@10"] for mode in ("dense", "bm25", "hybrid")}
    engine.fusion = replace(engine.fusion, doc_share=0.0)
    without = evaluate(engine, labels, "hybrid", group="documents")["mrr@10"]
    assert mrr["hybrid"] >= max(mrr["dense"], mrr["bm25"]) - 0.02, mrr
    assert mrr["hybrid"] >= without - 0.01, (mrr, without)
