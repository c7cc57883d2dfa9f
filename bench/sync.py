"""`sync` of a big folder: what it costs when little or nothing changed.

    python -m bench.sync                 # 10,000 files in 100 folders
    python -m bench.sync --files 2000    # a quicker run

A folder of short notices is built as a source, then synced: with nothing changed (no file should
be opened), after one file is only touched (opened to compare its hash, not read), and after one
file is edited (opened and read again). Each sync is timed in this process (the engine) and as the
command a person runs (`python -m indexer sync`, a fresh process: imports and the index's opening
included). Goal: 10,000 unchanged files in at most 5 s, none opened.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import fmt_table

ROOT = Path(__file__).resolve().parent.parent
PLACES = ["东城区", "西城区", "朝阳区", "海淀区", "丰台区", "石景山区", "通州区", "顺义区", "昌平区", "大兴区"]
TOPICS = ["校园安全检查", "教师培训", "食堂卫生", "招生报名", "体育节", "读书月", "消防演练", "家长会", "心理健康", "课后服务"]


def make_archive(root: Path, files: int) -> None:
    """`files` short notices in 100 folders, each different."""
    for i in range(files):
        folder = root / f"{2000 + i % 25}年" / f"{PLACES[i % 10]}{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        topic, place = TOPICS[(i // 10) % 10], PLACES[i % 10]
        (folder / f"通知{i:05d}.txt").write_text(
            f"关于{place}开展{topic}工作的通知（第{i}号）\n请各校在{i % 28 + 1}日前完成{topic}，并报送{place}教育局。\n",
            encoding="utf-8")


def cli_sync(index: Path) -> tuple[float, str]:
    """Seconds of `python -m indexer sync` in a fresh process, and its summary line."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "indexer", "sync", "--index", str(index)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stdout.strip().splitlines()[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from indexer.engine import Engine

    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        archive, index = Path(tmp) / "archive", Path(tmp) / "index"
        make_archive(archive, args.files)
        engine = Engine(index)
        start = time.perf_counter()
        engine.build([archive])
        built = time.perf_counter() - start
        one = next(archive.rglob("通知00007.txt"))
        rows = []

        def measure(case: str) -> None:
            start = time.perf_counter()
            [(plan, _)] = engine.sync()
            took = time.perf_counter() - start
            rows.append({"case": case, "engine": took, "opened": plan.opened, "read": len(plan.read),
                         "summary": plan.summary().split(": ", 1)[1]})

        measure("nothing changed")
        rows[-1]["cli"], _ = cli_sync(index)
        os.utime(one, ns=(time.time_ns(), time.time_ns()))
        measure("one file touched (same bytes)")
        one.write_text(one.read_text(encoding="utf-8") + "补充说明：时间顺延一周。\n", encoding="utf-8")
        measure("one file edited")
        one.write_text(one.read_text(encoding="utf-8") + "再次补充。\n", encoding="utf-8")
        rows[-1]["cli"], _ = cli_sync(index)  # the same edit through the command: read in a fresh process
        print(f"### sync of {args.files:,} files (`python -m bench.sync --files {args.files}`)\n")
        print(f"Built in {built:.1f} s. Seconds per sync: `engine` in this process, `cli` as `python -m indexer sync`.\n")
        print(fmt_table(rows, [("case", "case"), ("engine", "engine s"), ("cli", "cli s"), ("opened", "files opened"),
                               ("read", "files read"), ("summary", "plan")]))


if __name__ == "__main__":
    main()
