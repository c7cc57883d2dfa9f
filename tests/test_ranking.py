"""What a question asks beyond its words (quoted phrases, exclusions, synonyms), and scores a
person can read: each hit's breakdown sums to its fused score."""
from __future__ import annotations

import re
import shutil

import pytest

from conftest import SPEECH
from indexer.engine import Engine, IndexSettings
from indexer.analysis import read_synonyms, with_synonyms
from indexer.querytext import parse_query


def test_parse_query_splits_phrases_and_exclusions():
    parsed = parse_query('"三重一大" “述职述廉” 「党建」 制度 -幼儿园 －高校 PPR-9087')
    assert parsed.phrases == ("三重一大", "述职述廉", "党建")
    assert parsed.excluded == ("幼儿园", "高校")
    assert parsed.text == "三重一大 述职述廉 党建 制度 PPR-9087"  # the hyphen inside a code stays
    assert parse_query("民办学校怎样建立党组织？").constrained is False
    quoted = parse_query('"党风廉政" 建设 -"廉洁" －“幼儿园”')  # a minus before quotes excludes the phrase
    assert (quoted.text, quoted.phrases, quoted.excluded) == ("党风廉政 建设", ("党风廉政",), ("廉洁", "幼儿园"))


def test_a_quoted_phrase_must_occur_in_every_hit(speech_engine):
    free = speech_engine.search("怎样落实三会一课制度", k=5)
    assert sum("三会一课" in h.text for h in free) < 5  # without quotes, other passages come too
    hits = speech_engine.search('怎样落实"三会一课"制度', k=5)
    assert hits and all("三会一课" in h.text for h in hits)
    assert all("述职述廉" in h.text for h in speech_engine.search("“述职述廉”", k=3))
    assert speech_engine.search('"三会一课" "不在讲话里的词"', k=5) == []


def test_an_excluded_word_never_occurs_in_a_hit(speech_engine):
    top = speech_engine.search("民办学校党组织", k=3)
    assert any("民办" in h.text for h in top)
    for mode in ("dense", "bm25", "hybrid"):
        hits = speech_engine.search("民办学校党组织 -民办", k=5, mode=mode)
        assert len(hits) == 5 and not any("民办" in h.text for h in hits), mode
    hits = speech_engine.search('党组织 -"民办学校"', k=5)
    assert len(hits) == 5 and not any("民办学校" in h.text for h in hits)
    english = speech_engine.search("How do schools build Party organisations? -民办", k=3)
    assert len(english) == 3 and not any("民办" in h.text for h in english)


def test_synonyms_are_kept_with_the_index(encoder, tmp_path):
    groups = read_synonyms(["民办学校 私立学校  # private schools", "三会一课=三会、一课", "孤词"])
    assert groups == (("民办学校", "私立学校"), ("三会一课", "三会", "一课"))
    assert with_synonyms(["私立学校", "党组织"], groups) == ["私立学校", "民办学校", "党组织"]
    plain = Engine(tmp_path / "plain", encoder=encoder, settings=IndexSettings(crosslingual=False))
    plain.build([SPEECH])
    engine = Engine(tmp_path / "syn", encoder=encoder, settings=IndexSettings(crosslingual=False, synonyms=groups))
    engine.build([SPEECH])
    question = "私立学校怎样建立党组织"
    assert "民办学校" not in plain.search(question, k=1, mode="bm25")[0].section
    reopened = Engine(tmp_path / "syn", encoder=encoder)
    result = reopened.query([question], 1, mode="bm25")[0]
    assert "民办学校" in result.terms and "民办学校" in result.hits[0].section


@pytest.mark.parametrize("question", ["私立学校怎样建立党组织？", "How do private schools set up Party organisations?"])
@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_score_breakdown_sums_to_the_fused_score(speech_engine, question, mode):
    hits = speech_engine.search(question, k=5, mode=mode)
    for h in hits:
        routes = h.why["routes"]
        assert sum(r["part"] for r in routes.values()) == pytest.approx(h.score, abs=1e-5)
        assert set(routes) <= {"dense", "bm25", "use", "doc", "wording"}
        assert all(set(r) == {"score", "part"} for r in routes.values())
        assert 0 <= routes.get("wording", {"score": 0})["score"] <= 1  # a share of the question's n-grams
        assert all(t in h.text.lower() for t in h.why["matched"])
    if mode != "bm25" and "私立" in question:
        assert all(-1 <= h.why["routes"]["dense"]["score"] <= 1 for h in hits)  # the cosine itself


