"""Cutting documents into chunks: the speech, headings, long paragraphs, and properties of any input."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.chunking import (
    Chunk,
    ChunkSettings,
    chunk_document,
    estimate_tokens,
    is_heading,
    split_sentences,
)
from indexer.reading import Document, read_file

SPEECH_PATH = Path(__file__).resolve().parents[1] / "data" / "speech.txt"
SPEECH_HEADING = re.compile(r"^[一二三四五六七八九十]+、")


@pytest.fixture(scope="module")
def speech() -> Document:
    [doc] = read_file(SPEECH_PATH)
    return doc


SPEECH_SETTINGS = ChunkSettings(max_tokens=480)  # the estimate counts every CJK character as a token,
# ~1.6x the model's count on the speech: 480 estimated tokens keep its paragraphs as whole as the
# model's 256 do (22 and 23 chunks)


@pytest.fixture(scope="module")
def speech_chunks(speech) -> list[Chunk]:
    return chunk_document(speech, SPEECH_SETTINGS)


def make_doc(text: str) -> Document:
    return Document(doc_id="doc", text=text)


def check_offsets(doc: Document, chunks: list[Chunk]) -> None:
    assert [c.position for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text == doc.text[c.start : c.end]
        assert c.text and c.text == c.text.strip()
        assert c.chunk_id == f"{doc.doc_id}#{c.position}" and c.doc_id == doc.doc_id
        assert c.section == (c.section_path[-1] if c.section_path else "")
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def check_headings_only_lead(doc: Document, chunks: list[Chunk]) -> None:
    """Heading lines (judged on the whole line of the document) may open a chunk, never follow text."""
    line_spans, offset = [], 0
    for line in doc.text.split("\n"):
        line_spans.append((offset, offset + len(line), line))
        offset += len(line) + 1
    for c in chunks:
        flags = [is_heading(line) for start, end, line in line_spans if start < c.end and end > c.start and line.strip()]
        assert flags == sorted(flags, reverse=True), f"a chunk crosses a heading: {c.text!r}"


def check_no_loss(doc: Document, chunks: list[Chunk]) -> None:
    covered = bytearray(len(doc.text))
    for c in chunks:
        covered[c.start : c.end] = b"\x01" * (c.end - c.start)
    lost = [i for i, ch in enumerate(doc.text) if not ch.isspace() and not covered[i]]
    assert not lost, f"characters in no chunk: {[doc.text[i] for i in lost[:20]]}"


# ---------------------------------------------------------------------------- the speech


def test_speech_chunk_count_and_offsets(speech, speech_chunks):
    assert 20 <= len(speech_chunks) <= 25
    check_offsets(speech, speech_chunks)
    check_no_loss(speech, speech_chunks)
    check_headings_only_lead(speech, speech_chunks)
    assert all(estimate_tokens(c.text) <= SPEECH_SETTINGS.max_tokens for c in speech_chunks)


def test_no_speech_chunk_is_a_bare_heading_or_salutation(speech_chunks):
    min_chars = ChunkSettings().min_chars
    for c in speech_chunks:
        assert any(len(line.strip()) >= min_chars for line in c.text.split("\n")), c.text


def test_speech_sections_match_the_heading_above(speech, speech_chunks):
    heading_starts = [m.start() for m in re.finditer(r"(?m)^[一二三四五六七八九十]+、", speech.text)]
    assert len(heading_starts) == 7
    for c in speech_chunks:
        above = [start for start in heading_starts if start <= c.start]
        expected = speech.text[above[-1] :].split("\n", 1)[0].strip() if above else ""
        assert c.section == expected
        assert c.section_path == ((expected,) if expected else ())


def test_every_speech_heading_starts_a_chunk(speech, speech_chunks):
    headings = [line for line in speech.text.split("\n") if SPEECH_HEADING.match(line)]
    assert [c.text.split("\n", 1)[0] for c in speech_chunks if c.text.split("\n", 1)[0] in headings] == headings


def test_advert_block_and_salutation(speech_chunks):
    advert, first = speech_chunks[0], speech_chunks[1]
    assert advert.text.startswith("仅供学习") and "同志们" not in advert.text
    assert first.text.startswith("在市X局党的建设工作会议上讲话\n同志们：\n上周，X市委")
    assert first.section == ""


def test_private_school_paragraph_is_one_chunk(speech, speech_chunks):
    [line] = [line for line in speech.text.split("\n") if line.startswith("市教育局党组继续贯彻")]
    [chunk] = [c for c in speech_chunks if "市教育局党组继续贯彻" in c.text]
    assert chunk.text.endswith(line)
    assert chunk.section.startswith("四、加强民办学校党建工作")
    assert chunk.paragraph == [l for l in speech.text.split("\n") if l.strip()].index(line)


def test_items_are_paragraphs_not_headings(speech_chunks):
    items = [c for c in speech_chunks if re.match(r"[一二三四]是", c.text)]
    assert len(items) >= 10
    assert all(c.section.startswith(("三、", "五、", "六、")) for c in items)


def test_the_longest_speech_paragraph_is_split_with_overlap(speech, speech_chunks):
    paragraphs = [line for line in speech.text.split("\n") if line.strip()]
    [line] = [line for line in paragraphs if line.startswith("各单位党组织要把深入学习贯彻")]
    pieces = [c for c in speech_chunks if c.paragraph == paragraphs.index(line)]
    assert len(pieces) == 2
    assert pieces[0].text.startswith("二、加强思想建设，注重学思践悟\n各单位党组织要把深入学习贯彻")
    assert pieces[1].end == speech.text.index(line) + len(line)
    start, end = split_sentences(pieces[0].text)[-1]
    assert pieces[1].text.startswith(pieces[0].text[start:end])
    assert pieces[1].section == pieces[0].section


def test_real_tokenizer_count_is_respected(speech):
    chunks = chunk_document(speech, ChunkSettings(max_tokens=100), count_tokens=len)
    assert all(len(c.text) <= 100 for c in chunks)
    check_offsets(speech, chunks)
    check_no_loss(speech, chunks)


# ---------------------------------------------------------------------------- splitting


SENTENCES = [f"这是第{n}句话，内容用于测试长段落的切分。" for n in range(40)]


def test_long_paragraph_is_split_with_overlap():
    doc = make_doc("一、标题\n" + "".join(SENTENCES))
    chunks = chunk_document(doc, ChunkSettings(max_tokens=60, overlap=1))
    assert len(chunks) > 5
    assert all(estimate_tokens(c.text) <= 60 for c in chunks)
    assert chunks[0].text.startswith("一、标题\n这是第0句话")
    assert all(c.section == "一、标题" and c.paragraph == 1 for c in chunks)
    for before, after in zip(chunks, chunks[1:]):
        last_sentence = re.findall(r"这是第\d+句话", before.text)[-1]
        assert after.text.startswith(last_sentence)
    check_no_loss(doc, chunks)


def test_overlap_zero_gives_disjoint_pieces():
    doc = make_doc("".join(SENTENCES))
    chunks = chunk_document(doc, ChunkSettings(max_tokens=60, overlap=0))
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))
    assert "".join(c.text for c in chunks) == doc.text


def test_over_long_sentence_is_cut_at_commas_then_anywhere():
    clauses = "，".join(f"第{n}个分句内容" for n in range(30)) + "。"
    unbroken = "无标点长句" * 60
    doc = make_doc(clauses + "\n" + unbroken)
    chunks = chunk_document(doc, ChunkSettings(max_tokens=40))
    assert all(estimate_tokens(c.text) <= 40 for c in chunks)
    assert any(c.text.endswith("，") for c in chunks)
    check_no_loss(doc, chunks)
    assert "".join(c.text for c in chunks if c.start >= len(clauses)) == unbroken


def test_max_tokens_too_small_for_one_character_is_an_error():
    with pytest.raises(ValueError):
        chunk_document(make_doc("这是一个很长的句子。" * 10), ChunkSettings(max_tokens=2))


def test_split_sentences_covers_all_text():
    text = "他说：“好的。”然后走了！e.g. this. And 3.5 more?  ok；最后"
    spans = split_sentences(text)
    assert [text[s:e] for s, e in spans] == ["他说：“好的。”", "然后走了！", "e.g.", "this.", "And 3.5 more?", "ok；", "最后"]


def test_estimate_tokens():
    assert estimate_tokens("") == 2
    assert estimate_tokens("中文") == 4
    assert estimate_tokens("abcd 12") == 2 + 1 + 2


# ---------------------------------------------------------------------------- headings and short lines


@pytest.mark.parametrize(
    "line",
    ["一、加强政治建设，强化政治担当", "十二、其他", "（一）加强学习", "(二) 标题", "第三章 总则", "第一部分", "第2节 方法",
     "## Markdown 标题", "1. 概述", "2、工作安排"],
)
def test_headings(line):
    assert is_heading(line)


@pytest.mark.parametrize(
    "line",
    ["一是加强学习。", "二是进一步规范落实“三会一课”", "首先，我们要", "同志们：", "1.5亿元的投入", "2020年工作总结",
     "1、加强学习。要认真。", "一、加强学习。要认真对待每一项工作。", "一、" + "很长" * 40, "#hashtag", ""],
)
def test_not_headings(line):
    assert not is_heading(line)


def test_heading_hierarchy_in_section_path():
    para = "这是一个足够长的段落，用来测试章节路径的层级关系是否正确。"
    doc = make_doc(f"第一章 总则\n一、总体要求\n{para}\n（一）小项\n{para}\n二、第二部分\n{para}\n第二章 附则\n{para}")
    chunks = chunk_document(doc)
    assert [c.section_path for c in chunks] == [
        ("第一章 总则", "一、总体要求"),
        ("第一章 总则", "一、总体要求", "（一）小项"),
        ("第一章 总则", "二、第二部分"),
        ("第二章 附则",),
    ]
    assert chunks[0].text.startswith("第一章 总则\n一、总体要求\n")


def test_markdown_headings():
    doc = make_doc("# Title\n\nSome intro text that is long enough to be a paragraph.\n\n## Part A\n\n"
                   "More text here that is also long enough to be a paragraph, yes.")
    chunks = chunk_document(doc)
    assert [c.section_path for c in chunks] == [("Title",), ("Title", "Part A")]
    assert chunks[1].text.startswith("## Part A\n\nMore text")


def test_heading_sentence_opening_a_long_line():
    body = "各单位党组织要把深入学习贯彻新思想作为首要的政治任务和长期战略任务，认真对标对照。"
    doc = make_doc(f"开头的一段足够长的文字，说明这次会议的主要内容和安排。\n二、加强思想建设。{body}\n一是{body}")
    chunks = chunk_document(doc)
    assert [c.section for c in chunks] == ["", "二、加强思想建设", "二、加强思想建设"]
    assert chunks[1].text == f"二、加强思想建设。{body}"


def test_short_lines_at_section_end_join_the_previous_chunk():
    para = "这是一个足够长的段落，用来测试短行附加到前一个块的规则。"
    doc = make_doc(f"一、第一节\n{para}\n谢谢！\n二、第二节\n{para}\n此致\n敬礼")
    chunks = chunk_document(doc)
    assert [c.text for c in chunks] == [f"一、第一节\n{para}\n谢谢！", f"二、第二节\n{para}\n此致\n敬礼"]


def test_lone_short_lines_and_empty_sections_are_not_lost():
    assert [c.text for c in chunk_document(make_doc("短行一\n短行二"))] == ["短行一\n短行二"]
    para = "这是一个足够长的段落，用来测试空章节的标题不会丢失。"
    chunks = chunk_document(make_doc(f"一、空章节\n二、有内容\n{para}"))
    assert [c.text for c in chunks] == ["一、空章节", f"二、有内容\n{para}"]


def test_detached_block_of_short_lines_is_its_own_chunk():
    ad = "\n".join(f"广告第{n}行文字内容有十五个字呢" for n in range(6))
    para = "这是正文的第一个段落，内容足够长，可以单独成为一个块，不会被当作短行。"
    doc = make_doc(f"{ad}\n\n\n标题\n{para}\n\n\n{ad}")
    assert [c.text for c in chunk_document(doc)] == [ad, f"标题\n{para}", ad]
    glued = make_doc(f"{ad}\n标题\n{para}")
    assert [c.text for c in chunk_document(glued)] == [glued.text]


def test_settings_are_validated():
    with pytest.raises(ValueError):
        ChunkSettings(max_tokens=0)
    with pytest.raises(ValueError):
        ChunkSettings(overlap=-1)


def test_ten_thousand_paragraphs_take_linear_work(speech):
    """Counting tokens is the costly step; the number of counts grows with the paragraphs, not with
    their square (timings belong in bench/)."""
    paragraphs = [line for line in speech.text.split("\n") if len(line) > 30]
    calls = []

    def counting(text: str) -> int:
        calls.append(len(text))
        return estimate_tokens(text)

    small = chunk_document(make_doc("\n".join(paragraphs[i % len(paragraphs)] for i in range(1_000))), count_tokens=counting)
    small_calls, calls[:] = len(calls), []
    chunks = chunk_document(make_doc("\n".join(paragraphs[i % len(paragraphs)] for i in range(10_000))), count_tokens=counting)
    assert len(small) >= 1_000 and len(chunks) >= 10_000
    assert len(calls) <= 11 * small_calls  # ten times the paragraphs, about ten times the counting
    assert sum(calls) <= 5 * sum(len(c.text) for c in chunks)  # each character is counted a few times, not n times


# ---------------------------------------------------------------------------- properties


def speech_sentences() -> list[str]:
    text = SPEECH_PATH.read_text(encoding="utf-8")
    return sorted({text[s:e] for s, e in split_sentences(text)})


SPEECH_SENTENCES = speech_sentences()
HEADINGS = ["一、加强政治建设，强化政治担当", "（一）小标题", "第一章 总则", "## Markdown", "1. 概述", "二、标题。正文第一句也在这一行里，比较长。"]
SHORT_LINES = ["同志们：", "谢谢！", "附件", "  缩进的短行", "\u3000\u3000全角缩进"]
LONG_RUN = "无标点的超长句子" * 40

paragraph = st.lists(st.sampled_from(SPEECH_SENTENCES), min_size=1, max_size=8).map("".join)
line = st.one_of(
    paragraph,
    paragraph.map(lambda p: "\u3000\u3000" + p),
    st.sampled_from(HEADINGS),
    st.sampled_from(SHORT_LINES),
    st.just(LONG_RUN),
    st.just(""),
    st.just("  \t"),
)
documents = st.lists(line, min_size=1, max_size=25).map("\n".join).filter(str.strip).map(make_doc)
chunk_settings = st.builds(
    ChunkSettings,
    max_tokens=st.sampled_from([12, 30, 80, 200, 480]),
    overlap=st.integers(0, 2),
    min_chars=st.integers(0, 40),
)


@settings(max_examples=150, deadline=None)
@given(documents, chunk_settings)
def test_property_no_loss_exact_offsets_within_limit(doc, chunk_settings):
    chunks = chunk_document(doc, chunk_settings)
    check_offsets(doc, chunks)
    check_no_loss(doc, chunks)
    check_headings_only_lead(doc, chunks)
    assert all(estimate_tokens(c.text) <= chunk_settings.max_tokens for c in chunks)


@settings(max_examples=50, deadline=None)
@given(documents, chunk_settings)
def test_property_deterministic(doc, chunk_settings):
    assert chunk_document(doc, chunk_settings) == chunk_document(Document(doc.doc_id, doc.text), chunk_settings)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=300), st.sampled_from([10, 50, 480]))
def test_property_any_text_is_chunked_without_loss(text, max_tokens):
    doc = make_doc(text)
    chunks = chunk_document(doc, ChunkSettings(max_tokens=max_tokens))
    check_offsets(doc, chunks)
    check_no_loss(doc, chunks)
    assert all(estimate_tokens(c.text) <= max_tokens for c in chunks)
