"""Sources: the folders an index follows by name (indexer/syncing.py). Three departments' folders
hold the same file names; every document is kept, `sync` mirrors deletes, renames and edits to
the ids and answers a fresh build gives, and it refuses a folder that is gone, empty or mostly
emptied. A sync killed with SIGKILL leaves a consistent index that the next sync completes."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from conftest import BATCHED, assert_same_ranking
from test_reliability import _kill_at, cli, one_line_error
from indexer.engine import Engine
from indexer.errors import Gone
from indexer.reading import read_paths
from indexer.store.base import DocRecord

FILES = {  # department folder → file name → text: the same names in every folder
    "部门甲": {"通知.txt": "关于开展校园安全大检查的通知\n各校要在本月底前完成消防设施和食堂卫生的全面检查，发现隐患立即整改。\n",
              "会议纪要.md": "# 校长办公会纪要\n会议决定为初一年级增开两个班，并新建一座学生图书馆。\n"},
    "部门乙": {"通知.txt": "关于举办教师书法比赛的通知\n比赛分硬笔和毛笔两组，报名截止到十月十日，获奖作品在校史馆展出。\n",
              "会议纪要.md": "# 工会委员会纪要\n工会决定组织全体教职工秋季健步走活动，路线经过滨江公园。\n"},
    "归档/部门甲": {"通知.txt": "关于调整冬季作息时间的通知\n自十一月一日起，上午第一节课推迟到八点半开始，午休延长二十分钟。\n",
                  "会议纪要.md": "# 家长委员会纪要\n家长代表建议学校食堂增加蔬菜品种，并每周公布菜谱。\n"},
}
QUESTIONS = {  # a question each document answers best
    "书法比赛什么时候截止报名": "部门乙/通知.txt",
    "冬季第一节课几点开始": "旧部门甲/通知.txt",
    "消防设施检查什么时候完成": "部门甲/通知.txt",
    "家长对食堂有什么建议": "旧部门甲/会议纪要.md",
    "健步走路线经过哪里": "部门乙/会议纪要.md",
}


@pytest.fixture
def archive(tmp_path) -> Path:
    root = tmp_path / "共享盘"
    for folder, files in FILES.items():
        for name, text in files.items():
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_text(text, encoding="utf-8")
    return root


def _followed(engine: Engine, archive: Path) -> None:
    """The three folders, each a source; the second 部门甲 under a name of its own."""
    engine.build([archive / "部门甲"])
    engine.add([archive / "部门乙"])
    engine.add([archive / "归档" / "部门甲"], source="旧部门甲")


def _state(engine: Engine) -> dict[str, tuple[str, str]]:
    """Every document: its id → (its text's hash, its source)."""
    return {d.doc_id: (d.content_hash, d.source) for d in engine.documents()}


def test_three_sources_holding_the_same_file_names_keep_every_document(archive, tmp_path, capsys):
    index = str(tmp_path / "index")
    code, out, err = cli(capsys, "build", archive / "部门甲", "--index", index)
    assert code == 0, err
    code, out, err = cli(capsys, "add", archive / "部门乙", "--index", index)
    assert code == 0 and "added     部门乙/通知.txt" in out, err
    generation = Engine(index).info()["generation"]
    code, _, err = cli(capsys, "add", archive / "归档" / "部门甲", "--index", index)  # a second folder named 部门甲
    one_line_error(code, err, "the index already has a source named '部门甲'")
    assert "--source NAME" in err and Engine(index).info()["generation"] == generation
    code, out, err = cli(capsys, "add", archive / "归档" / "部门甲", "--source", "旧部门甲", "--index", index)
    assert code == 0, err
    engine = Engine(index)
    assert set(_state(engine)) == {f"{s}/{n}" for s in ("部门甲", "部门乙", "旧部门甲") for n in ("通知.txt", "会议纪要.md")}
    for question, doc_id in QUESTIONS.items():
        assert engine.search(question, k=1)[0].doc_id == doc_id, question
    only = engine.search("通知", k=10, where=["source=部门乙"])
    assert only and {h.doc_id for h in only} <= {"部门乙/通知.txt", "部门乙/会议纪要.md"}
    code, out, _ = cli(capsys, "source", "list", "--index", index)
    assert [line.split("\t")[:3] for line in out.splitlines()] == [
        ["旧部门甲", str(archive / "归档" / "部门甲"), "2 documents"], ["部门乙", str(archive / "部门乙"), "2 documents"],
        ["部门甲", str(archive / "部门甲"), "2 documents"]]


def test_a_file_of_another_origin_never_replaces_a_document_silently(archive, tmp_path, capsys):
    """Files given alone keep their names as ids: a second 通知.txt from another folder is refused
    with one line naming both files; the same file again is unchanged."""
    index = str(tmp_path / "index")
    first, second = archive / "部门甲" / "通知.txt", archive / "部门乙" / "通知.txt"
    assert cli(capsys, "build", first, "--index", index)[0] == 0
    generation = Engine(index).info()["generation"]
    code, _, err = cli(capsys, "add", second, "--index", index)
    one_line_error(code, err, f"{second}: not added, as '通知.txt' is in the index already from {first}")
    engine = Engine(index)
    assert engine.info()["generation"] == generation and engine.document_text("通知.txt") == FILES["部门甲"]["通知.txt"]
    code, out, _ = cli(capsys, "add", first, "--index", index)
    assert code == 0 and out.startswith("unchanged 通知.txt")


def test_sync_after_deletes_renames_and_edits_equals_a_fresh_build(archive, encoder, tmp_path):
    engine = Engine(tmp_path / "index", encoder=encoder)
    _followed(engine, archive)
    first = archive / "部门甲"
    (first / "会议纪要.md").unlink()  # deleted
    (archive / "部门乙" / "会议纪要.md").rename(archive / "部门乙" / "工会纪要.md")  # renamed
    (first / "通知.txt").write_text(FILES["部门甲"]["通知.txt"].replace("本月底", "下周五"), encoding="utf-8")  # edited
    (first / "2024").mkdir()
    (first / "2024" / "通知.txt").write_text("关于寒假安全教育的通知\n寒假期间严禁学生到冰面上滑冰。\n", encoding="utf-8")  # new
    touched = archive / "归档" / "部门甲" / "通知.txt"
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))  # touched, bytes the same
    generation = engine.info()["generation"]
    assert engine.original("部门甲/通知.txt").path == first / "通知.txt"  # served from its folder
    with pytest.raises(Gone, match="no longer where it was read"):  # until a sync, a deleted file says so
        engine.original("部门甲/会议纪要.md")

    [(a, _), (b, _), (c, _)] = engine.sync(["部门甲", "部门乙", "旧部门甲"], dry_run=True)
    assert engine.info()["generation"] == generation  # a dry run changes nothing
    assert (a.new, a.changed, a.removed) == ([first / "2024" / "通知.txt"], [first / "通知.txt"], ["部门甲/会议纪要.md"])
    assert (b.new, b.removed) == ([archive / "部门乙" / "工会纪要.md"], ["部门乙/会议纪要.md"])
    assert (c.read, c.removed, [r.doc_id for r in c.touched], c.opened) == ([], [], ["旧部门甲/通知.txt"], 1)

    done = engine.sync()  # one of two documents removed from a source: not more than half, allowed
    statuses = {r.doc_id: r.status for _, reports in done for r in reports}
    assert statuses == {"部门甲/2024/通知.txt": "added", "部门甲/通知.txt": "replaced", "部门甲/会议纪要.md": "removed",
                        "部门乙/工会纪要.md": "added", "部门乙/会议纪要.md": "removed"}

    fresh = Engine(tmp_path / "fresh", encoder=encoder)
    _followed(fresh, archive)
    assert _state(engine) == _state(fresh)
    for question in [*QUESTIONS, "寒假能不能去冰面上滑冰", "工会组织什么活动"]:
        assert_same_ranking(engine.search(question, k=5), fresh.search(question, k=5), question, BATCHED)
    assert engine.check() == []

    again = engine.sync()  # nothing changed since: no file opened, nothing read
    assert [(p.opened, p.read, p.touched, p.removed) for p, _ in again] == [(0, [], [], [])] * 3
    assert all(s["synced"] for s in engine.sources())
    (archive / "部门乙" / "工会纪要.md").rename(archive / "部门乙" / "2023工会纪要.md")
    [(_, reports)] = engine.sync(["部门乙"])
    assert [(r.doc_id, r.status) for r in reports] == [("部门乙/2023工会纪要.md", "added"), ("部门乙/工会纪要.md", "removed")]
    assert engine.reused == reports[0].chunks  # a renamed file keeps its vectors: nothing embedded again


