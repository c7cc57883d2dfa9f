"""Every format an archive keeps, on real files made here: legacy .doc/.wps (LibreOffice's own
conversion), .xlsx/.xls/.csv tables, .pptx/.ppt slides, web pages with boilerplate, scanned PDFs and
images (OCR) — each read into the expected text, found by a question through the real engine, with
the metadata people filter on. Also: OCR accuracy goals, failures that stop nothing, uploads."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docx
import openpyxl
import pytest
from fpdf import FPDF
from pptx import Presentation
from pptx.util import Inches

from bench.ocr_bench import char_accuracy, notice_text, photographed, render_page
from indexer import formats
from indexer.chunking import ChunkSettings, chunk_document, estimate_tokens
from indexer.engine import Engine
from indexer.reading import ReadError, SourceFile, iter_documents, plan_files, read_file, read_paths, read_upload

NOTICE_TITLE = "校园安全通知"
NOTICE = [
    "关于加强中小学校园安全管理的通知",
    "各区县教育局、直属学校：为进一步加强中小学校园安全管理工作，切实保障师生生命财产安全，现将有关事项通知如下。",
    "一、落实安全工作主体责任。校长是学校安全工作第一责任人，要每月开展一次消防安全隐患排查。",
]
SCHOOLS = [("学校", "区县", "学生人数", "备注"), ("第一中学", "东城区", 1200, "省级示范高中"),
           ("实验小学", "西城区", 860, None), ("第三中学", "南山区", 1530, "寄宿制")]
BUDGET = [("二〇二四年经费预算",), ("项目", "金额（万元）"), ("校舍维修", 320), ("图书采购", 45.5)]
NAV = ["首页", "机构概况", "政务公开", "办事服务", "互动交流"]
PAGE_MAIN = ["市教育局发布二〇二四年暑期学生游泳安全提示，提醒家长切勿让孩子到江河水库私自游泳。",
             "各学校要在放假前召开一次防溺水专题家长会，并向每位家长发送安全告知书。"]
PAGE_FOOTER_ONLY = "备案号：京ICP备12345678号"


def soffice_convert(source: Path, target: str, profile: Path) -> Path:
    """LibreOffice's own conversion of a file (how a real legacy .doc/.xls/.ppt is made here)."""
    subprocess.run(["soffice", "--headless", f"-env:UserInstallation={profile.as_uri()}", "--convert-to", target,
                    "--outdir", str(source.parent), str(source)], check=True, capture_output=True, timeout=120)
    out = source.with_suffix("." + target)
    assert out.is_file()
    return out


def make_docx(path: Path) -> Path:
    document = docx.Document()
    document.core_properties.title = NOTICE_TITLE
    for line in NOTICE:
        document.add_paragraph(line)
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {(0, 0): "学校", (0, 1): "人数", (1, 0): "第一中学", (1, 1): "1200"}.items():
        table.cell(row, col).text = text
    document.add_paragraph("特此通知。")  # Word always ends a body with a paragraph, never a table
    document.save(path)
    return path


def make_xlsx(path: Path, extra_rows: list[tuple] = ()) -> Path:
    book = openpyxl.Workbook()
    book.active.title = "学校名单"
    for row in [*SCHOOLS, *extra_rows]:
        book.active.append(row)
    budget = book.create_sheet("经费")
    for row in BUDGET:
        budget.append(row)
    book.properties.title = "全市学校统计"
    book.save(path)
    return path


def make_pptx(path: Path) -> Path:
    deck = Presentation()
    deck.core_properties.title = "安全工作汇报"
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "校园安全工作回顾"
    first.placeholders[1].text_frame.text = "全年开展消防演练十二次，覆盖全体师生。"
    first.notes_slide.notes_text_frame.text = "演讲时强调演练的覆盖面。"
    second = deck.slides.add_slide(deck.slide_layouts[6])  # blank: no title placeholder
    box = second.shapes.add_textbox(Inches(1), Inches(1), Inches(6), Inches(2))
    box.text_frame.text = "下一步将在所有寄宿制学校安装智能烟感报警器。"
    deck.save(path)
    return path