def test_a_question_in_a_passage_s_own_words_finds_it_with_all_its_wording(speech_engine):
    """Questions repeat the wording of the sentence that answers them: a stretch of the speech's
    own text, asked as a question, finds the passage holding it, whose wording part counts every
    one of the question's 4-character sequences; a passage without the stretch counts fewer."""
    chunk = max(speech_engine.store.all_chunks(), key=lambda c: len(c.text))
    middle = len(chunk.text) // 2
    stretch = next(run for run in re.findall(r"[\u4e00-\u9fff]{12,}", chunk.text[middle:]))[:16]
    hits = speech_engine.search(stretch + "？", k=5, mode="hybrid")
    assert stretch in hits[0].text and hits[0].why["routes"]["wording"]["score"] == 1.0
    others = [h for h in hits if stretch not in h.text]
    assert others and all(h.why["routes"]["wording"]["score"] < 1.0 for h in others)


NOTICES = {  # small notices beside the speech: two scripts, look-alike document numbers and codes
    "trad.txt": "民辦學校應當依法建立黨組織，黨組織書記由上級黨委選派。",
    "n15.txt": "市教育局关于印发〔2020〕15号文件的通知：各校要落实校园安全责任制。",
    "n16.txt": "市教育局关于印发〔2020〕16号文件的通知：各校要落实校园安全责任制。",
    "ppr.txt": "设备编号PPR-9087的维修记录：更换滤芯，测试正常。",
    "ppr2.txt": "设备编号PPR-9088的维修记录：更换滤芯，测试正常。",
}


@pytest.fixture(scope="module")
def mixed_index(tmp_path_factory, encoder):
    """The speech and the notices, indexed once with the default analyzer."""
    folder = tmp_path_factory.mktemp("notices")
    for name, text in NOTICES.items():
        (folder / name).write_text(text, encoding="utf-8")
    shutil.copy(SPEECH, folder / "speech.txt")
    path = tmp_path_factory.mktemp("mixed") / "index"
    Engine(path, encoder=encoder).build(sorted(folder.iterdir()))  # files given alone: named by their names
    return path


def test_simplified_question_finds_traditional_text_and_back(mixed_index, encoder, tmp_path):
    engine = Engine(mixed_index, encoder=encoder)
    for mode in ("bm25", "hybrid"):
        assert engine.search("民办学校怎样建立党组织？党组织书记由谁选派？", k=1, mode=mode)[0].doc_id == "trad.txt"
    hit = engine.search("民办学校党组织书记由谁选派", k=3, mode="bm25")[0]
    assert hit.text == NOTICES["trad.txt"] and "民辦學校" in hit.sentence  # shown in its own script
    assert {"民办学校", "党组织"} <= set(hit.why["matched"])  # matched on the folded text
    simplified = Engine(tmp_path / "s", encoder=encoder)
    simplified.build([SPEECH])
    assert "民办学校" in simplified.search("怎樣推進民辦學校黨建工作全覆蓋？", k=1, mode="bm25")[0].section


def test_codes_match_whole(mixed_index, encoder):
    engine = Engine(mixed_index, encoder=encoder)
    for question, doc in [("〔2020〕15号文件", "n15.txt"), ("[2020]第16号", "n16.txt"),
                          ("PPR-9087 维修", "ppr.txt"), ("ＰＰＲ－９０８８", "ppr2.txt")]:
        hits = engine.search(question, k=2, mode="bm25")
        assert hits[0].doc_id == doc and hits[0].score > hits[1].score, question
    assert engine.search('"〔2020〕15号"', k=5) == engine.search('"〔2020〕15号"', k=1)  # a phrase: that one notice


def test_documents_ranked_with_their_best_passages(mixed_index, encoder):
    engine = Engine(mixed_index, encoder=encoder)
    result = engine.query(["各校要落实什么责任制？"], k=3, group="documents")[0]
    docs = result.documents
    assert [d.rank for d in docs] == [1, 2, 3] and len({d.doc_id for d in docs}) == 3
    assert {docs[0].doc_id, docs[1].doc_id} == {"n15.txt", "n16.txt"}
    assert [d.score for d in docs] == sorted((d.score for d in docs), reverse=True)
    for d in docs:
        assert 1 <= len(d.hits) <= 3 and all(h.doc_id == d.doc_id for h in d.hits)
        assert d.score == pytest.approx(d.hits[0].score, abs=1e-6)  # a document scores by its best passage
        assert [h.score for h in d.hits] == sorted((h.score for h in d.hits), reverse=True)
    speech = engine.query(["民办学校怎样建立党组织？"], k=2, group="documents", mode="dense")[0].documents
    assert "speech.txt" in {d.doc_id for d in speech} and max(len(d.hits) for d in speech) == 3
    data = result.to_json()
    assert data["group"] == "documents" and data["documents"][0]["passages"][0]["sentence"]["text"]
    with pytest.raises(Exception, match="unknown grouping"):
        engine.query(["x"], 3, group="chapters")