def test_a_missing_empty_or_mostly_emptied_folder_is_refused(archive, tmp_path, capsys):
    index = str(tmp_path / "index")
    (archive / "部门乙" / "第三份.txt").write_text("关于秋季运动会的通知\n运动会定于十月二十日举行。\n", encoding="utf-8")
    assert cli(capsys, "build", archive / "部门乙", "--index", index)[0] == 0
    generation = Engine(index).info()["generation"]
    shutil.move(archive / "部门乙", archive / "部门乙.off")  # the share is not mounted
    code, _, err = cli(capsys, "sync", "--index", index)
    one_line_error(code, err, f"source 部门乙: its folder {archive / '部门乙'} is not there (unmounted?); nothing was changed")
    (archive / "部门乙").mkdir()  # a mount point with nothing mounted on it
    code, _, err = cli(capsys, "sync", "--index", index)
    one_line_error(code, err, "holds no readable files (unmounted?); nothing was changed")
    (archive / "部门乙").rmdir()
    shutil.move(archive / "部门乙.off", archive / "部门乙")
    (archive / "部门乙" / "通知.txt").unlink()
    (archive / "部门乙" / "会议纪要.md").unlink()
    code, _, err = cli(capsys, "sync", "--index", index)  # two of three gone
    one_line_error(code, err, "the sync would remove 2 of its 3 documents (more than half)")
    assert "--max-delete 2" in err and Engine(index).info()["generation"] == generation
    assert len(Engine(index).documents()) == 3
    code, out, err = cli(capsys, "sync", "--max-delete", "2", "--index", index)
    assert code == 0 and "2 removed" in out, err
    assert [d.doc_id for d in Engine(index).documents()] == ["部门乙/第三份.txt"]
    code, _, err = cli(capsys, "sync", "nowhere", "--index", index)
    one_line_error(code, err, "no source 'nowhere'")


