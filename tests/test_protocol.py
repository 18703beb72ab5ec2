"""Tag-parser edge cases and document rendering."""

import pytest

from stepsearch_lib.protocol import (
    Action,
    build_prompt,
    cut_at_stop,
    ends_with_answer,
    extract_answer,
    extract_queries,
    information_block,
    parse_action,
    render_docs,
    split_docs,
)

ACTIONS = [
    ("<search> capital of France </search>", Action("search", "capital of France")),
    ("<think>hmm</think>\n<answer>Paris</answer>", Action("answer", "Paris")),
    ("<search> unclosed query", Action("invalid")),
    ("<search>   </search>", Action("invalid")),  # empty query
    ("<search> a <search> b </search>", Action("invalid")),  # nested
    ("<answer> A </answer> <answer> B </answer>", Action("answer", "A")),  # several answers: the first block acts
    ("<answer> A </answer> and text after", Action("answer", "A")),
    ("<search> q1 </search><answer> A </answer>", Action("search", "q1")),
    ("no tags at all", Action("invalid")),
    ("</search> <search>", Action("invalid")),
    ("<SEARCH> q </SEARCH>", Action("invalid")),
    ("<search>multi\nline</search>", Action("search", "multi\nline")),
]


@pytest.mark.parametrize("text,expected", ACTIONS)
def test_parse_action(text, expected):
    assert parse_action(text) == expected


CUTS = [
    ("a <search> q </search> junk", ("a <search> q </search>", True)),
    ("<answer> x </answer><search> q </search>", ("<answer> x </answer>", True)),
    ("no stop", ("no stop", False)),
]


@pytest.mark.parametrize("text,expected", CUTS)
def test_cut_at_stop(text, expected):
    assert cut_at_stop(text) == expected


def test_answer_and_query_extraction():
    r = "<search> q1 </search>\n<information>Doc 1(Title: T) x</information><search></search><answer> A </answer>"
    assert extract_queries(r) == ["q1"] and extract_answer(r) == "A" and ends_with_answer(r)
    assert extract_answer("nothing") is None and not ends_with_answer("<answer> A </answer> trailing")


def test_docs_round_trip_and_block():
    docs = [("Get Low (Dillon Francis and DJ Snake song)", "A 2014 single."), ("Dillon Francis", "Born 1987.")]
    assert split_docs(render_docs(docs)) == ["A 2014 single.", "Born 1987."]
    assert split_docs(render_docs([("A (b) c", "x) y")])) == ["x) y"]  # parentheses in the title and the text
    block = information_block(docs)
    assert block.startswith("\n\n<information>Doc 1(Title: ") and block.endswith("</information>\n\n")


def test_templates(tokenizer):
    think = build_prompt("Who?", "think")
    plan = build_prompt("Who?", "plan")
    assert "<think>" in think and "<plan>" in plan and "<observation>" in plan and think.endswith("Question: Who?\n")
    chat = build_prompt("Who?", "think", tokenizer)
    assert chat.startswith("<|im_start|>") and chat.rstrip().endswith("assistant")
    with pytest.raises(ValueError):
        build_prompt("Who?", "nope")