def test_eval_scores_documents_when_the_labels_are_document_ids(mixed_index, encoder, tmp_path):
    from indexer.evaluation import Labelled, by_documents, evaluate

    engine = Engine(mixed_index, encoder=encoder)
    labels = [Labelled("〔2020〕15号文件", ("n15.txt",)), Labelled("如何加强党风廉政建设？", ("speech.txt",))]
    assert by_documents(engine, labels) and not by_documents(engine, [Labelled("x", ("加强民办学校",))])
    figures = evaluate(engine, labels, "hybrid", k=10)
    assert figures["hit@1"] == 1.0 and figures["mrr@10"] == 1.0  # documents: the speech counts once, at its rank


def test_equal_scores_rank_by_chunk_id_whatever_the_order_of_rows():
    """One rule cuts and joins every ranked list: the higher score, then the lower chunk id. Rows
    are only positions; the chunk ids (asked only for the rows whose score another shares) decide,
    and a selector that feeds a join keeps every row tied with its k-th."""
    import numpy as np

    from indexer.search import rrf_fuse
    from indexer.topk import best_first, candidates, top_k

    names = {4: ("b.txt", 0), 9: ("a.txt", 12), 2: ("a.txt", 3), 7: ("c.txt", 1)}
    asked: list[list[int]] = []

    def ties(rows):
        asked.append(sorted(rows.tolist()))
        return [names[r] for r in rows.tolist()]

    scores, rows = np.array([0.5, 0.9, 0.5, 0.5]), np.array([4, 7, 9, 2])
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        top_s, top_r = top_k(scores[order], rows[order], 3, ties)
        assert top_r.tolist() == [7, 2, 9] and top_s.tolist() == [0.9, 0.5, 0.5]
    assert asked == [[2, 4, 9]] * 3  # row 7's score is its own: its chunk id is never read
    assert sorted(candidates(np.array([0.1, 0.5, 0.5, 0.5, 0.2]), 2).tolist()) == [1, 2, 3]
    assert best_first([(9, 0.5), (4, 0.5), (2, 0.5)], 2, ties) == [(2, 0.5), (9, 0.5)]
    # reciprocal-rank fusion of two lists that disagree exactly: equal sums, in chunk-id order
    fused = rrf_fuse({"dense": [(4, 0.9), (9, 0.8)], "bm25": [(9, 5.0), (4, 4.0)]}, {"dense": 1.0, "bm25": 1.0}, 10, ties)
    assert [r.row for r in fused] == [9, 4] and fused[0].score == fused[1].score


def test_an_exact_segment_keeps_the_rows_tied_with_its_kth():
    """A segment's exact search keeps every row tied with its k-th (more than k), so the store's
    join, which orders equal scores by chunk id, chooses among all of them. The vectors hold
    halves and zeros: every order of summing gives the same float, on any CPU."""
    from pathlib import Path

    import numpy as np

    from indexer.postings import Postings
    from indexer.store.segment import Segment

    vectors = np.zeros((6, 4), np.float32)
    vectors[:, 0] = [0.5, 1.0, 0.5, 0.0, 0.5, 0.5]
    seg = Segment(1, Path("."), "flat", np.arange(6, dtype=np.int64), vectors, Postings.build([[]] * 6)[0])
    scores, rows = seg.search(np.array([[1, 0, 0, 0]], np.float32), 2, None)
    assert rows[0].tolist() == [1, 0, 2, 4, 5] and scores[0].tolist() == [1.0, 0.5, 0.5, 0.5, 0.5]
    dead = np.zeros(6, bool)
    dead[[0, 1]] = True
    scores, rows = seg.search(np.array([[1, 0, 0, 0]], np.float32), 2, None, dead)
    assert rows[0].tolist() == [2, 4, 5]


def test_equal_scores_come_in_chunk_id_order_from_any_segments(tmp_path, encoder):
    """Two notices with the same text score the same in BM25 (each row's score is its own sum, on
    any CPU): the one whose id sorts first ranks first, though it came in last, in a later segment,
    and at k=1 too; merged into one segment, the same. Grouped by documents, the same."""
    from indexer.reading import Document

    text = next(line for line in SPEECH.read_text(encoding="utf-8").splitlines() if line.startswith("市教育局党组继续贯彻"))
    engine = Engine(tmp_path / "index", encoder=encoder)
    engine.add_documents([Document("z-notice.txt", text, "通知")])
    engine.add_documents([Document("a-notice.txt", text, "通知")])  # a second segment: its rows come after z's
    question = "民办学校党组织书记的教育培训"
    for _ in range(2):
        top = engine.search(question, k=1, mode="bm25")[0]
        two = engine.search(question, k=2, mode="bm25")
        assert top.doc_id == "a-notice.txt" and [h.doc_id for h in two] == ["a-notice.txt", "z-notice.txt"]
        assert two[0].score == two[1].score > 0
        docs = engine.query([question], k=2, mode="bm25", group="documents")[0].documents
        assert [d.doc_id for d in docs] == ["a-notice.txt", "z-notice.txt"]
        engine.optimize()
