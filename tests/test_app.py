"""The search page, driven by Streamlit's AppTest on the real model and the real speech.

Each test points the page at its own copy of an index through $INDEXER_INDEX; the page loads the
model once for the whole session (st.cache_resource) and one engine per index folder.
"""
from __future__ import annotations

import csv
import io
import datetime
import json
import re
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, SPEECH
from indexer.engine import Engine
from indexer.errors import ReadError
from indexer.highlight import highlight_spans, to_html, worth_marking
from indexer.reading import Document

APP = ROOT / "search_app.py"
QUESTION = "私立学校怎样建立党组织？"
MINBAN = "市教育局党组继续贯彻"
MINBAN_SECTION = "四、加强民办学校党建工作"
PANDA_TEXT = ("成都大熊猫繁育研究基地\n"
              "基地的饲养员每天清晨给大熊猫准备新鲜的竹子、竹笋和苹果，成年大熊猫一天要吃二十多公斤竹子。"
              "到了下午，熊猫宝宝会在木架上玩耍，游客可以在玻璃窗外安静地观看。\n")
PANDA_QUESTION = "大熊猫每天吃什么？"


def text_of(markup: str) -> str:
    return re.sub(r"<[^>]+>", "", markup.replace("<br>", "\n"))


def passages(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith('<div class="passage">')]


def results_table(at: AppTest):
    return next(d.value for d in at.dataframe if "query" in d.value.columns)


def heads(at: AppTest) -> list[str]:
    return [text_of(m.value) for m in at.markdown if m.value.startswith('<div class="hit-head">')]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


WRITE_KEY = "write-key-of-the-page-tests"


def run_app(password: str | None = WRITE_KEY) -> AppTest:
    """The page, its sidebar's password given (the write key by default) before its first run."""
    at = AppTest.from_file(str(APP), default_timeout=180)
    if password:
        at.session_state["password"] = password
    at.run()
    no_exception(at)
    return at


def ask(at: AppTest, question: str) -> AppTest:
    at.text_input(key="query").input(question).run()
    no_exception(at)
    return at


@pytest.fixture
def app_index(speech_index, tmp_path, monkeypatch):
    """A private copy of the speech index, which the page opens."""
    path = tmp_path / "index"
    shutil.copytree(speech_index, path)
    monkeypatch.setenv("INDEXER_INDEX", str(path))
    return path


@pytest.fixture(scope="session")
def write_key_file(tmp_path_factory):
    """An access file with the write key of these tests."""
    from indexer.access import set_key

    path = tmp_path_factory.mktemp("page-access") / "access.json"
    set_key(path, "write", WRITE_KEY)
    return path


@pytest.fixture(autouse=True)
def operator(write_key_file, monkeypatch):
    """The page as its operator sees it: the write key set, and given as the password by run_app
    (tests/test_access.py covers the login link, pages without a password, and readers in Chromium)."""
    monkeypatch.setenv("INDEXER_ACCESS", str(write_key_file))


# ---------------------------------------------------------------------------- searching


def test_english_question_shows_translated_terms_and_the_answering_sentence(app_index):
    at = run_app()
    ask(at, "How do private schools set up Party organisations?")
    chips = [m.value for m in at.markdown if m.value.startswith('<div class="terms">')]
    assert len(chips) == 1 and "Party organisations → <b>党组织</b>" in chips[0]
    shown = passages(at)
    assert shown and all(p.count('<span class="answer">') == 1 for p in shown)
    assert any("<mark>党组织</mark>" in p for p in shown)  # marked by its Chinese translations
    assert any("民办学校" in text_of(p) for p in shown[:3])


def test_chinese_question_marks_its_answering_sentence(app_index):
    at = run_app()
    ask(at, QUESTION)
    first = passages(at)[0]
    answer = re.search(r'<span class="answer">(.*?)</span>(?!</mark>)', first).group(1)
    assert "民办学校" in text_of(answer) and not [m for m in at.markdown if m.value.startswith('<div class="terms">')]