def test_patterns_choose_a_sources_files_for_good(archive, tmp_path, capsys):
    index = str(tmp_path / "index")
    (archive / "部门甲" / "草稿").mkdir()
    (archive / "部门甲" / "草稿" / "未定稿.txt").write_text("未定稿：尚未审核的内容。\n", encoding="utf-8")
    code, _, err = cli(capsys, "build", archive / "部门甲", "--exclude", "草稿/*", "--index", index)
    assert code == 0, err
    assert {d.doc_id for d in Engine(index).documents()} == {"部门甲/通知.txt", "部门甲/会议纪要.md"}
    (archive / "部门甲" / "草稿" / "另一稿.txt").write_text("另一份草稿。\n", encoding="utf-8")
    code, out, _ = cli(capsys, "sync", "--index", index)
    assert code == 0 and "0 new" in out
    code, out, _ = cli(capsys, "source", "remove", "部门甲", "--index", index)
    assert code == 0 and Engine(index).documents() == [] and archive.joinpath("部门甲", "通知.txt").is_file()


@pytest.mark.parametrize("point", ["encode", "before-commit", "after-commit"])
def test_sigkill_inside_a_sync_leaves_a_consistent_index_and_the_next_sync_converges(point, archive, encoder,
                                                                                     tmp_path, capsys):
    engine = Engine(tmp_path / "index", encoder=encoder)
    _followed(engine, archive)
    (archive / "部门甲" / "会议纪要.md").unlink()
    (archive / "部门乙" / "通知.txt").write_text("关于教师书法比赛延期的通知\n比赛延期到十一月举行。\n", encoding="utf-8")
    (archive / "部门乙" / "新通知.txt").write_text("关于开展读书月活动的通知\n每位学生本月至少读完一本书。\n", encoding="utf-8")
    _kill_at(point, ["sync", "--max-delete", "1", "--index", str(engine.path)])
    code, out, err = cli(capsys, "check", "--index", engine.path)
    assert code == 0 and out.startswith("ok:"), err
    code, _, err = cli(capsys, "sync", "--max-delete", "1", "--index", engine.path)
    assert code == 0, err
    fresh = Engine(tmp_path / "fresh", encoder=encoder)
    _followed(fresh, archive)
    assert _state(Engine(engine.path, encoder=encoder)) == _state(fresh)


