"""Filters on what documents carry (type, tag, folder, date, their own fields), tags given when
adding, and adding a folder that holds unreadable files or is interrupted half-way."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from indexer import indexing as engine_module
from indexer import filters
from indexer.errors import QueryError
from indexer.store.base import DocRecord

QUESTION = "民办学校怎样建立党组织？"
NOTICES = {  # folder/name → text: four small notices beside the speech, all about 民办学校 党组织
    "2019/notice-a.txt": "关于民办学校党组织建设的通知。各民办学校要在年内建立党组织。党组织书记由举办者推荐。",
    "2021/notice-b.md": "# 民办学校党建工作要点\n民办学校党组织要参与学校重大事项决策。\n每季度召开一次党组织会议。",
    "2021/reports/notice-c.txt": "民办学校党组织建设情况报告。全市民办学校党组织覆盖率达到百分之百。",
}
NOTICE_IDS = {f"archive/{name}" for name in NOTICES}  # the folder `archive` is a source: its name leads the ids
JSONL = [  # documents with their own fields (a department and a date)
    {"id": "policy-1", "title": "民办教育促进条例", "text": "民办学校应当建立党组织，开展党的活动。", "department": "教育局", "date": "2018-05-02"},
    {"id": "policy-2", "title": "党建考核办法", "text": "对民办学校党组织书记实行年度考核。", "department": "组织部", "date": "2022-11-30"},
]


def record(doc_id: str, **meta) -> DocRecord:
    return DocRecord(doc_id, "h", meta.pop("title", doc_id), "src", None, 1, "2026-01-01T00:00:00+00:00", 10, meta)


RECORDS = [
    record("a.pdf", type="pdf", size=1200, modified="2019-03-01T08:00:00+00:00", folder="2019", tags=["党建"]),
    record("b.docx", type="docx", size=800, modified="2021-07-15T08:00:00+00:00", folder="2021/reports", tags=["党建", "教育局"]),
    record("c.txt", type="txt", size=50, modified="2023-01-01T00:00:00+00:00", folder="", date="2020-06-01"),
]


@pytest.mark.parametrize("expr, expected", [
    ("type=pdf", {"a.pdf"}),
    ("type!=pdf", {"b.docx", "c.txt"}),
    ("type=pdf|docx", {"a.pdf", "b.docx"}),  # any of the values
    ("tag!=教育局|党建", {"c.txt"}),
    ("size>800", {"a.pdf"}),
    ("size>=800", {"a.pdf", "b.docx"}),
    ("size<800", {"c.txt"}),
    ("size<=800", {"b.docx", "c.txt"}),
    ("title~DOC", {"b.docx"}),
    ("tag=党建", {"a.pdf", "b.docx"}),
    ("tag!=教育局", {"a.pdf", "c.txt"}),
    ("folder=2021", {"b.docx"}),  # a folder and everything inside it
    ("folder=2021/rep", set()),  # not a prefix of a name: a folder
    ("year>=2020", {"b.docx", "c.txt"}),  # c.txt's own date wins over its modified time
    ("year=2019", {"a.pdf"}),
    ("date<2020-06-02", {"a.pdf", "c.txt"}),
    ("id=c.txt", {"c.txt"}),
])
def test_each_operator(expr, expected):
    assert filters.matching(RECORDS, filters.parse([expr])) == expected


def test_filters_all_hold_and_bad_ones_are_one_line():
    assert filters.matching(RECORDS, filters.parse(["year>=2019", "year<2021"])) == {"a.pdf", "c.txt"}
    assert filters.matching(RECORDS, filters.parse(["year>=2019", "year<2021", "tag=党建"])) == {"a.pdf"}
    for bad in ["type", "=pdf", "year>>2020", "type="]:
        with pytest.raises(QueryError, match="cannot read the filter"):
            filters.parse([bad])
    with pytest.raises(QueryError, match="no document has the field 'yeer'"):
        filters.matching(RECORDS, filters.parse(["yeer=2020"]))


@pytest.fixture
def archive(tmp_path):
    """A folder of notices (three formats, two years, a subfolder) and a JSONL file of policies."""
    root = tmp_path / "archive"
    for name, text in NOTICES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "policies.jsonl").write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in JSONL), encoding="utf-8")
    return root


@pytest.fixture
def engine(speech_engine, archive):
    speech_engine.add([archive], tags=["党建", "2021"])
    return speech_engine


def test_documents_carry_their_file_and_tags(engine):
    docs = {d.doc_id: d for d in engine.documents()}
    notice = docs["archive/2021/reports/notice-c.txt"]
    assert notice.meta["type"] == "txt" and notice.meta["folder"] == "2021/reports"
    assert notice.meta["size"] == len(NOTICES["2021/reports/notice-c.txt"].encode("utf-8"))
    assert notice.meta["tags"] == ["2021", "党建"] and notice.meta["modified"][:2] == "20"
    assert docs["policy-1"].meta["department"] == "教育局" and docs["policy-1"].title == "民办教育促进条例"
    assert "tags" not in docs["speech.txt"].meta


@pytest.mark.parametrize("where, expected", [
    (["type=md"], {"archive/2021/notice-b.md"}),
    (["folder=2021"], {"archive/2021/notice-b.md", "archive/2021/reports/notice-c.txt"}),
    (["tag=党建", "type=txt"], {"archive/2019/notice-a.txt", "archive/2021/reports/notice-c.txt"}),
    (["department=教育局"], {"policy-1"}),
    (["date>=2020"], {"policy-2", "speech.txt"} | NOTICE_IDS),  # a file's date is its modified time (now)
    (["year<2020"], {"policy-1"}),
])
def test_filtered_search_stays_inside_the_filter(engine, where, expected):
    found = {h.doc_id for h in engine.search(QUESTION, k=20, where=where)}
    assert found == expected


def test_filtered_search_returns_k_hits_when_k_exist(engine):
    """The filter is applied inside every route, not to the unfiltered top k: the notices outrank
    the speech on this question, yet a filter to the speech still fills k."""
    assert "speech.txt" not in {h.doc_id for h in engine.search(QUESTION, k=3, mode="dense")}
    for mode in ("dense", "bm25", "hybrid"):
        hits = engine.search(QUESTION, k=3, mode=mode, where=["tag!=党建"])
        assert len(hits) == 3 and {h.doc_id for h in hits} == {"speech.txt"}, mode
    english = engine.search("How do private schools set up Party organisations?", k=2, where=["department=组织部"])
    assert [h.doc_id for h in english] == ["policy-2"]
    assert engine.search(QUESTION, k=3, where=["type=pdf"]) == []


def test_tags_change_without_embedding_again(engine, archive):
    ours = NOTICE_IDS | {"policy-1", "policy-2"}
    assert {r.status for r in engine.add([archive], tags=["党建", "2021"])} == {"unchanged"}
    assert {h.doc_id for h in engine.search(QUESTION, k=20, where=["tag=2021"])} == ours
    reports = engine.add([archive], tags=["2019"])
    assert {r.status for r in reports} == {"replaced"}
    assert engine.reused == sum(r.chunks for r in reports)  # the tags changed, not the text: nothing embedded
    assert engine.search(QUESTION, k=20, where=["tag=2021"]) == []
    assert {h.doc_id for h in engine.search(QUESTION, k=20, where=["tag=2019"])} == ours


def test_a_bad_file_does_not_stop_the_folder(speech_engine, archive):
    (archive / "2021" / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (archive / "empty.txt").write_text("  \n", encoding="utf-8")
    reports = speech_engine.add([archive])
    failed = {r.doc_id: r.error for r in reports if r.status == "failed"}
    assert set(failed) == {"archive/2021/broken.docx", "archive/empty.txt"}
    assert all("\n" not in e and ("broken.docx" in e or "empty.txt" in e) for e in failed.values())
    added = {r.doc_id for r in reports if r.status == "added"}
    assert added == NOTICE_IDS | {"policy-1", "policy-2"} and added <= {d.doc_id for d in speech_engine.documents()}


def test_interrupted_add_keeps_what_was_committed_and_resumes(speech_engine, archive, monkeypatch):
    monkeypatch.setattr(engine_module, "COMMIT_CHARS", 40)  # commit after every file or two
    seen = []

    def interrupt(fraction: float) -> None:
        seen.append(fraction)
        if len({d.doc_id for d in speech_engine.documents()}) > 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        speech_engine.add([archive], progress=interrupt)
    kept = {d.doc_id for d in speech_engine.documents()} - {"speech.txt"}
    assert 0 < len(kept) < 5 and speech_engine.check() == []
    reports = speech_engine.add([archive])
    assert {r.doc_id for r in reports if r.status == "unchanged"} == kept
    assert {r.doc_id for r in reports if r.status == "added"} == (NOTICE_IDS | {"policy-1", "policy-2"}) - kept
    assert seen == sorted(seen) and 0 <= seen[0] and seen[-1] <= 1


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexer", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_command_line_filters_tags_and_failures(speech_index, archive, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(speech_index, index)
    (archive / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    out = run("add", str(archive), "--index", str(index), "--tag", "通知")
    assert out.returncode == 1 and out.stdout.count("added    ") == 5
    assert [line for line in out.stderr.splitlines() if line.startswith("failed")] == [
        line for line in out.stderr.splitlines() if "broken.pdf" in line]
    assert out.stderr.splitlines()[-1] == ("error: 1 file could not be read (listed above); "
                                           "the other documents are in the index")
    data = json.loads(run("search", QUESTION, "--index", str(index), "--where", "tag=通知", "--where", "type=md",
                          "--json").stdout)
    assert [h["doc_id"] for h in data["hits"]] == ["archive/2021/notice-b.md"] and data["generation"]
    bad = run("search", QUESTION, "--index", str(index), "--where", "year>>1")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "cannot read the filter" in bad.stderr
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in [
        {"id": "all", "query": QUESTION}, {"id": "md", "query": QUESTION, "where": ["type=md"]},
        {"id": "jl", "query": QUESTION, "where": "type=jsonl; department=组织部"}]), encoding="utf-8")
    out = run("batch", str(questions), "-o", str(tmp_path / "r.jsonl"), "--index", str(index), "-k", "3",
              "--where", "tag=通知")
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines())}
    assert len(rows["all"]["hits"]) == 3 and "speech.txt" not in {h["doc_id"] for h in rows["all"]["hits"]}
    assert {h["doc_id"] for h in rows["md"]["hits"]} == {"archive/2021/notice-b.md"}
    assert [h["doc_id"] for h in rows["jl"]["hits"]] == ["policy-2"]