def test_question_shows_the_minban_passage_first(app_index):
    at = run_app()
    assert [m.label for m in at.sidebar.metric] == ["Documents 文档", "Chunks 段落"]
    assert at.sidebar.metric[0].value == "1" and int(at.sidebar.metric[1].value) > 10
    ask(at, QUESTION)
    first = passages(at)[0]
    assert text_of(first).startswith(MINBAN) and "民办学校" in text_of(first)
    assert "<mark>" in first and "<mark>党组织</mark>" in first
    head = heads(at)[0]
    assert head.startswith("#1") and "speech" in head and MINBAN_SECTION in head
    assert len(passages(at)) == 5 == len([e for e in at.expander if e.label.startswith("Context")])
    context = text_of(at.expander[0].markdown[0].value)
    assert MINBAN in context and len(context) > len(text_of(first))  # the paragraphs around it


def test_example_button_asks_its_question(app_index):
    at = run_app()
    at.button(key="example-2").click().run()  # How are young cadres trained?
    no_exception(at)
    assert at.text_input(key="query").value == "How are young cadres trained?"
    assert passages(at) and heads(at)[0].startswith("#1")


def test_results_count_min_score_and_document_filter(app_index, encoder):
    Engine(app_index, encoder=encoder).add_documents([Document("panda.txt", PANDA_TEXT, "熊猫基地")])
    at = run_app()
    at.slider(key="k").set_value(8).run()
    ask(at, QUESTION)
    assert len(passages(at)) == 8
    assert any(MINBAN_SECTION in h for h in heads(at)[:3])
    at.multiselect(key="docs").set_value(["panda.txt"]).run()
    no_exception(at)
    assert passages(at) and all("熊猫基地" in h for h in heads(at))
    at.multiselect(key="docs").set_value(["speech.txt"]).run()
    assert all("熊猫基地" not in h for h in heads(at)) and any(MINBAN_SECTION in h for h in heads(at)[:3])
    at.slider(key="min_score").set_value(0.99).run()
    no_exception(at)
    assert not passages(at) and any("minimum score" in i.value for i in at.info)


def test_the_document_list_follows_commits_made_elsewhere(app_index, encoder):
    """The page reads the document list once per commit, not on every view (a click on the
    200,000-document stub index took 13-16 s when it did): a document another writer commits
    shows at the next view, in the document filter and the Documents tab, and a removed one goes."""
    at = run_app()
    assert not any("panda.txt" in o for o in at.multiselect(key="docs").options)
    writer = Engine(app_index, encoder=encoder)
    writer.add_documents([Document("panda.txt", PANDA_TEXT, "熊猫基地")])
    at.run()
    no_exception(at)
    assert "熊猫基地 (panda.txt)" in at.multiselect(key="docs").options
    assert "panda.txt" in at.dataframe[0].value["id"].tolist()
    writer.remove(["panda.txt"])
    at.run()
    assert not any("panda.txt" in o for o in at.multiselect(key="docs").options)
    assert at.dataframe[0].value["id"].tolist() == ["speech.txt"]


def test_a_large_archive_is_found_by_typing_not_listed(app_index, encoder, monkeypatch):
    """Beyond INDEXER_PAGE_LIST documents (1,000 by default; 1 here) the document filter, the
    Documents tab and the remove list offer what a typed part of a title or file name finds, not
    every document: each list went to the browser whole on every click (200,000 on the 1M stub)."""
    monkeypatch.setenv("INDEXER_PAGE_LIST", "1")
    Engine(app_index, encoder=encoder).add_documents([Document("panda.txt", PANDA_TEXT, "熊猫基地")])
    at = run_app()
    assert at.multiselect(key="docs").options == [] and not at.dataframe
    assert any("0 of 2 documents shown" in c.value for c in at.caption)
    at.text_input(key="docs_find").input("熊猫").run()
    assert at.multiselect(key="docs").options == ["熊猫基地 (panda.txt)"]
    at.multiselect(key="docs").set_value(["panda.txt"]).run()
    ask(at, QUESTION)
    assert passages(at) and all("熊猫基地" in h for h in heads(at))
    at.text_input(key="docs_find").input("Speech").run()  # the chosen one stays beside what is found
    assert at.multiselect(key="docs").options == ["熊猫基地 (panda.txt)", "speech.txt"]
    assert at.multiselect(key="docs").value == ["panda.txt"]
    at.text_input(key="table_find").input("PANDA").run()
    no_exception(at)
    assert at.dataframe[0].value["id"].tolist() == ["panda.txt"]
    assert at.selectbox(key="remove_doc").options == ["panda.txt"]


