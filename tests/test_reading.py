"""Reading files into documents: encodings, binary and empty files, JSON Lines, folders, .docx, .pdf."""
from __future__ import annotations

import codecs
import datetime as dt
import hashlib
import json
import random
import zipfile
from pathlib import Path

import pytest

from indexer.reading import Document, ReadError, decode_bytes, read_file, read_paths

SPEECH_PATH = Path(__file__).resolve().parents[1] / "data" / "speech.txt"


@pytest.fixture(scope="module")
def speech() -> str:
    return SPEECH_PATH.read_text(encoding="utf-8")


def write(folder: Path, name: str, data: bytes | str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def read_one(path: Path) -> Document:
    [doc] = read_file(path)
    return doc


# ---------------------------------------------------------------------------- encodings

ENCODINGS = [
    # (label, encode the text, reported encoding)
    ("utf-8", lambda text: text.encode("utf-8"), "utf-8"),
    ("utf-8 BOM", lambda text: text.encode("utf-8-sig"), "utf-8-sig"),
    ("gb18030", lambda text: text.encode("gb18030"), "gb18030"),
    ("gbk", lambda text: text.encode("gbk"), "gb18030"),
    ("utf-16 LE BOM", lambda text: codecs.BOM_UTF16_LE + text.encode("utf-16-le"), "utf-16"),
    ("utf-16 BE BOM", lambda text: codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "utf-16"),
    ("utf-16 BE", lambda text: text.encode("utf-16-be"), "utf-16-be"),
    ("utf-16 LE", lambda text: text.encode("utf-16-le"), "utf-16-le"),
    ("utf-32", lambda text: text.encode("utf-32"), "utf-32"),
]


@pytest.mark.parametrize(("label", "encode", "expected"), ENCODINGS, ids=[e[0] for e in ENCODINGS])
def test_speech_decodes_identically_in_every_encoding(tmp_path, speech, label, encode, expected):
    doc = read_one(write(tmp_path, "speech.txt", encode(speech)))
    assert doc.text == speech
    assert doc.encoding == expected


def test_document_fields_for_a_text_file(speech):
    [doc] = read_paths([SPEECH_PATH])
    assert doc.doc_id == "speech.txt"
    assert doc.title == "speech"
    assert doc.origin == str(SPEECH_PATH)
    modified = dt.datetime.fromtimestamp(int(SPEECH_PATH.stat().st_mtime), dt.timezone.utc)
    assert doc.meta == {"type": "txt", "size": SPEECH_PATH.stat().st_size, "folder": "", "reader": "text",
                        "modified": modified.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert doc.content_hash == hashlib.sha256(speech.encode("utf-8")).hexdigest()


def test_newlines_are_normalised_and_nothing_else(tmp_path, speech):
    crlf = speech.replace("\n", "\r\n")
    assert read_one(write(tmp_path, "crlf.txt", crlf.encode("gb18030"))).text == speech
    assert decode_bytes("a\r\nb\rc\n\u3000d \t".encode("utf-8"), "x") == ("a\nb\nc\n\u3000d \t", "utf-8")


def test_short_gb_text_is_not_mistaken_for_big5():
    assert decode_bytes("同志们：".encode("gb18030"), "x") == ("同志们：", "gb18030")


def test_undecodable_bytes_name_the_file(tmp_path):
    rng = random.Random(7)
    noise = bytes(rng.randrange(0x80, 0x100) for _ in range(400))
    path = write(tmp_path, "noise.txt", noise)
    with pytest.raises(ReadError, match="noise.txt: "):
        read_file(path)


# ---------------------------------------------------------------------------- binary and empty


def png_bytes() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4


def zip_bytes(folder: Path) -> bytes:
    archive = folder / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inner.txt", "你好，世界。" * 50)
    return archive.read_bytes()


@pytest.mark.parametrize("kind", ["png", "zip", "nul-bytes", "control-chars"])
def test_binary_files_are_refused(tmp_path, kind):
    data = {
        "png": png_bytes,
        "zip": lambda: zip_bytes(tmp_path),
        "nul-bytes": lambda: b"text\x00\x00\x01 more\x00text\x00\x00\x00",
        "control-chars": lambda: bytes(range(1, 9)) * 40 + b"some text",
    }[kind]()
    path = write(tmp_path, f"{kind}.txt", data)
    with pytest.raises(ReadError, match=rf"{kind}\.txt: binary file, not text"):
        read_file(path)


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", "\u3000\n".encode("utf-8"), codecs.BOM_UTF8])
def test_empty_documents_are_refused(tmp_path, data):
    path = write(tmp_path, "empty.txt", data)
    with pytest.raises(ReadError, match=r"empty\.txt: empty document"):
        read_file(path)


def test_error_messages_are_one_line(tmp_path):
    path = write(tmp_path, "bad.jsonl", '{"text": "a"}\n{"text": \n')
    with pytest.raises(ReadError) as caught:
        read_file(path)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------------- JSON Lines


def jsonl(*records: object) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n"


def test_jsonl_fields_missing_id_and_meta(tmp_path):
    path = write(
        tmp_path,
        "notes.jsonl",
        jsonl(
            {"id": "a1", "text": "第一篇\r\n正文", "title": "标题一", "author": "张三", "tags": ["x", 1]},
            "",
            {"text": "没有编号的记录"},
            {"id": 7, "text": "数字编号"},
        ),
    )
    docs = read_file(path)
    assert [d.doc_id for d in docs] == ["a1", "notes.jsonl#3", "7"]
    assert [d.title for d in docs] == ["标题一", "notes", "notes"]
    assert [d.origin for d in docs] == [f"{path}#L1", f"{path}#L3", f"{path}#L4"]
    assert docs[0].text == "第一篇\n正文"
    own = {"author": "张三", "tags": ["x", 1]}
    assert {key: docs[0].meta[key] for key in own} == own
    assert set(docs[1].meta) == {"type", "size", "modified", "folder", "reader"}
    assert docs[0].meta["type"] == "jsonl" and docs[0].meta["reader"] == "jsonl"
    assert all(d.encoding is None for d in docs)


@pytest.mark.parametrize(
    "bad_line", ['{"id": "b", "text": ', "[1, 2]", '{"id": "b"}', '{"id": "b", "text": 5}', '{"text": "  "}']
)
def test_jsonl_bad_line_names_the_line_unless_skipped(tmp_path, bad_line):
    path = write(tmp_path, "data.jsonl", jsonl({"id": "a", "text": "好的"}, bad_line, {"id": "c", "text": "也好"}))
    with pytest.raises(ReadError, match=r"data\.jsonl: line 2: "):
        read_file(path)
    assert [d.doc_id for d in read_file(path, skip_bad_lines=True)] == ["a", "c"]
    assert [d.doc_id for d in read_paths([path], skip_bad_lines=True)] == ["a", "c"]


def test_jsonl_with_only_bad_lines_is_an_error_even_when_skipping(tmp_path):
    path = write(tmp_path, "bad.jsonl", "not json\n{oops\n")
    with pytest.raises(ReadError, match=r"bad\.jsonl: no valid lines"):
        read_file(path, skip_bad_lines=True)


def test_duplicate_ids_name_both_sources(tmp_path):
    path = write(tmp_path, "dup.jsonl", jsonl({"id": "x", "text": "一"}, {"id": "x", "text": "二"}))
    with pytest.raises(ReadError, match=r"dup\.jsonl#L2: duplicate id 'x' \(also in .*dup\.jsonl#L1\)"):
        read_file(path)


def test_duplicate_ids_across_files(tmp_path):
    first = write(tmp_path, "a.jsonl", jsonl({"id": "same", "text": "一"}))
    second = write(tmp_path, "b.jsonl", jsonl({"id": "same", "text": "二"}))
    with pytest.raises(ReadError, match=r"b\.jsonl#L1: duplicate id 'same' \(also in .*a\.jsonl#L1\)"):
        read_paths([first, second])


# ---------------------------------------------------------------------------- folders and paths


def make_tree(root: Path) -> None:
    write(root, "b.txt", "乙")
    write(root, "a.md", "# 甲\n正文")
    write(root, "sub/c.txt", "丙".encode("gb18030"))
    write(root, "sub/deeper/d.jsonl", jsonl({"id": "d1", "text": "丁"}, {"text": "戊"}))
    write(root, "sub/notes.text", "己")
    write(root, ".hidden.txt", "hidden")
    write(root, ".git/config.txt", "hidden")
    write(root, "image.gif", b"GIF89a" + bytes(10))
    write(root, "script.py", "print('not a document')")


def test_folder_is_read_recursively_with_stable_relative_ids(tmp_path):
    make_tree(tmp_path / "corpus")
    docs = read_paths([tmp_path / "corpus"])
    expected = ["a.md", "b.txt", "sub/c.txt", "d1", "sub/deeper/d.jsonl#2", "sub/notes.text"]
    assert [d.doc_id for d in docs] == expected
    assert [d.doc_id for d in read_paths([str(tmp_path / "corpus")])] == expected
    assert docs[2].encoding == "gb18030" and docs[2].text == "丙"


def test_ids_are_relative_to_the_common_root(tmp_path):
    first = write(tmp_path, "x/same.txt", "一")
    second = write(tmp_path, "y/same.txt", "二")
    assert [d.doc_id for d in read_paths([first, second])] == ["x/same.txt", "y/same.txt"]
    assert [d.doc_id for d in read_paths([first])] == ["same.txt"]


def test_a_path_given_twice_is_read_once(tmp_path):
    path = write(tmp_path, "one.txt", "一")
    assert [d.doc_id for d in read_paths([path, tmp_path, path])] == ["one.txt"]


def test_unknown_extension_is_read_when_named_but_skipped_in_folders(tmp_path):
    path = write(tmp_path, "README", "说明文字")
    assert read_one(path).text == "说明文字"
    write(tmp_path, "doc.txt", "正文")
    assert [d.doc_id for d in read_paths([tmp_path])] == ["doc.txt"]


def test_folder_without_readable_files_is_an_error(tmp_path):
    write(tmp_path, "image.gif", b"GIF89a" + bytes(10))
    write(tmp_path, ".hidden.txt", "hidden")
    with pytest.raises(ReadError, match="no readable files"):
        read_paths([tmp_path])


def test_missing_path_is_an_error(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ReadError, match=r"nope\.txt: no such file or directory"):
        read_paths([missing])
    with pytest.raises(ReadError, match=r"nope\.txt: no such file or directory"):
        read_file(missing)


def test_no_paths_is_an_error():
    with pytest.raises(ReadError):
        read_paths([])


# ---------------------------------------------------------------------------- .docx and .pdf


def test_docx_paragraphs_tables_and_title(tmp_path, speech):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.core_properties.title = "党建工作会议讲话"
    paragraphs = [line for line in speech.split("\n") if line.strip()][9:13]
    for paragraph in paragraphs[:2]:
        document.add_paragraph(paragraph)
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {(0, 0): "项目", (0, 1): "负责人", (1, 0): "支部建设", (1, 1): "组织科"}.items():
        table.cell(row, col).text = text
    for paragraph in paragraphs[2:]:
        document.add_paragraph(paragraph)
    path = tmp_path / "讲话.docx"
    document.save(path)

    doc = read_one(path)
    assert doc.text.split("\n") == [*paragraphs[:2], "项目\t负责人", "支部建设\t组织科", *paragraphs[2:]]
    assert doc.title == "党建工作会议讲话"
    assert doc.encoding is None and doc.doc_id == "讲话.docx"


def test_docx_without_title_uses_the_file_stem(tmp_path):
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_paragraph("只有一段。")
    document.save(tmp_path / "plain.docx")
    assert read_one(tmp_path / "plain.docx").title == "plain"


def test_damaged_docx_is_an_error(tmp_path):
    path = write(tmp_path, "broken.docx", b"PK\x03\x04 not really a zip")
    with pytest.raises(ReadError, match=r"broken\.docx: not a valid \.docx file"):
        read_file(path)


def make_pdf(path: Path, pages: list[str]) -> Path:
    fpdf = pytest.importorskip("fpdf")
    pdf = fpdf.FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def test_pdf_text_layer_is_read(tmp_path):
    path = make_pdf(tmp_path / "report.pdf", ["Party building work meeting.", "Second page text."])
    doc = read_one(path)
    assert "Party building work meeting." in doc.text
    assert "Second page text." in doc.text
    assert doc.text.index("Party") < doc.text.index("Second")
    assert doc.title == "report" and doc.encoding is None


def test_pdf_without_text_is_reported_as_scanned_when_ocr_is_off(tmp_path, monkeypatch):
    path = make_pdf(tmp_path / "scan.pdf", [""])
    with pytest.raises(ReadError, match=r"scan\.pdf: has no text layer \(scanned\?\)"):
        read_file(path, ocr=False)
    monkeypatch.setenv("INDEXER_OCR", "0")
    with pytest.raises(ReadError, match=r"scan\.pdf: has no text layer \(scanned\?\)"):
        read_file(path)


def test_blank_pdf_is_an_error_after_ocr_too(tmp_path):
    path = make_pdf(tmp_path / "blank.pdf", [""])
    with pytest.raises(ReadError, match=r"blank\.pdf: has no text layer \(OCR found no text either\)"):
        read_file(path)


def test_damaged_pdf_is_an_error(tmp_path):
    path = write(tmp_path, "broken.pdf", b"%PDF-1.4\nnothing else")
    with pytest.raises(ReadError, match=r"broken\.pdf: "):
        read_file(path)


def test_jsonl_over_the_document_limit_streams_in_parts(tmp_path, monkeypatch):
    """The size limit is for one document: a JSON Lines file larger than it is read line by line,
    in parts, every line still checked first (a bad one refuses the whole file, as for a small one)."""
    from indexer import reading

    monkeypatch.setenv("INDEXER_MAX_DOC_MB", "0.02")  # 20 kB
    monkeypatch.setattr(reading, "JSONL_PART_BYTES", 8_000)
    lines = [json.dumps({"id": f"n{i}", "text": f"第{i}号通知：各校要按时报送材料。" * 3, "year": 2020 + i % 3},
                        ensure_ascii=False) for i in range(400)]
    big = tmp_path / "notices.jsonl"
    big.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert big.stat().st_size > 2 * 20_000
    parts = list(reading.iter_documents(reading.plan_files([big])))
    assert len(parts) > 5 and all(isinstance(docs, list) for _, docs in parts)
    docs = [d for _, part in parts for d in part]
    assert [d.doc_id for d in docs] == [f"n{i}" for i in range(400)]
    assert docs[7].meta["year"] == 2021 and docs[7].meta["reader"] == "jsonl" and docs[7].origin.endswith("#L8")
    assert sum(f.size for f, _ in parts) == big.stat().st_size
    huge = json.dumps({"id": "huge", "text": "很长的文件。" * 4000}, ensure_ascii=False)
    big.write_text("\n".join(lines[:200] + [huge] + lines[200:]) + "\n", encoding="utf-8")
    (only,) = list(reading.iter_documents(reading.plan_files([big])))
    assert isinstance(only[1], reading.ReadError) and "line 201" in str(only[1]) and "limit for one document" in str(only[1])
    kept = [d for _, part in reading.iter_documents(reading.plan_files([big]), skip_bad_lines=True) for d in part]
    assert len(kept) == 400 and "huge" not in {d.doc_id for d in kept}
    big.write_text("\n".join(lines + [lines[3]]) + "\n", encoding="utf-8")
    (only,) = list(reading.iter_documents(reading.plan_files([big])))
    assert "duplicate id 'n3'" in str(only[1])
