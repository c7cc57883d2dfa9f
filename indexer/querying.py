"""Batch files: questions in (text, CSV, JSONL), ranked hits out (JSONL or CSV), written atomically."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import QueryError
from .decoding import decode_bytes
from .results import SearchOptions


@dataclass(frozen=True)
class Question:
    qid: str
    query: str
    where: tuple[str, ...] = ()  # this question's own filters (indexer.filters), besides the batch's


def _filters(value: object, where: str) -> tuple[str, ...]:
    """A question's filters: a JSON list of strings, or one string of filters separated by ";"."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(";") if part.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise QueryError(f'{where}: "where" must be a list of filters or one string of them separated by ";"')


def answer(engine, questions: list[Question], options: SearchOptions) -> list:
    """Each question's Result (indexer.results), in order: questions that share their filters are
    asked together (encoded in one batch); the options' `where` applies to every question."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for n, q in enumerate(questions):
        groups.setdefault(q.where, []).append(n)
    results: list = [None] * len(questions)
    for own, rows in groups.items():
        found = engine.answer([questions[n].query for n in rows], replace(options, where=options.where + own))
        for n, result in zip(rows, found):
            results[n] = result
    return results


def read_questions(path: str | Path) -> list[Question]:
    """Questions from a file: .jsonl ({"id"?, "query"}), .csv (a `query` column, `id` optional),
    anything else one question per line. Blank lines are skipped; ids default to the line number."""
    path = Path(path)
    if not path.is_file():
        raise QueryError(f"{path}: no such questions file")
    text, _ = decode_bytes(path.read_bytes(), str(path))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        questions = _jsonl_questions(text, path)
    elif suffix == ".csv":
        questions = _csv_questions(text, path)
    else:
        questions = [Question(str(n), line.strip()) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not questions:
        raise QueryError(f"{path}: no questions in the file")
    return questions


def _jsonl_questions(text: str, path: Path) -> list[Question]:
    out = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise QueryError(f"{path}:{n}: not valid JSON ({exc.args[0]})") from exc
        query = row.get("query") if isinstance(row, dict) else None
        if not isinstance(query, str) or not query.strip():
            raise QueryError(f'{path}:{n}: each line needs a non-empty "query" string')
        out.append(Question(str(row.get("id", row.get("qid", n))), query, _filters(row.get("where"), f"{path}:{n}")))
    return out


def _csv_questions(text: str, path: Path) -> list[Question]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "query" not in reader.fieldnames:
        raise QueryError(f"{path}: a CSV questions file needs a 'query' column")
    out = []
    for n, row in enumerate(reader, 2):
        if (row.get("query") or "").strip():
            out.append(Question(str(row.get("id") or n), row["query"], _filters(row.get("where"), f"{path}:{n}")))
    return out


def write_results(path: str | Path, questions: list[Question], results: list) -> None:
    """Write each question's Result (indexer.engine) as JSONL (one line per question: id, query,
    terms searched, hits with their answering sentence) or CSV (one row per hit),
    by the output's extension, through a temporary file renamed into place."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise QueryError(f"{path}: output must end in .jsonl or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            if path.suffix.lower() == ".csv":
                _write_csv(fh, questions, results)
            else:
                for q, result in zip(questions, results):
                    fh.write(json.dumps({"id": q.qid, **result.to_json(), "query": q.query}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


CSV_FIELDS = ("id", "query", "rank", "score", "doc_id", "chunk_id", "section", "place", "text", "sentence",
              "sentence_start", "sentence_end", "terms")


def _write_csv(fh, questions: list[Question], results: list) -> None:
    writer = csv.writer(fh)
    writer.writerow(CSV_FIELDS)
    for q, result in zip(questions, results):
        for h in result.hits:
            writer.writerow([q.qid, q.query, h.rank, h.score, h.doc_id, h.chunk_id, h.section, h.where, h.text, h.sentence,
                             h.sentence_start, h.sentence_end, " ".join(result.terms)])
