"""English questions over the Chinese speech: language routing, CC-CEDICT query translation, the
USE encoder, and the cross-lingual route measured against e5 alone on real data."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA, SPEECH

from indexer.crosslingual import (
    USE_DIM,
    PassageVectors,
    Translator,
    USEEncoder,
    corpus_vocabulary,
    inner_products,
    is_cross_lingual,
    sentence_spans,
    use_scores,
    word_forms,
)
from indexer.evaluation import read_labelled
from indexer.analysis import Segmenter
from indexer.search import FusionSettings
from indexer.topk import top_k

PRIVATE_SCHOOLS = "How do private schools set up Party organisations?"
N = 50  # candidates per route, as the engine's hybrid mode takes


@pytest.fixture(scope="module")
def speech_vocab() -> set[str]:
    """The speech's index terms: what the keyword segmenter makes of its lines (chunks are made of
    whole lines, so this is the chunk vocabulary)."""
    lines = SPEECH.read_text(encoding="utf-8").splitlines()
    return corpus_vocabulary(Segmenter().terms_many(lines))


@pytest.fixture(scope="module")
def use() -> USEEncoder:
    return USEEncoder()


# ---------------------------------------------------------------------------- routing


@pytest.mark.parametrize("question, expected", [
    ("How are Party organizations set up in privately run schools?", True),
    ("Who won the 2008 NBA Finals MVP?", True),
    ("Café au lait, s'il vous plaît", True),
    ("What does 三重一大 mean?", False),  # any Chinese character keeps the Chinese route
    ("民办学校怎样建立党组织？", False),
    ("NBA总决赛", False),
    ("こんにちは", False),
    ("2008", False),  # no letter at all
    ("   ", False),
])
def test_is_cross_lingual(question, expected):
    assert is_cross_lingual(question) is expected


def test_no_chinese_question_of_the_speech_set_takes_the_cross_lingual_route():
    zh = read_labelled(DATA / "speech_qa_zh.jsonl")
    en = read_labelled(DATA / "speech_qa_en.jsonl")
    assert not any(is_cross_lingual(q.query) for q in zh)
    assert all(is_cross_lingual(q.query) for q in en)


# ---------------------------------------------------------------------------- translation


def test_word_forms_lemmatise_simply():
    assert "organization" in word_forms("organisations")
    assert "school" in word_forms("schools")
    assert "study" in word_forms("studies")
    assert "run" in word_forms("running")
    assert "find" in word_forms("found")
    assert word_forms("Party")[0] == "party"


def test_translation_keeps_only_corpus_terms(speech_vocab):
    translator = Translator(speech_vocab)
    terms = translator.translate(PRIVATE_SCHOOLS)
    assert terms and set(terms) <= speech_vocab
    for expected in ("学校", "党", "组织", "党组织"):  # schools, Party, organisations, and the joined compound
        assert expected in speech_vocab
        assert expected in terms, (expected, terms)
    # the dictionary knows the phrase "private school", but 私立学校 is not a word of the speech
    assert "私立学校" not in speech_vocab and "私立学校" not in terms
    assert "私立学校" in Translator(None).translate("private school")


def test_a_term_not_in_the_corpus_never_appears(speech_vocab):
    question = "Where do kangaroos live in the national park?"
    everything = Translator(None).translate(question)
    assert "袋鼠" in everything and "国家公园" in everything
    assert not {"袋鼠", "国家公园", "公园"} & speech_vocab
    kept = Translator(speech_vocab).translate(question)
    assert not {"袋鼠", "国家公园", "公园"} & set(kept)
    assert set(kept) <= speech_vocab


def test_multi_word_phrases_are_preferred():
    parts = dict(Translator(None).explain("What does the private school offer?"))
    assert "private school" in parts and "私立学校" in parts["private school"]


def test_latin_words_and_numbers_of_the_corpus_pass_through():
    translator = Translator({"nba", "2008", "决赛", "总决赛"})
    terms = translator.translate("Why were the 2008 NBA Finals called a dream matchup?")
    assert "nba" in terms and "2008" in terms
    assert set(terms) <= {"nba", "2008", "决赛", "总决赛"}


def test_every_english_speech_question_gets_some_terms(speech_vocab):
    translator = Translator(speech_vocab)
    for q in read_labelled(DATA / "speech_qa_en.jsonl"):
        terms = translator.translate(q.query)
        assert terms, q.query
        assert set(terms) <= speech_vocab


# ---------------------------------------------------------------------------- USE


def test_use_vectors_are_normalised_float32(use):
    vecs = use.encode_queries(["How are Party organisations set up?", "党组织怎样建立？", ""])
    assert vecs.shape == (3, USE_DIM) == (3, use.dim)
    assert vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    docs = use.encode_documents(["民办学校要建立党组织。"], progress=lambda f: None)
    assert docs.shape == (1, USE_DIM) and np.isclose(np.linalg.norm(docs[0]), 1.0, atol=1e-4)
    assert use.encode_documents([]).shape == (0, USE_DIM)


def test_bulk_encoding_on_torch_gives_the_numpy_vectors(use):
    """A build's many texts run the torch forward (bf16 where the CPU has it); each vector is the
    numpy forward's, in order, to within bf16's rounding."""
    text = SPEECH.read_text(encoding="utf-8")
    sentences = [text[a:b] for a, b in sentence_spans(text)]
    assert len(sentences) > 60
    one_by_one = np.concatenate([use.encode_documents([s]) for s in sentences])
    bulk = USEEncoder(bulk=8).encode_documents(sentences)
    assert bulk.shape == one_by_one.shape
    cosines = (bulk * one_by_one).sum(1)
    assert cosines.min() > 0.9995
    assert np.array_equal(np.argmax(bulk @ one_by_one.T, axis=1), np.arange(len(sentences)))
    from indexer.crosslingual import _load_use
    from indexer.usetorch import TorchUSE

    exact = TorchUSE(_load_use(1), bf16=False).encode(sentences)  # the float32 port: the same network
    exact /= np.linalg.norm(exact, axis=1, keepdims=True)
    assert np.abs(exact - one_by_one).max() < 1e-4


@pytest.mark.parametrize("english, translation, unrelated", [
    ("How do private schools set up Party organisations?", "民办学校如何建立党组织？", "今天天气很好，我们去公园散步。"),
    ("The weather is nice today, let's go for a walk in the park.", "今天天气很好，我们去公园散步。",
     "民办学校如何建立党组织？"),
    ("Integrity education is held around traditional holidays.", "在传统节日前后开展廉洁教育。",
     "足球俱乐部的体育场可以容纳六千名观众。"),
])
def test_use_puts_a_translation_above_an_unrelated_sentence(use, english, translation, unrelated):
    q = use.encode_queries([english])[0]
    pair, other = use.encode_documents([translation, unrelated])
    assert float(q @ pair) > float(q @ other) + 0.1


def test_passage_scores_mix_the_passage_and_its_best_sentence(use):
    texts = ["今天天气很好。我们去公园散步！", "民办学校要建立党组织。采取单独组建、联合组建等方式。", "短"]
    passages = use.encode_passages(texts)
    assert len(passages) == 3 and list(passages.owner) == [0, 0, 1, 1, 2]
    assert [texts[1][a:b] for a, b in sentence_spans(texts[1])] == ["民办学校要建立党组织。", "采取单独组建、联合组建等方式。"]
    assert [tuple(x) for x in passages.spans[2:4]] == [(0, 11), (11, 26)] and passages.sentences_of(1) == slice(2, 4)
    q = use.encode_queries(["How do private schools set up Party organisations?"])
    scores = use_scores(q, passages)
    chunk = q @ passages.chunks.T
    best = max(float(q[0] @ passages.sentences[j]) for j in (2, 3))
    assert np.isclose(scores[0, 1], 0.5 * chunk[0, 1] + 0.5 * best, atol=1e-5)
    top_scores, rows = top_k(scores[0], np.arange(3), 2)
    assert rows[0] == 1 and len(rows) == 2 and top_scores[0] >= top_scores[1]
    _, only = top_k(scores[0, [0, 2]], np.array([0, 2]), 5)
    assert set(only.tolist()) == {0, 2}
    # removing a passage keeps the other scores; joining two sets offsets the owners
    kept = passages.take(np.array([2, 1]))
    assert np.allclose(use_scores(q, kept), scores[:, [2, 1]], atol=1e-6)
    both = PassageVectors.concat([passages, kept])
    assert np.allclose(use_scores(q, both), np.concatenate([scores, scores[:, [2, 1]]], axis=1), atol=1e-6)


# ---------------------------------------------------------------------------- the route, measured


def test_sentence_spans_skip_headings_and_crumbs():
    text = "四、加强民办学校党建工作\n市教育局党组继续贯彻。好。民办学校要建立党组织！"
    spans = sentence_spans(text)
    assert [text[a:b] for a, b in spans] == ["市教育局党组继续贯彻。", "民办学校要建立党组织！"]
    assert sentence_spans("短") == [(0, 1)] and sentence_spans("  ") == []


@pytest.fixture(scope="module")
def routes(speech_index, encoder):
    """The engine's own routes over the speech index, each a function questions → rankings:
    e5 alone, USE alone, BM25 of the translated terms alone, and the default (all three fused)."""
    from dataclasses import replace

    from indexer.engine import Engine

    def route(mode: str, **switches):
        engine = Engine(speech_index, encoder=encoder)
        engine.fusion = replace(FusionSettings(), **switches)
        return lambda questions: [[(h.score, h) for h in hits] for hits in engine.batch(questions, N, mode=mode)]

    engine = Engine(speech_index, encoder=encoder)

    def use_only(questions):
        from indexer.search import QueryPlan, UseRoute

        store = engine.store
        plans = [QueryPlan([], True, v) for v in engine.models.use().encode_queries(questions)]
        ranked = UseRoute(store, store.rows_of()).run(plans, N)
        return [list(zip([s for _, s in ranking], store.chunks([row for row, _ in ranking]))) for ranking in ranked]

    return {"e5": route("dense", use_route=False), "use": use_only, "bm25": route("bm25"), "fused": route("hybrid")}


def rank_of(ranking, relevant) -> int:
    """1-based rank of the first chunk holding a relevant substring (a large number if none)."""
    for rank, (_, chunk) in enumerate(ranking, start=1):
        if any(r in chunk.text for r in relevant):
            return rank
    return 10_000


def test_cross_lingual_route_finds_what_e5_alone_ranks_below_three(routes):
    """'How are Party organizations set up in privately run schools?': e5 alone puts the paragraph
    about 民办学校 below the top 3; USE, translated BM25 and the engine's default fusion put it in
    the top 3."""
    label = next(q for q in read_labelled(DATA / "speech_qa_en.jsonl") if "privately run schools" in q.query)
    ranks = {name: rank_of(route([label.query])[0], label.relevant) for name, route in routes.items()}
    assert ranks["e5"] > 3, f"e5 alone now finds it ({ranks}): pick another example"
    assert ranks["fused"] <= 3, ranks
    assert min(ranks["use"], ranks["bm25"]) <= 3, ranks


def test_cross_lingual_route_beats_e5_on_the_english_set(routes):
    labels = read_labelled(DATA / "speech_qa_en.jsonl")
    questions = [q.query for q in labels]
    e5 = [rank_of(r, q.relevant) for r, q in zip(routes["e5"](questions), labels)]
    fused = [rank_of(r, q.relevant) for r, q in zip(routes["fused"](questions), labels)]
    hit3_e5 = np.mean([r <= 3 for r in e5])
    hit3_fused = np.mean([r <= 3 for r in fused])
    assert hit3_fused > hit3_e5, (hit3_e5, hit3_fused)
    missed = [i for i, r in enumerate(e5) if r > 3]
    recovered = [i for i in missed if fused[i] <= 3]
    assert len(recovered) * 2 >= len(missed), (len(recovered), len(missed))


def test_chinese_questions_do_not_take_the_cross_lingual_routes(speech_index, encoder):
    """The USE route and translation leave Chinese questions alone: the same ranking with them off."""
    from dataclasses import replace

    from indexer.engine import Engine

    questions = [q.query for q in read_labelled(DATA / "speech_qa_zh.jsonl")]
    on = Engine(speech_index, encoder=encoder)
    off = Engine(speech_index, encoder=encoder)
    off.fusion = replace(off.fusion, use_route=False, translate=False)
    ids = lambda results: [[h.chunk_id for h in r.hits] for r in results]  # noqa: E731
    assert ids(on.query(questions, 10)) == ids(off.query(questions, 10))
    assert not any(r.cross_lingual or r.translations for r in on.query(questions[:5], 3))


def test_english_result_reports_its_translated_terms(speech_index, encoder, speech_vocab):
    from indexer.engine import Engine

    result = Engine(speech_index, encoder=encoder).query([PRIVATE_SCHOOLS], 3)[0]
    assert result.cross_lingual and result.terms and set(result.terms) <= speech_vocab
    assert {"学校", "党组织"} <= set(result.terms)
    assert [t for _, part in result.translations for t in part if t not in result.terms] == []
    data = result.to_json()
    assert data["terms"] == result.terms and data["translations"][0]["english"]
    assert any("民办学校" in h.text for h in result.hits[:3])


def test_answering_sentence_offsets_point_into_the_original_text(speech_index, encoder, speech_text):
    """Every hit's sentence offsets cut exactly that sentence out of the original document, inside
    the hit; for labelled questions the top hit's sentence mostly holds the labelled answer."""
    from indexer.engine import Engine

    engine = Engine(speech_index, encoder=encoder)
    for lang in ("zh", "en"):
        labels = read_labelled(DATA / f"speech_qa_{lang}.jsonl")
        results = engine.query([q.query for q in labels], 5)
        found = total = 0
        for label, result in zip(labels, results):
            for hit in result.hits:
                assert hit.start <= hit.sentence_start < hit.sentence_end <= hit.end
                assert speech_text[hit.sentence_start:hit.sentence_end] == hit.sentence
                assert (hit.sentence_start, hit.sentence_end) in {
                    (hit.start + a, hit.start + b) for a, b in sentence_spans(hit.text)}
                assert hit.to_json()["sentence"]["text"] == hit.sentence
            top = result.hits[0]
            if any(r in top.text for r in label.relevant):
                total += 1
                found += any(r in top.sentence or top.sentence in r for r in label.relevant)
        assert total >= 30 and found / total >= 0.8, (lang, found, total)