def test_every_retrieval_mode(app_index):
    at = run_app()
    ask(at, QUESTION)
    for mode in at.selectbox(key="mode").options:
        at.selectbox(key="mode").set_value(mode).run()
        no_exception(at)
        assert len(passages(at)) == 5, mode
        assert any(MINBAN_SECTION in h for h in heads(at)[:3 if mode != "bm25" else 5]), mode  # 私立 is not in the text


def test_empty_question_gives_a_message_not_a_traceback(app_index):
    at = run_app()
    assert any("Type a question" in i.value for i in at.info)
    ask(at, "   ")
    assert not passages(at)
    assert [w.value for w in at.warning] == ["the question is empty"]


# ---------------------------------------------------------------------------- changing the index


def test_pasted_text_is_searchable_at_once(app_index):
    at = run_app()
    at.text_input(key="paste_title").input("熊猫基地")
    at.text_area(key="paste_text").input(PANDA_TEXT)
    at.button(key="add_paste").click().run()
    no_exception(at)
    assert any("熊猫基地" in s.value and "added" in s.value for s in at.success)
    assert at.sidebar.metric[0].value == "2"
    assert at.text_input(key="paste_title").value == ""  # the form is cleared for the next one
    ask(at, PANDA_QUESTION)
    assert "熊猫基地" in heads(at)[0] and "竹子" in text_of(passages(at)[0])
    assert "熊猫基地" in at.multiselect(key="docs").options


def test_pasted_text_needs_a_title(app_index):
    at = run_app()
    at.text_area(key="paste_text").input(PANDA_TEXT)
    at.button(key="add_paste").click().run()
    no_exception(at)
    assert any("title" in e.value for e in at.error)


def test_upload_is_searchable_and_removable(app_index):
    at = run_app()
    at.file_uploader(key="doc_files_0").set_value(("panda.md", PANDA_TEXT.encode("gb18030"), "text/markdown"))
    at.run()
    at.button(key="add_files").click().run()
    no_exception(at)
    assert any("panda.md" in s.value for s in at.success), [s.value for s in at.success]
    ask(at, PANDA_QUESTION)
    assert "panda" in heads(at)[0] and "竹子" in text_of(passages(at)[0])
    at.selectbox(key="remove_doc").set_value("panda.md")
    at.button(key="remove").click().run()
    no_exception(at)
    assert any("Removed panda.md" in s.value for s in at.success)
    assert at.sidebar.metric[0].value == "1"
    assert all("panda" not in h for h in heads(at))


def test_bad_upload_gives_one_line(app_index):
    at = run_app()
    at.file_uploader(key="doc_files_0").set_value(("broken.pdf", b"this is not a pdf", "application/pdf"))
    at.run()
    at.button(key="add_files").click().run()
    no_exception(at)
    assert len(at.error) == 1 and at.error[0].value.startswith("broken.pdf")
    assert at.sidebar.metric[0].value == "1"


