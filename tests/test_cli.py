"""`python -m indexer` as a person runs it: help, search, batch, and one-line errors."""
from __future__ import annotations

import csv
import json
import sqlite3
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT, SPEECH, as_hits, assert_same_ranking

COMMANDS = ["build", "add", "remove", "list", "info", "check", "search", "batch"]


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "indexer", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def index(speech_index, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "index"
    shutil.copytree(speech_index, path)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    out = run(command, "--help")
    assert "Usage" in out.stdout and "--index" in out.stdout


def test_search_json_and_text(index):
    data = json.loads(run("search", "私立学校怎样建立党组织？", "--index", str(index), "-k", "3", "--json").stdout)
    assert [h["rank"] for h in data["hits"]] == [1, 2, 3]
    top = data["hits"][0]
    assert top["section"].startswith("四、") and SPEECH.read_text(encoding="utf-8")[top["start"]:top["end"]] == top["text"]
    text = run("search", "私立学校怎样建立党组织？", "--index", str(index), "-k", "2").stdout
    assert text.startswith(" 1. ") and "四、加强民办学校党建工作" in text


def test_english_question_json_gives_terms_and_sentence_offsets(index):
    speech = SPEECH.read_text(encoding="utf-8")
    data = json.loads(run("search", "How do private schools set up Party organisations?", "--index", str(index),
                          "-k", "3", "--json").stdout)
    assert data["cross_lingual"] and "党组织" in data["terms"]
    assert {"english", "terms"} <= set(data["translations"][0])
    for hit in data["hits"]:
        sent = hit["sentence"]
        assert speech[sent["start"]:sent["end"]] == sent["text"] and hit["start"] <= sent["start"] < sent["end"] <= hit["end"]
    text = run("search", "How do private schools set up Party organisations?", "--index", str(index), "-k", "1").stdout
    assert text.startswith("translated: ") and "党组织" in text.splitlines()[0] and "\n    » " in text
    off = json.loads(run("search", "How do private schools set up Party organisations?", "--index", str(index),
                         "--no-translate", "--no-use", "--json").stdout)
    assert off["translations"] == [] and "党组织" not in off["terms"]


def test_build_options_user_terms_and_no_crosslingual(index, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("两个维护\n", encoding="utf-8")
    out = tmp_path / "ix"
    run("build", str(SPEECH), "--index", str(out), "--no-crosslingual", "--user-term", "三重一大", "--user-dict", str(words))
    info = json.loads(run("info", "--index", str(out), "--json").stdout)
    assert info["crosslingual"] == "off"
    with sqlite3.connect(out / "records.db") as db:
        manifest = json.loads(db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()[0])
    assert manifest["keyword"]["user_terms"] == ["三重一大", "两个维护"]
    data = json.loads(run("search", "三重一大", "--index", str(out), "--mode", "bm25", "--json").stdout)
    assert "三重一大" in data["terms"] and "三重一大" in data["hits"][0]["text"]
    plain = json.loads(run("search", "三重一大", "--index", str(index), "--mode", "bm25", "--json").stdout)
    assert "三重一大" not in plain["terms"]  # without the user term jieba cuts it into 三重 + 一大
    bad = run("build", str(SPEECH), "--index", str(tmp_path / "z"), "--user-dict", str(tmp_path / "none.txt"), ok=False)
    assert bad.returncode == 1 and bad.stderr.strip().endswith("no such user dictionary file")


def test_batch_matches_search_in_every_format(index, tmp_path):
    questions = ["私立学校怎样建立党组织？", "How should schools fight corruption?", "三会一课"]
    (tmp_path / "q.txt").write_text("\n".join(questions) + "\n\n", encoding="utf-8")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps({"id": f"q{i}", "query": q}, ensure_ascii=False)
                                                for i, q in enumerate(questions)), encoding="utf-8")
    with open(tmp_path / "q.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("id", "query"), *[(f"c{i}", q) for i, q in enumerate(questions)]])
    single = [json.loads(run("search", q, "--index", str(index), "-k", "4", "--json").stdout)["hits"]
              for q in questions]
    for name in ("q.txt", "q.jsonl"):
        run("batch", str(tmp_path / name), "--index", str(index), "-k", "4", "-o", str(tmp_path / f"{name}.jsonl"))
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["query"] for r in rows] == questions
        for row, hits in zip(rows, single):
            assert_same_ranking(as_hits(row["hits"]), as_hits(hits), row["query"])
    assert [r["id"] for r in map(json.loads, (tmp_path / "q.jsonl.jsonl").read_text().splitlines())] == ["q0", "q1", "q2"]
    run("batch", str(tmp_path / "q.csv"), "--index", str(index), "-k", "4", "-o", str(tmp_path / "out.csv"))
    with open(tmp_path / "out.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and rows[0]["id"] == "c0"
    assert_same_ranking([SimpleNamespace(chunk_id=r["chunk_id"], score=float(r["score"])) for r in rows if r["id"] == "c1"],
                        as_hits(single[1]))


def test_list_info_check(index):
    assert run("list", "--index", str(index)).stdout.startswith("speech.txt\t")
    info = json.loads(run("info", "--index", str(index), "--json").stdout)
    assert info["model"] == "multilingual-e5-small" and info["dim"] == 384 and info["documents"] == 1
    assert "recall@10_vs_exact" not in info
    assert run("info", "--index", str(index), "--recall").stdout.split("\n")[-2].split() == ["recall@10_vs_exact", "None"]
    assert run("check", "--index", str(index)).stdout.startswith("ok: ")


@pytest.mark.parametrize("args, message", [
    (["search", "党建", "--index", "/nonexistent/ix"], "no index at /nonexistent/ix"),
    (["search", "   ", "--index", "{index}"], "the question is empty"),
    (["search", "党建", "-k", "0", "--index", "{index}"], "k must be at least 1"),
    (["build", "/nonexistent/file.txt", "--index", "{tmp}/x"], "/nonexistent/file.txt"),
    (["remove", "nope.txt", "--index", "{index}"], "no document 'nope.txt'"),
    (["batch", "/nonexistent/q.txt", "-o", "{tmp}/o.jsonl", "--index", "{index}"], "no such questions file"),
    (["build", str(SPEECH), "--index", "{tmp}/y", "--index-type", "weird"], "unknown index type"),
])
def test_errors_are_one_line(index, tmp_path, args, message):
    args = [a.format(index=index, tmp=tmp_path) for a in args]
    out = run(*args, ok=False)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (["search", "--nope", "党建"], "No such option: --nope"),
    (["sync", "--max-delete", "-3"], "Invalid value for '--max-delete'"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_usage_errors_name_the_mistake_and_the_help(args, message):
    """A mistyped command line: exit status 2, the mistake in one sentence and where help is, as
    command-line tools do (typer's own click raises them; `main` shows them, never as a traceback)."""
    out = run(*args, ok=False)
    assert out.returncode == 2 and message in out.stderr and "--help" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "unexpected" not in out.stderr