def test_upgrade_makes_sources_of_an_index_of_before_and_sync_keeps_its_ids(archive, encoder, tmp_path, capsys):
    """An index of before sources named a folder's files by their path under it, and kept the
    file's path as the record's `source`: `upgrade` makes the folder a source, prints each id's
    change, and a sync then finds nothing to do, with the ids a fresh build gives."""
    old = DocRecord.from_json({"doc_id": "a.txt", "content_hash": "h", "title": "a", "source": "/srv/a.txt",
                               "encoding": "utf-8", "chunks": 1, "added": "2024-01-01T00:00:00+00:00"})
    assert (old.origin, old.source) == ("/srv/a.txt", "")
    folder = archive / "部门乙"
    engine = Engine(tmp_path / "index", encoder=encoder)
    engine.add_documents(read_paths([folder]))  # ids and records as before sources: 通知.txt, 会议纪要.md
    assert {d.doc_id for d in engine.documents()} == {"通知.txt", "会议纪要.md"}
    before = engine.search("书法比赛什么时候截止报名", k=2)
    code, out, err = cli(capsys, "upgrade", "--index", engine.path)
    assert code == 0, err
    assert "部门乙: the folder" in out and "  通知.txt → 部门乙/通知.txt" in out and "  会议纪要.md → 部门乙/会议纪要.md" in out
    upgraded = Engine(engine.path, encoder=encoder)
    assert upgraded.check() == [] and [s["name"] for s in upgraded.sources()] == ["部门乙"]
    assert [h.doc_id for h in upgraded.search("书法比赛什么时候截止报名", k=2)] == [f"部门乙/{h.doc_id}" for h in before]
    [(plan, reports)] = upgraded.sync()
    assert (plan.read, plan.removed, plan.opened, reports) == ([], [], 0, [])
    fresh = Engine(tmp_path / "fresh", encoder=encoder)
    fresh.build([folder])
    assert _state(upgraded) == _state(fresh)
    code, _, err = cli(capsys, "upgrade", "--index", engine.path)
    one_line_error(code, err, "nothing to upgrade")


