"""Filters on what documents carry (`--where 'type=pdf' --where 'year>=2020' --where 'tag=党建'`).

A filter is `FIELD OP VALUE`; several filters must all hold. They pick the documents a question
may search: the routes then search only those documents' chunks (a FAISS selector, a Milvus
filter expression), so k hits come back whenever k exist.

Fields are a document's metadata (its file's `type`, `size`, `modified`, `folder`, `title`,
`reader`; a JSON Lines document's own fields; the `tags` given when it was added) and:
    id      the document id              tag     one of its tags (`tags` too)
    source  the source (followed folder) it came from ("" for a file, upload or paste of its own)
    year    the year of its `date`/`year` field, else of the file's modified time
    date    its `date` field, else the file's modified date (YYYY-MM-DD)
    added   when it was added to the index
Operators: `=` and `!=` (on `folder`: the folder or any folder inside it; on a list field: any
element; `type=pdf|docx`: any of the values), `>` `>=` `<` `<=` (numbers as numbers, anything
else as text, so ISO dates compare right: `date>=2020-03`), and `~` (contains, ignoring case).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import QueryError

OPERATORS = ("!=", ">=", "<=", "=", ">", "<", "~")
_SPLIT = re.compile(r"^\s*([^\s!=<>~]+)\s*(!=|>=|<=|=|>|<|~)\s*([^\s!=<>~].*?)?\s*$")
_YEAR = re.compile(r"(\d{4})")


@dataclass(frozen=True)
class Condition:
    """One parsed filter."""

    field: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.field}{self.op}{self.value}"


def parse(expressions: Iterable[str] | None) -> list[Condition]:
    """Parse filter expressions; a malformed one is a QueryError naming it."""
    out = []
    for expr in expressions or ():
        match = _SPLIT.match(str(expr))
        if not match or not match.group(3):
            raise QueryError(f"cannot read the filter {expr!r}: write FIELD OP VALUE, e.g. type=pdf or year>=2020 "
                             f"(operators {' '.join(OPERATORS)})")
        field = match.group(1).lower()
        out.append(Condition("tags" if field == "tag" else field, match.group(2), match.group(3).strip("\"'")))
    return out


def fields(doc) -> dict[str, object]:
    """The values a filter can test on one document record (indexer.store.base.DocRecord)."""
    meta = dict(doc.meta)
    out: dict[str, object] = {str(k).lower(): v for k, v in meta.items()}
    out.update(id=doc.doc_id, title=doc.title or out.get("title", ""), added=doc.added, source=doc.source)
    dated = str(meta.get("date") or meta.get("modified") or "")
    if dated:  # a document without a date meets no date filter
        out.setdefault("date", dated[:10])
    year = meta.get("year") or (_YEAR.search(dated).group(1) if _YEAR.search(dated) else None)
    if year is not None:
        out["year"] = year
    tags = out.get("tags", [])
    out["tags"] = [str(t) for t in (tags if isinstance(tags, (list, tuple)) else [tags])]
    return out


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _holds(value: object, cond: Condition) -> bool:
    """Whether one field value satisfies the condition (a list: any of its elements)."""
    if isinstance(value, (list, tuple)):
        hit = any(_holds(v, Condition(cond.field, "=" if cond.op == "!=" else cond.op, cond.value)) for v in value)
        return not hit if cond.op == "!=" else hit
    if cond.op in ("=", "!=") and "|" in cond.value:
        hit = any(_holds(value, Condition(cond.field, "=", v)) for v in cond.value.split("|") if v)
        return hit if cond.op == "=" else not hit
    text = str(value)
    if cond.op == "~":
        return cond.value.lower() in text.lower()
    if cond.field == "folder" and cond.op in ("=", "!="):
        wanted = cond.value.strip("/")
        inside = text == wanted or text.startswith(wanted + "/") or not wanted
        return inside if cond.op == "=" else not inside
    a, b = _number(value), _number(cond.value)
    left, right = (a, b) if a is not None and b is not None else (text, cond.value)
    return {"=": left == right, "!=": left != right, ">": left > right, ">=": left >= right,
            "<": left < right, "<=": left <= right}[cond.op]


def matching(docs: Iterable, conditions: list[Condition], strict: bool = True) -> set[str]:
    """The ids of the documents that meet every condition. With `strict`, a field that no document
    carries is a QueryError (most likely a typo), naming the fields there are; without, it is met
    by none (a reader's scope: no error may name what lies outside it)."""
    records = [(d.doc_id, fields(d)) for d in docs]
    known = {name for _, values in records for name in values}
    for cond in conditions if strict else ():
        if records and cond.field not in known:
            raise QueryError(f"no document has the field {cond.field!r} (fields: {', '.join(sorted(known))})")
    return {doc_id for doc_id, values in records
            if all(_holds(values[c.field], c) if c.field in values else c.op == "!=" for c in conditions)}