def page_html(encoding: str = "utf-8") -> bytes:
    """A government-site page laid out with divs only: menu, breadcrumb, sidebar, article, footer."""
    nav = "".join(f"<li><a href='/{i}'>{item}</a></li>" for i, item in enumerate(NAV))
    body = "".join(f"<p>{line}</p>" for line in PAGE_MAIN)
    html = (f"<html><head><meta charset='{encoding}'><title>暑期学生游泳安全提示</title></head><body>"
            f"<div class='top'><div class='menu'><ul>{nav}</ul></div></div>"
            f"<div class='main'><div class='left'><ul><li><a href='/a'>相关链接</a></li><li><a href='/b'>省教育厅</a></li></ul></div>"
            f"<div class='content'><h1>暑期学生游泳安全提示</h1>{body}</div></div>"
            f"<div class='bottom'><p>主办单位：某市教育局 {PAGE_FOOTER_ONLY}</p></div></body></html>")
    return html.encode(encoding)


def make_mixed_pdf(path: Path) -> Path:
    """Page 1 has a text layer; page 2 is a scanned image of the notice, with no text layer."""
    pdf = FPDF()
    pdf.set_auto_page_break(False)
    pdf.set_title("招生入学工作通知")
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Cover page: admissions notice, with a text layer.")
    pdf.add_page()
    pdf.image(render_page(), x=0, y=0, w=210, h=297)
    pdf.set_y(-20)
    pdf.cell(text="- 2 -")  # a typed page number: a text layer, but not the page's text
    pdf.output(str(path))
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A folder holding one file of each kind (legacy ones made by LibreOffice's own conversion)."""
    root = tmp_path_factory.mktemp("archive")
    profile = tmp_path_factory.mktemp("lo-profile")
    (root / "notices").mkdir()
    source = make_docx(root / "notices" / "notice.docx")
    doc = soffice_convert(source, "doc", profile)
    for other in ("rtf", "odt"):
        soffice_convert(source, other, profile)
    source.unlink()
    shutil.copy(doc, root / "notices" / "wps-notice.wps")  # a Word-binary file under WPS's suffix
    xls_source = make_xlsx(root / "legacy-schools.xlsx")
    shutil.copy(soffice_convert(xls_source, "xls", profile), root / "et-schools.et")  # Excel binary as WPS saves it
    xls_source.unlink()
    make_xlsx(root / "schools.xlsx")
    ppt_source = make_pptx(root / "legacy-report.pptx")
    shutil.copy(soffice_convert(ppt_source, "ppt", profile), root / "dps-report.dps")  # PowerPoint binary, WPS suffix
    ppt_source.unlink()
    make_pptx(root / "report.pptx")
    (root / "swim.html").write_bytes(page_html())
    (root / "schools.csv").write_text("\n".join(",".join(str(c or "") for c in row) for row in SCHOOLS), "gb18030")
    (root / "scans").mkdir()
    make_mixed_pdf(root / "scans" / "admissions.pdf")
    letter = render_page(("游泳安全告知书", "请家长签字后交回班主任。"))
    letter.crop((0, 0, letter.width, letter.height // 4)).save(root / "scans" / "letter.png")  # a snippet
    return root


@pytest.fixture(scope="module")
def documents(archive) -> dict[str, object]:
    """Every document of the archive by id (read once: OCR takes seconds a page)."""
    return {doc.doc_id: doc for doc in read_paths([archive])}


# ---------------------------------------------------------------------------- each format


def test_legacy_doc_wps_rtf_odt_keep_chinese_text_table_rows_and_title(documents):
    for doc_id in ("notices/notice.doc", "notices/wps-notice.wps", "notices/notice.rtf", "notices/notice.odt"):
        doc = documents[doc_id]
        for line in NOTICE:
            assert line in doc.text
        assert "学校\t人数\n第一中学\t1200" in doc.text
        assert doc.title == NOTICE_TITLE, doc_id
        assert doc.meta["reader"].startswith("libreoffice 7.") and doc.meta["reader"].endswith("+ python-docx")


def test_spreadsheet_rows_keep_their_headers_and_sheets_are_sections(documents):
    doc = documents["schools.xlsx"]
    assert "# 学校名单" in doc.text and "# 经费" in doc.text
    assert "学校：第一中学，区县：东城区，学生人数：1200，备注：省级示范高中" in doc.text.split("\n")
    assert "学校：实验小学，区县：西城区，学生人数：860" in doc.text.split("\n")
    assert "项目：图书采购，金额（万元）：45.5" in doc.text.split("\n")
    assert "二〇二四年经费预算" in doc.text.split("\n")  # a title row above the headers stays a line
    assert doc.title == "全市学校统计" and doc.meta["reader"] == "openpyxl"
    for legacy in (documents["legacy-schools.xls"], documents["et-schools.et"]):
        assert "学校：第三中学，区县：南山区，学生人数：1530，备注：寄宿制" in legacy.text.split("\n")
        assert legacy.meta["reader"].endswith("+ openpyxl")
    csv_doc = documents["schools.csv"]
    assert "学校：第三中学，区县：南山区，学生人数：1530，备注：寄宿制" in csv_doc.text.split("\n")
    assert csv_doc.meta["reader"] == "csv" and "# " not in csv_doc.text


def test_chunks_never_split_a_row(tmp_path):
    short = [(f"第{i}小学", "北区", 300 + i, None) for i in range(60)]
    long_note = "该校承担全市科学教育实验任务，" * 28  # about 440 tokens: a long row that still fits a passage
    huge_note = "该校历史沿革及办学特色详见附件材料，" * 40  # over one passage: may only be cut by itself
    # two short rows (under a block) wait for the long one: together they are over a passage
    rows = short[:2] + [("科技中学", "东区", 2100, long_note)] + short[2:] + [("老城中学", "西区", 900, huge_note)]
    [doc] = read_file(make_xlsx(tmp_path / "many.xlsx", rows))
    settings = ChunkSettings()
    chunks = chunk_document(doc, settings)
    row_lines = [line for line in doc.text.split("\n") if line.startswith("学校：") or line.startswith("项目：")]
    assert len(row_lines) == len(SCHOOLS) - 1 + len(rows) + len(BUDGET) - 2
    offset = 0
    for line in row_lines:
        start = doc.text.index(line, offset)
        end = offset = start + len(line)
        holding = [c for c in chunks if c.start < end and start < c.end]
        if estimate_tokens(line) <= settings.max_tokens:
            # whole in every chunk that has any of it (the overlap may repeat a whole row)
            assert holding and all(c.start <= start and end <= c.end for c in holding), line[:30]
        else:  # a row over the passage size must be cut: its pieces still cover all of it
            assert min(c.start for c in holding) <= start and end <= max(c.end for c in holding)
            assert len(holding) > 1, line[:30]


def test_slides_are_sections_with_their_notes(documents):
    doc = documents["report.pptx"]
    lines = doc.text.split("\n")
    first, second = lines.index("# 校园安全工作回顾"), lines.index("# 第2页")
    assert first < lines.index("全年开展消防演练十二次，覆盖全体师生。") < lines.index("备注：演讲时强调演练的覆盖面。") < second
    assert lines[second + 1] == "下一步将在所有寄宿制学校安装智能烟感报警器。"
    assert doc.title == "安全工作汇报" and doc.meta["reader"] == "python-pptx"
    for legacy in (documents["legacy-report.ppt"], documents["dps-report.dps"]):
        assert "# 校园安全工作回顾" in legacy.text and "备注：演讲时强调演练的覆盖面。" in legacy.text
        assert legacy.meta["reader"].endswith("+ python-pptx")


def test_web_page_keeps_the_main_text_not_the_navigation(documents, tmp_path):
    doc = documents["swim.html"]
    for line in PAGE_MAIN:
        assert line in doc.text
    for item in [*NAV[1:], "相关链接", "省教育厅"]:
        assert item not in doc.text
    assert doc.title == "暑期学生游泳安全提示" and doc.meta["reader"].startswith("trafilatura")
    gbk = tmp_path / "gbk.htm"
    gbk.write_bytes(page_html("gbk"))
    [from_gbk] = read_file(gbk)
    assert PAGE_MAIN[0] in from_gbk.text and from_gbk.title == "暑期学生游泳安全提示"


def test_scanned_pdf_page_is_recognised_and_a_text_page_keeps_its_layer(documents):
    doc = documents["scans/admissions.pdf"]
    cover, scanned = doc.text.split("\n", 1)
    assert cover == "Cover page: admissions notice, with a text layer."
    assert char_accuracy(notice_text() + "\n- 2 -", scanned) >= 0.98
    assert doc.meta["reader"] == "pypdf + rapidocr (1 of 2 pages)"
    assert doc.title == "招生入学工作通知"


def test_image_is_recognised(documents):
    doc = documents["scans/letter.png"]
    assert char_accuracy("游泳安全告知书\n请家长签字后交回班主任。", doc.text) >= 0.98
    assert doc.meta["reader"] == "rapidocr" and doc.title == "letter"


def test_ocr_accuracy_on_a_photographed_page(tmp_path):
    path = tmp_path / "photo.jpg"
    photographed(render_page()).save(path, quality=95)  # already JPEG q70 inside: no second loss
    [doc] = read_file(path)
    assert char_accuracy(notice_text(), doc.text) >= 0.95


# ---------------------------------------------------------------------------- through the engine


def test_questions_find_every_format(archive, encoder, tmp_path):
    engine = Engine(tmp_path / "ix", encoder=encoder)
    engine.build([archive])
    questions = {
        "校长是学校安全第一责任人吗": {f"notices/{name}" for name in ("notice.doc", "wps-notice.wps", "notice.rtf",
                                                                  "notice.odt")},
        "第三中学有多少学生": {"schools.xlsx", "legacy-schools.xls", "et-schools.et", "schools.csv"},
        "全年开展了几次消防演练": {"report.pptx", "legacy-report.ppt", "dps-report.dps"},
        "暑假游泳安全要注意什么": {"swim.html"},
        "义务教育招生报名时间是什么时候": {"scans/admissions.pdf"},
        "告知书要交给谁": {"scans/letter.png"},
    }
    for question, expected in questions.items():
        hits = engine.search(question, k=3)
        assert hits and hits[0].doc_id in {f"{archive.name}/{d}" for d in expected}, (question, [h.doc_id for h in hits])


# ---------------------------------------------------------------------------- metadata


def test_every_document_carries_its_file_metadata(archive, documents):
    for doc_id, doc in documents.items():
        path = archive / doc_id
        modified = dt.datetime.fromtimestamp(int(path.stat().st_mtime), dt.timezone.utc)
        assert doc.meta["type"] == path.suffix.lstrip(".")
        assert doc.meta["size"] == path.stat().st_size
        assert doc.meta["modified"] == modified.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert doc.meta["folder"] == (Path(doc_id).parent.as_posix() if "/" in doc_id else "")
        assert doc.meta["reader"]


def test_folder_is_relative_to_the_folder_given(tmp_path):
    (tmp_path / "2020" / "党建").mkdir(parents=True)
    (tmp_path / "2020" / "党建" / "a.txt").write_text("甲", "utf-8")
    [file] = plan_files([tmp_path])
    assert file.doc_id == "a.txt" and file.folder == "2020/党建" and file.size == 3
    [doc] = read_paths([tmp_path])
    assert doc.meta["folder"] == "2020/党建"


def test_jsonl_fields_win_over_file_metadata(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "正文", "type": "通知", "folder": "办公室"}\n', "utf-8")
    [doc] = read_file(path)
    assert doc.meta["type"] == "通知" and doc.meta["folder"] == "办公室" and doc.meta["size"] == path.stat().st_size


# ---------------------------------------------------------------------------- failures and switches


def test_broken_files_are_reported_and_the_others_are_read(archive, tmp_path):
    (tmp_path / "good.txt").write_text("好的文件", "utf-8")
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    make_xlsx(tmp_path / "sheet.xlsx")
    (tmp_path / "z.xlsx").write_bytes(b"PK\x03\x04 damaged")
    (tmp_path / "zz.doc").write_bytes((archive / "notices" / "notice.doc").read_bytes()[:6000])  # truncated
    results = list(iter_documents(plan_files([tmp_path])))
    assert [file.doc_id for file, _ in results] == ["broken.docx", "good.txt", "sheet.xlsx", "z.xlsx", "zz.doc"]
    errors = {file.doc_id: str(got) for file, got in results if isinstance(got, ReadError)}
    assert set(errors) == {"broken.docx", "z.xlsx", "zz.doc"}
    assert all(message.count("\n") == 0 and doc_id in message for doc_id, message in errors.items())
    good = {file.doc_id: got for file, got in results if not isinstance(got, ReadError)}
    assert good["good.txt"][0].text == "好的文件" and "学校：第一中学" in good["sheet.xlsx"][0].text


def test_libreoffice_files_are_converted_in_one_call(archive, tmp_path, monkeypatch):
    calls = []
    original = formats._run_soffice
    monkeypatch.setattr(formats, "_run_soffice", lambda command, timeout: calls.append(command) or original(command, timeout))
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(4):
        shutil.copy(archive / "notices" / "notice.doc", folder / f"n{n}.doc")
    (folder / "n9.doc").write_bytes(b"\xd0\xcf\x11\xe0" * 10_000)
    monkeypatch.setenv("INDEXER_MAX_DOC_MB", "0.03")  # 30 kB: n9.doc (40 kB) is over, the real ones are not
    results = list(iter_documents(plan_files([folder])))
    assert [type(got) for _, got in results] == [list] * 4 + [ReadError]
    assert all(NOTICE[1] in docs[0].text for _, docs in results[:4]) and "over the" in str(results[4][1])
    assert sum("--convert-to" in command for command in calls) == 1


def test_missing_libreoffice_is_one_line_saying_what_to_install(archive, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    [(_, error)] = list(iter_documents([SourceFile(archive / "notices" / "notice.doc", "notice.doc", 1)]))
    assert isinstance(error, ReadError)
    assert "notice.doc: needs LibreOffice" in str(error) and "apt-get install libreoffice-writer-nogui" in str(error)


def test_ocr_can_be_turned_off(archive, monkeypatch):
    with pytest.raises(ReadError, match=r"letter\.png: an image is read by OCR, which is off"):
        read_file(archive / "scans" / "letter.png", ocr=False)
    monkeypatch.setenv("INDEXER_OCR", "0")
    with pytest.raises(ReadError, match=r"letter\.png: an image is read by OCR, which is off"):
        read_file(archive / "scans" / "letter.png")
    [doc] = read_file(archive / "scans" / "admissions.pdf")
    assert doc.text == "Cover page: admissions notice, with a text layer.\n- 2 -" and doc.meta["reader"] == "pypdf"


# ---------------------------------------------------------------------------- uploads


def test_upload_is_read_by_its_base_name(archive):
    docs = read_upload("C:\\Users\\王\\report.pptx", (archive / "report.pptx").read_bytes())
    assert [d.doc_id for d in docs] == ["report.pptx"] and docs[0].origin == "upload:report.pptx"
    assert "# 校园安全工作回顾" in docs[0].text
    [from_doc] = read_upload("../../notice.doc", (archive / "notices" / "notice.doc").read_bytes())
    assert from_doc.doc_id == "notice.doc" and NOTICE[1] in from_doc.text


def test_uploads_read_from_several_threads_at_once(archive):
    """The page and the API read uploads on many threads; LibreOffice runs must not collide."""
    data = (archive / "notices" / "notice.doc").read_bytes()
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda n: read_upload(f"n{n}.doc", data)[0].text, range(3)))
    assert all(NOTICE[1] in text for text in texts)


@pytest.mark.parametrize(("name", "message"), [
    ("", "not a usable file name"), (".hidden.txt", "not a usable file name"), ("../", "not a usable file name"),
    ("tool.exe", r"tool\.exe: not a supported file type"),
])
def test_upload_names_that_are_refused(name, message):
    with pytest.raises(ReadError, match=message):
        read_upload(name, b"data")


def test_upload_errors_name_the_upload_not_a_temporary_path():
    with pytest.raises(ReadError) as caught:
        read_upload("broken.xlsx", b"PK\x03\x04 damaged")
    assert str(caught.value) == "broken.xlsx: not a valid .xlsx file (BadZipFile)"


def test_each_passage_knows_its_page_slide_sheet_and_row(documents, archive, tmp_path, encoder):
    """Every chunk keeps where it starts in the original: a PDF's page (1-based) and whether OCR
    read it, a deck's slide, a workbook's sheet and row (as the sheet numbers them), a CSV's row;
    the command line's --json and batch files carry it."""
    import csv
    import json

    def places(doc_id: str) -> list[tuple[dict, str]]:
        return [(c.place, c.text) for c in chunk_document(documents[doc_id], ChunkSettings(), estimate_tokens)]

    pdf = places("scans/admissions.pdf")
    assert pdf[0][0] == {"page": 1, "ocr": False} and "Cover page" in pdf[0][1]
    assert len(pdf) > 1 and all(place == {"page": 2, "ocr": True} for place, _ in pdf[1:])  # the scanned page
    assert any("招生" in text for _, text in pdf[1:])
    slides = places("report.pptx")
    assert [p for p, t in slides if "消防演练" in t] == [{"slide": 1}]
    assert [p for p, t in slides if "烟感报警器" in t] == [{"slide": 2}]
    sheets = places("schools.xlsx")  # each chunk's first row, past the sheet's heading
    assert [p for p, t in sheets if "第一中学" in t] == [{"sheet": "学校名单", "row": 2}]
    assert [p for p, t in sheets if "实验小学" in t] == [{"sheet": "学校名单", "row": 3}]
    assert [p for p, t in sheets if "图书采购" in t] == [{"sheet": "经费", "row": 1}]  # from its title row
    csv_rows = [(p, t) for p, t in places("schools.csv") if "row" in p]
    assert csv_rows and all(t.startswith(f"学校：{SCHOOLS[p['row'] - 1][0]}") for p, t in csv_rows)
    assert places("swim.html")[0][0] == {}  # a web page has no pages

    engine = Engine(tmp_path / "index", encoder=encoder)
    engine.build([archive / "scans" / "admissions.pdf", archive / "report.pptx"])
    hit = engine.search("报名时间是什么时候", k=1)[0]
    assert hit.to_json()["page"] == 2 and hit.to_json()["ocr"] is True and hit.where == "page 2 (OCR)"
    run = subprocess.run([".venv/bin/python", "-m", "indexer", "search", "烟感报警器", "--index", str(tmp_path / "index"),
                          "-k", "1", "--json"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    assert json.loads(run.stdout)["hits"][0]["slide"] == 2
    questions = tmp_path / "q.txt"
    questions.write_text("报名时间是什么时候\n", encoding="utf-8")
    subprocess.run([".venv/bin/python", "-m", "indexer", "batch", str(questions), "-o", str(tmp_path / "r.csv"),
                    "--index", str(tmp_path / "index"), "-k", "1"], check=True, capture_output=True,
                   cwd=Path(__file__).parent.parent)
    with open(tmp_path / "r.csv", encoding="utf-8") as fh:
        assert next(csv.DictReader(fh))["place"] == "page 2 (OCR)"