def _until(condition, what: str, timeout: float = 90.0) -> None:
    """Wait for a condition the watcher brings about (a sync takes seconds: reading, encoding)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("poll", [False, True], ids=["events", "polling"])
def test_watch_follows_new_changed_and_deleted_files_and_outlives_a_refusal(poll, archive, encoder, tmp_path):
    """A real watchdog observer (inotify here; the PollingObserver that network shares need) over
    a source: a new file becomes a document, an edited one is read again, a deleted one leaves; a
    folder emptied (an unmounted share looks the same) is refused and the watch goes on."""
    from indexer.watching import Watcher

    engine = Engine(tmp_path / "index", encoder=encoder)
    engine.build([archive / "部门乙"])
    folder, lines = archive / "部门乙", []
    watcher = Watcher(engine, poll=poll, interval=0.5, debounce=0.3, log=lines.append)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        _until(lambda: any(line.startswith("watching 部门乙") for line in lines), "the watch to start")
        assert ("by polling" in lines[0]) == poll, lines
        (folder / "读书月.txt").write_text("关于开展读书月活动的通知\n每位学生本月至少读完一本书。\n", encoding="utf-8")
        _until(lambda: "部门乙/读书月.txt" in engine.visible(), "the new file")
        assert engine.search("读书月每位学生要读几本书", k=1)[0].doc_id == "部门乙/读书月.txt"
        before = engine.visible()["部门乙/通知.txt"].content_hash
        (folder / "通知.txt").write_text("关于教师书法比赛延期的通知\n比赛延期到十一月举行。\n", encoding="utf-8")
        (folder / "会议纪要.md").unlink()
        _until(lambda: "部门乙/会议纪要.md" not in engine.visible() and
               engine.visible()["部门乙/通知.txt"].content_hash != before, "the edit and the deletion")
        assert sorted(engine.visible()) == ["部门乙/读书月.txt", "部门乙/通知.txt"]
        for path in list(folder.iterdir()):
            path.unlink()
        _until(lambda: any("not synced" in line for line in lines), "the refusal")
        assert sorted(engine.visible()) == ["部门乙/读书月.txt", "部门乙/通知.txt"]  # nothing synced away
        (folder / "通知.txt").write_text("关于教师书法比赛延期的通知\n比赛延期到十一月举行。\n", encoding="utf-8")
        (folder / "读书月.txt").write_text("关于开展读书月活动的通知\n每位学生本月至少读完一本书。\n", encoding="utf-8")
        mark = len(lines)
        (folder / "新.txt").write_text("关于秋季运动会的通知\n运动会在十月中旬举行。\n", encoding="utf-8")
        _until(lambda: "部门乙/新.txt" in engine.visible(), "the watch to go on after the refusal")
        _until(lambda: any(line.split(" ", 1)[1].startswith("synced 部门乙") for line in lines[mark:]),
               "the sync's line (written once its commit is made)")
    finally:
        watcher.stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_serve_watch_keeps_the_served_index_in_sync(archive, encoder, tmp_path):
    """`serve --watch`: a file dropped into a source is soon a document the API lists and finds,
    and a deleted one leaves; the server's log says what each sync did."""
    from test_api import api_server

    Engine(tmp_path / "index", encoder=encoder).build([archive / "部门乙"])
    with api_server(tmp_path / "index", tmp_path / "access.json", tmp_path / "server.log", extra=("--watch",)) as api:
        listed = lambda: {d["doc_id"] for d in api.get("/documents").json()}  # noqa: E731
        (archive / "部门乙" / "读书月.txt").write_text("关于开展读书月活动的通知\n每位学生本月至少读完一本书。\n",
                                                 encoding="utf-8")
        _until(lambda: "部门乙/读书月.txt" in listed(), "the served index to take the new file")
        hit = api.post("/search", json={"query": "读书月每位学生要读几本书", "k": 1}).json()["hits"][0]
        assert hit["doc_id"] == "部门乙/读书月.txt"
        (archive / "部门乙" / "会议纪要.md").unlink()
        _until(lambda: "部门乙/会议纪要.md" not in listed(), "the deleted file to leave")
        assert "synced 部门乙: 0 new, 0 changed, 1 removed" in api.log.read_text()


def test_watch_needs_a_source(speech_index, tmp_path, capsys):
    """An index that follows no folder: `watch` and `serve --watch` say so in one line."""
    for command in (["watch"], ["serve", "--watch"]):
        code, _, err = cli(capsys, *command, "--index", speech_index)
        one_line_error(code, err, "follows no folder")