def test_a_float16_table_is_multiplied_in_place_as_numpy_would(tmp_path, monkeypatch):
    """The USE route's product over a stored float16 table: OpenVINO on the copy-on-write map (as a
    segment opens it) gives numpy's float32 product of the converted table, for one question and
    several; a read-only map, a small table and a float32 table take numpy's path, with the same
    result."""
    from indexer import crosslingual

    rng = np.random.default_rng(7)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731 - USE vectors are unit length
    table = unit(rng.standard_normal((6000, USE_DIM))).astype(np.float16)
    np.save(tmp_path / "t.npy", table)
    queries = unit(rng.standard_normal((3, USE_DIM))).astype(np.float32)
    want = queries @ table.astype(np.float32).T
    fast, calls = crosslingual._f16_product(), []
    assert fast is not None  # OpenVINO is installed
    monkeypatch.setattr(crosslingual, "_f16_product", lambda: lambda q, t: calls.append(len(t)) or fast(q, t))
    for mode in ("c", "r"):
        mapped = np.load(tmp_path / "t.npy", mmap_mode=mode)
        for q in (queries[:1], queries):
            got = inner_products(q, mapped[100:5900])
            assert got.dtype == np.float32 and got.shape == (len(q), 5800)
            np.testing.assert_allclose(got, want[:len(q), 100:5900], atol=1e-6)  # float32, summed in another order
    assert calls == [5800, 5800]  # OpenVINO read the copy-on-write map; the read-only one went to numpy
    small = np.load(tmp_path / "t.npy", mmap_mode="c")[:100]  # below F16_PRODUCT_ROWS: numpy, no graph to compile
    np.testing.assert_allclose(inner_products(queries, small), want[:, :100], atol=1e-6)
    assert calls == [5800, 5800]
    np.testing.assert_array_equal(inner_products(queries, table.astype(np.float32)), want)


@pytest.mark.parametrize("value,finite", [(np.inf, False), (-np.inf, False), (np.nan, False), (65504.0, True),
                                          (-65504.0, True), (6e-8, True), (-0.0, True)])
def test_all_finite_reads_float16_by_its_bits(value, finite):
    """`check` reads the float16 sentence table by its bits: every NaN and infinity (either sign)
    is found, in any block, and the largest and smallest finite values pass."""
    from indexer.store.table import all_finite

    table = np.ones((70_000, 4), np.float16)
    table[66_000, 3] = value  # in the second block
    assert all_finite(table, block=65_536) is finite
    assert all_finite(table.astype(np.float32)) is finite