def test_uploads_and_pasted_text_are_read_through_the_engine(speech_engine):
    """The page's uploads go through Engine.add_uploads, read as the command line reads files;
    pasted text through Engine.add_text; a bad upload or paste is one line, and nothing is added."""
    import search_app

    before = {d.doc_id for d in speech_engine.documents()}
    for files, message in [([("x.exe", b"MZ")], "x.exe: not a supported file"),
                           ([("empty.txt", b"  \n")], "empty.txt: empty document"),
                           ([("a.txt", b"one"), ("b/a.txt", b"two")], "upload:a.txt: duplicate id 'a.txt'"),
                           ([], "no files uploaded")]:
        with pytest.raises(ReadError) as err:
            speech_engine.add_uploads(files)
        assert str(err.value).startswith(message) and "/tmp" not in str(err.value)
    for title, text, message in [("", "text", "give the pasted text a title"), ("t", " \n", "the pasted text is empty")]:
        with pytest.raises(ReadError, match=message):
            speech_engine.add_text(title, text)
    assert {d.doc_id for d in speech_engine.documents()} == before
    reports = speech_engine.add_uploads([
        ("dir/notice.txt", "关于开展校园足球联赛的通知\n各中小学要在十月组织校园足球联赛。".encode("gb18030")),
        ("more.jsonl", '{"id": "a", "text": "第一篇", "title": "甲"}\n{"id": "b", "text": "第二篇"}\n'.encode()),
    ], search_app.tags_from("2020，教育局 通知"))
    assert [(r.doc_id, r.status, r.encoding) for r in reports][0] == ("notice.txt", "added", "gb18030")
    docs = {d.doc_id: d for d in speech_engine.documents()}
    assert (docs["notice.txt"].title, docs["a"].title, docs["b"].title) == ("notice", "甲", "more")
    assert docs["notice.txt"].origin == "upload:notice.txt"
    assert all(docs[d].meta["tags"] == ["2020", "教育局", "通知"] for d in ("notice.txt", "a", "b"))
    assert speech_engine.search("足球联赛", k=1)[0].doc_id == "notice.txt"
    speech_engine.add_text("  My  notes ", "line one\r\nline two")
    assert speech_engine.document_text("My notes") == "line one\nline two"


def test_sidebar_filters_by_type_tag_and_date(app_index):
    """Uploads with tags, then the sidebar's type, tag and date filters narrow the results."""
    at = run_app()
    at.file_uploader(key="doc_files_0").set_value([
        ("minban.md", "# 民办学校\n民办学校要建立党组织，党组织书记由上级党组织选派。".encode(), "text/markdown"),
        ("notice.txt", "民办学校党组织建设通知：各校年内完成党组织组建。".encode(), "text/plain")])
    at.text_input(key="upload_tags").set_value("党建，2026")
    at.run()
    at.button(key="add_files").click().run()
    no_exception(at)
    at.text_input(key="query").set_value("民办学校怎样建立党组织？").run()
    assert any("speech" in h for h in heads(at))
    at.sidebar.multiselect(key="f_types").set_value(["md"]).run()
    assert heads(at) and all("minban" in h for h in heads(at))
    at.sidebar.multiselect(key="f_types").set_value([]).run()
    at.sidebar.multiselect(key="f_tags").set_value(["党建"]).run()
    assert heads(at) and all("minban" in h or "notice" in h for h in heads(at))
    at.sidebar.date_input(key="f_to").set_value(datetime.date(2001, 1, 1)).run()
    assert not heads(at) and any("No passage" in i.value for i in at.info)
    no_exception(at)


