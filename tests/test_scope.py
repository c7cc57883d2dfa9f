"""A reader bound to filters (`Engine.scoped`), on the real model: an index of two departments'
folders (conftest.departments_index) where the document outside the scope is the one that
answers the question best. Nothing of
it may show to the reader: not as a hit, a document, a count, a text, a translation or synonym
term, nor through an error that names it. The HTTP API and the page apply the same view
(tests/test_api.py, tests/test_access.py)."""
from __future__ import annotations

import re

import pytest

from conftest import INSIDE, OUTSIDE, PANDA_ENGLISH, PANDA_QUESTION, SCOPE
from indexer.engine import Engine, SearchOptions
from indexer.errors import IndexerError, NotFound, QueryError


@pytest.fixture(scope="module")
def departments(departments_index, encoder) -> Engine:
    """The departments' index (conftest.departments_index); only a view of it is written to, and refused."""
    return Engine(departments_index, encoder=encoder)


def test_the_document_outside_the_scope_answers_best_unscoped(departments):
    """The premise of every test below: unscoped, the panda report is the first hit."""
    hits = departments.search(PANDA_QUESTION, k=3)
    assert hits[0].doc_id == OUTSIDE
    english = departments.answer([PANDA_ENGLISH], SearchOptions(k=3))[0]
    assert english.hits[0].doc_id == OUTSIDE and "大熊猫" in english.terms


@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
@pytest.mark.parametrize("group", ["passages", "documents"])
def test_a_scoped_question_never_finds_the_document_outside(departments, mode, group):
    reader = departments.scoped(SCOPE)
    for question in (PANDA_QUESTION, PANDA_ENGLISH, '"熊猫"', "饲养员 竹子"):
        result = reader.answer([question], SearchOptions(k=10, mode=mode, group=group))[0]
        found = {h.doc_id for h in result.hits} | {d.doc_id for d in result.documents or ()}
        assert found <= INSIDE, (question, found)
        assert not any("熊猫" in h.text for h in result.hits)
    inside = reader.answer(["民办学校怎样建立党组织？"], SearchOptions(k=3, mode=mode, group=group))[0]
    assert inside.hits and inside.hits[0].doc_id == "docs/教育科/民办学校通知.txt"


def test_translations_and_synonyms_hold_only_the_scopes_terms(departments):
    reader = departments.scoped(SCOPE)
    english = reader.answer([PANDA_ENGLISH], SearchOptions(k=3))[0]
    shown = set(english.terms) | {t for _, terms in english.translations for t in terms}
    assert not any("熊猫" in t for t in shown), english.translations
    teachers = reader.answer(["How are teachers trained?"], SearchOptions(k=3))[0]
    assert "培训" in teachers.terms and teachers.hits[0].doc_id == "docs/教育科/教师培训.txt"  # translation still works
    assert "熊猫" in departments.answer(["猫熊吃什么"], SearchOptions(k=3))[0].terms  # the synonym, unscoped
    assert "熊猫" not in reader.answer(["猫熊吃什么"], SearchOptions(k=3))[0].terms


def test_lists_counts_and_texts_know_only_the_scope(departments):
    reader = departments.scoped(SCOPE)
    assert {d.doc_id for d in reader.documents()} == INSIDE
    assert {d.doc_id for d in departments.documents()} == INSIDE | {OUTSIDE}
    info, whole = reader.info(recall=True), departments.info()
    assert info["documents"] == 2 and whole["documents"] == 3
    assert info["chunks"] == sum(d.chunks for d in reader.documents()) < whole["chunks"]
    assert "recall@10_vs_exact" not in info and info["index_type"] == whole["index_type_setting"]
    assert re.search(r"\d+ sentences", whole["crosslingual"]) and "passages and their sentences" in info["crosslingual"]
    assert "师德培训" in reader.document_text("docs/教育科/教师培训.txt")
    with pytest.raises(NotFound) as outside:
        reader.document_text(OUTSIDE)
    with pytest.raises(NotFound) as unknown:
        reader.document_text("办公室/没有这个")
    assert str(outside.value) == str(unknown.value).replace("没有这个", "大熊猫报告")
    panda_hit = departments.search(PANDA_QUESTION, k=1)[0]
    with pytest.raises(NotFound):
        reader.context(panda_hit)


def test_errors_name_nothing_outside_the_scope(departments):
    reader = departments.scoped(SCOPE)
    with pytest.raises(QueryError) as outside:
        reader.answer(["竹子"], SearchOptions(docs=(OUTSIDE,)))
    with pytest.raises(QueryError) as unknown:
        reader.answer(["竹子"], SearchOptions(docs=("办公室/没有这个",)))
    assert str(outside.value).replace(OUTSIDE, "?") == str(unknown.value).replace("办公室/没有这个", "?")
    assert reader.answer(["竹子"], SearchOptions(where=("folder=办公室",)))[0].hits == []  # the filter adds, never widens
    with pytest.raises(QueryError) as field:
        reader.answer(["竹子"], SearchOptions(where=("species=熊猫",)))
    assert "species" in str(field.value) and "secret_level" not in str(field.value)
    with pytest.raises(QueryError) as named:
        reader.answer(["竹子"], SearchOptions(where=("secret_level=内部",)))  # its field is unknown here too
    assert "secret_level" not in str(named.value).split("(fields:")[1]
    with pytest.raises(IndexerError):
        reader.remove(["docs/教育科/教师培训.txt"])  # a view cannot write
    assert len(departments.documents()) == 3


def test_a_scope_on_a_field_no_document_has_shows_nothing(departments):
    reader = departments.scoped(("department=教育科",))
    assert reader.documents() == [] and reader.info()["documents"] == 0
    assert reader.answer([PANDA_QUESTION], SearchOptions(k=5))[0].hits == []