def test_missing_index_offers_to_build_it(tmp_path, monkeypatch):
    sample = tmp_path / "speech-part.txt"  # a part of the speech, so the build is quick
    lines = SPEECH.read_text(encoding="utf-8").split("\n")
    start = next(n for n, line in enumerate(lines) if line.startswith("三、"))
    sample.write_text("\n".join(lines[start:start + 12]), encoding="utf-8")
    monkeypatch.setenv("INDEXER_INDEX", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("INDEXER_SAMPLE", str(sample))
    at = run_app()
    assert any("no index" in w.value for w in at.warning)
    assert any("No index yet" in w.value for w in at.sidebar.warning)
    ask(at, QUESTION)  # asking before there is an index: a message, not a traceback
    assert not passages(at) and any("needs an index" in i.value for i in at.info)
    build = at.button(key="build")
    assert build.label.startswith("Build the index from")
    build.click().run()
    no_exception(at)
    assert any("Built the index" in s.value for s in at.success)
    assert at.sidebar.metric[0].value == "1" and (tmp_path / "nothing-here").is_dir()
    assert text_of(passages(at)[0]).startswith(MINBAN)  # the question typed before is answered now


def test_build_button_defaults_to_the_speech(tmp_path, monkeypatch):
    monkeypatch.setenv("INDEXER_INDEX", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("INDEXER_SAMPLE", raising=False)
    at = run_app()
    assert at.button(key="build").label == "Build the index from data/speech.txt"


def test_rebuild_keeps_the_documents(tmp_path, monkeypatch, encoder):
    path = tmp_path / "small"  # a small index: rebuilding re-embeds everything
    Engine(path, encoder=encoder).add_documents([Document("panda.txt", PANDA_TEXT, "熊猫基地")])
    monkeypatch.setenv("INDEXER_INDEX", str(path))
    at = run_app()
    at.button(key="rebuild").click().run()
    no_exception(at)
    assert any("Rebuilt the index: 1 documents" in s.value for s in at.success)
    assert Engine(path, encoder=encoder).store.generation == "gen-000002"
    ask(at, PANDA_QUESTION)
    assert "竹子" in text_of(passages(at)[0])


# ---------------------------------------------------------------------------- batch


def test_batch_of_pasted_questions_gives_a_table_and_downloads(app_index):
    at = run_app()
    at.text_area(key="batch_text").input(f"{QUESTION}\nHow are young cadres trained?\n").run()
    no_exception(at)
    table = results_table(at)
    assert list(table.columns[:4]) == ["id", "query", "rank", "score"] and len(table) == 10
    first = table.iloc[0]
    assert first["query"] == QUESTION and first["rank"] == 1 and first["passage"].startswith(MINBAN)
    assert [b.label for b in at.download_button] == ["Download CSV", "Download JSONL"]


def test_batch_upload_and_result_files(app_index):
    import search_app

    at = run_app()
    at.file_uploader(key="batch_file").set_value(("qs.csv", f"id,query\nq1,{QUESTION}\n".encode(), "text/csv"))
    at.run()
    no_exception(at)
    assert results_table(at).iloc[0]["id"] == "q1"
    at.file_uploader(key="batch_file").set_value(("qs.csv", b"id,question\n1,x\n", "text/csv"))
    at.run()
    no_exception(at)
    assert [w.value for w in at.warning] == ["qs.csv: a CSV questions file needs a 'query' column"]

    engine = search_app.get_engine(str(app_index))
    questions = search_app.questions_from_text(f"{QUESTION}\n\n  \nHow are young cadres trained?")
    results = engine.query([q.query for q in questions], 3)
    rows = list(csv.DictReader(io.StringIO(search_app.results_file(questions, results, ".csv").decode())))
    assert len(rows) == 6 and rows[0]["id"] == "1" and rows[0]["section"].startswith(MINBAN_SECTION)
    assert all(row["sentence"] and row["sentence"] in row["text"] for row in rows)
    lines = [json.loads(line) for line in search_app.results_file(questions, results, ".jsonl").decode().splitlines()]
    assert [line["id"] for line in lines] == ["1", "4"]
    assert not lines[0]["cross_lingual"] and lines[1]["cross_lingual"] and lines[1]["translations"]


# ---------------------------------------------------------------------------- access


WRITE_CONTROLS = ("add_files", "add_paste", "remove", "rebuild", "build")


def test_without_a_password_the_page_shows_no_write_control(app_index):
    at = run_app(password=None)
    ask(at, QUESTION)
    assert passages(at) and not [b for b in at.button if b.key in WRITE_CONTROLS]
    assert any("Read-only" in c.value for c in at.sidebar.caption)
    at.sidebar.text_input(key="password").input("not-the-write-key").run()
    assert any("Wrong password" in e.value for e in at.sidebar.error)
    assert not [b for b in at.button if b.key in WRITE_CONTROLS]


def test_a_readers_key_shows_its_documents_only(departments_index, tmp_path, monkeypatch):
    """A reader bound to 教育科's folder: the counts, the lists the filters offer, the Documents
    tab, the answers and their context hold nothing of 办公室's panda report, which answers the
    question best (tests/test_access.py: the same in Chromium)."""
    from conftest import INSIDE, OUTSIDE, PANDA_QUESTION, SCOPE
    from indexer.access import add_reader, set_key

    shutil.copytree(departments_index, tmp_path / "index")
    monkeypatch.setenv("INDEXER_INDEX", str(tmp_path / "index"))
    access = tmp_path / "access.json"
    set_key(access, "write", WRITE_KEY)
    monkeypatch.setenv("INDEXER_ACCESS", str(access))
    reader = add_reader(access, "教育科", SCOPE)
    at = run_app(password=None)
    assert any("needs a password" in i.value for i in at.info) and not at.sidebar.metric  # nothing shown yet
    at.sidebar.text_input(key="password").input(reader).run()
    no_exception(at)
    assert any("Reading as 教育科" in i.value for i in at.sidebar.info)
    assert at.sidebar.metric[0].value == "2"
    assert set(at.sidebar.multiselect(key="docs").options) == INSIDE
    table = next(d.value for d in at.dataframe if "id" in d.value.columns)
    assert set(table["id"]) == INSIDE
    ask(at, PANDA_QUESTION)
    shown = " ".join(text_of(p) for p in passages(at)) + " ".join(heads(at))
    assert "熊猫" not in shown and OUTSIDE not in shown and heads(at)
    assert not [b for b in at.button if b.key in WRITE_CONTROLS]
    at.sidebar.text_input(key="password").input(WRITE_KEY).run()  # the operator sees both departments
    assert at.sidebar.metric[0].value == "3"


# ---------------------------------------------------------------------------- pure parts


def test_index_path_from_argument_environment_or_default(monkeypatch):
    import search_app

    monkeypatch.setenv("INDEXER_INDEX", "/tmp/from-env")
    assert str(search_app.index_path(["--index", "/tmp/from-arg"])) == "/tmp/from-arg"
    assert str(search_app.index_path(["-q", "tests"])) == "/tmp/from-env"
    monkeypatch.delenv("INDEXER_INDEX")
    assert search_app.index_path([]) == str(ROOT / "indexes" / "default")
    assert search_app.index_path(["--index"]) == str(ROOT / "indexes" / "default")
    monkeypatch.setenv("INDEXER_INDEX", "milvus://127.0.0.1:19530/docs?token=TOPSECRET")  # an index is a folder
    at = run_app()
    assert len(at.error) == 1 and "--index DIR --vectors milvus://127.0.0.1:19530/docs" in at.error[0].value
    assert "TOPSECRET" not in at.error[0].value


def test_marked_terms_are_the_terms_the_index_searched_with(speech_engine):
    """The page marks the terms a question was searched with (Result.terms: the index's analyzer,
    Traditional folded to Simplified), found in the passage's text in the index's script: a
    Traditional question marks its words in Simplified text, and a Simplified question's words in a
    Traditional text, at the same offsets."""
    result = speech_engine.query(["私立學校怎樣建立黨組織？"], 1)[0]
    terms = worth_marking(result.terms)
    assert {"学校", "建立", "党组织"} <= set(terms) and "怎样" not in terms and all(len(t) > 1 for t in terms)
    text = "民辦學校要建立黨組織。"
    spans = highlight_spans(speech_engine.fold(text), worth_marking(speech_engine.query(["民办学校党组织"], 1)[0].terms))
    assert [text[s:e] for s, e in spans] == ["民辦學校", "黨組織"]
    assert worth_marking(["how", "cadres", "党", "怎样", "私立学校"]) == ["cadres", "私立学校"]


def test_highlight_spans_are_merged_and_case_insensitive():
    text = "健全民办学校党组织。Young cadres, young CADRE; decade"
    spans = highlight_spans(text, ["党组", "组织", "党组织", "学校", "cadre", "young", "cad"])
    assert [text[s:e] for s, e in spans] == ["学校党组织", "Young", "cadres", "young", "CADRE"]
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    assert highlight_spans(text, []) == [] and highlight_spans("", ["党组"]) == []


def test_to_html_escapes_marks_and_breaks_lines():
    text = "a<b>&\"党组织\"\n第二行"
    html = to_html(text, [(6, 9), (7, 9), (100, 120)])
    assert html == "a&lt;b&gt;&amp;&quot;<mark>党组织</mark>&quot;<br>第二行"
    assert to_html("x", []) == "x"

