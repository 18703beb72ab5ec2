"""Loaders on the real shared files, malformed-input errors, HF-datasets round trip."""

import json
import re

import pytest

from stepsearch_lib.config import get_config
from stepsearch_lib.data import (
    DataFormatError,
    QuestionRecord,
    gold_and_sub_paragraphs,
    load_corpus,
    load_questions,
    passage_key,
)
from stepsearch_lib.profile_data import load_eval_sets, load_profile_corpus, load_split


def _readme_counts(data_root):
    """(path, records) rows of the table in ../shared/data/README.md."""
    rows = []
    for line in (data_root / "README.md").read_text().splitlines():
        m = re.match(r"^\|\s*([\w/.\-]+\.jsonl)\s*\|\s*([\d,]+)", line)
        if m:
            rows.append((m.group(1), int(m.group(2).replace(",", ""))))
    return rows


@pytest.fixture(scope="module")
def corpus(data_root):
    return load_corpus(data_root / "corpus" / "wiki_passages.jsonl")


@pytest.fixture(scope="module")
def corpus_keys(corpus):
    return {passage_key(p.title, p.text) for p in corpus}


def test_readme_table_is_parsed(data_root):
    assert len(_readme_counts(data_root)) == 8


def test_counts_match_the_data_readme(data_root, corpus):
    for rel, expected in _readme_counts(data_root):
        n = len(corpus) if rel.startswith("corpus/") else len(load_questions(data_root / rel))
        assert n == expected, rel


def test_every_gold_paragraph_is_in_the_corpus(data_root, corpus_keys):
    n_gold = 0
    for rel, _ in _readme_counts(data_root):
        if rel.startswith("corpus/"):
            continue
        for rec in load_questions(data_root / rel):
            for p in gold_and_sub_paragraphs(rec):
                n_gold += 1
                assert passage_key(p.title, p.text) in corpus_keys, (rel, rec.id, p.title)
    assert n_gold > 5000


def test_musique_record_fields(data_root):
    recs = load_questions(data_root / "musique" / "musique_ans_train_subset.jsonl")
    assert sum(r.answerable for r in recs) == 111
    r = next(r for r in recs if r.id == "2hop__102789_75372")
    assert r.answers[0] == "about $1.18 trillion" and r.type == "2hop"
    assert [s.question for s in r.sub_questions] == [
        "What country is Tai Chi-tao from?",
        "how much debt do we have with #1",
    ]
    assert r.sub_questions[0].answer == "China" and r.sub_questions[0].paragraph in r.gold_paragraphs


def test_2wiki_subquestions_and_hotpot_gold(data_root):
    w = load_questions(data_root / "2wikimultihopqa" / "train_subset_with_qa_pairs.jsonl")[0]
    assert [s.answer for s in w.sub_questions] == ["Dillon Francis", "October 5, 1987"]
    assert w.sub_questions[1].paragraph.title == "Dillon Francis"
    h = load_questions(data_root / "hotpotqa" / "hotpot_dev_distractor_subset.jsonl", limit=1)[0]
    assert {p.title for p in h.gold_paragraphs} == {"Battle of Cold Harbor", "Second Battle of Bull Run"}
    b = load_questions(data_root / "bamboogle" / "test.jsonl")
    assert b[0].dataset == "bamboogle" and b[0].answers == ["james madison"]


def test_official_json_array_and_underscore_id(tmp_path, data_root):
    """The official HotpotQA / 2Wiki files are JSON arrays keyed by `_id`."""
    rows = [json.loads(line) for line in open(data_root / "hotpotqa" / "hotpot_train_distractor_subset.jsonl")][:3]
    for row in rows:
        row["_id"] = row.pop("id")
    path = tmp_path / "hotpot_train_v1.1.json"
    path.write_text(json.dumps(rows, indent=1))
    recs = load_questions(path)
    assert [r.id for r in recs] == [r["_id"] for r in rows]
    assert recs[2].source.startswith(f"{path}:") and int(recs[2].source.rsplit(":", 1)[1]) > 1


def test_flashrag_contents_and_dpr_tsv_corpora(tmp_path):
    fr = tmp_path / "wiki18.jsonl"
    fr.write_text(json.dumps({"id": "0", "contents": '"Aaron"\nAaron is a prophet.'}) + "\n")
    assert load_corpus(fr)[0].title == "Aaron" and load_corpus(fr)[0].text == "Aaron is a prophet."
    tsv = tmp_path / "psgs_w100.tsv"
    tsv.write_text("id\ttext\ttitle\n1\tAaron is a prophet.\tAaron\n")
    p = load_corpus(tsv)[0]
    assert (p.id, p.title, p.contents) == ("1", "Aaron", "Aaron\nAaron is a prophet.")


BAD_CASES = [
    ("empty.jsonl", "", "is empty"),
    (
        "truncated.jsonl",
        '{"id": "a", "question": "q", "golden_answers": ["x"]}\n{"id": "b", "quest',
        ":2: invalid JSON",
    ),
    ("wrongtype.jsonl", '{"id": "a", "question": 3, "golden_answers": ["x"]}\n', ":1: field 'question' must be str"),
    ("missing.jsonl", '{"id": "a", "golden_answers": ["x"]}\n', ":1: missing field 'question'"),
    (
        "dup.jsonl",
        '{"id": "a", "question": "q", "golden_answers": ["x"]}\n\n{"id": "a", "question": "r", "golden_answers": ["y"]}\n',
        ":3: duplicate id 'a' (first at line 1)",
    ),
    ("notobj.jsonl", "[1, 2]\n", ":1: expected a JSON object"),
    ("unknown.jsonl", '{"id": "a", "foo": 1}\n', ":1: unrecognised record"),
    ("array.json", '[\n{"id": "a", "question": "q", "golden_answers": ["x"]},\n{"id": "b"\n', "invalid JSON"),
]


@pytest.mark.parametrize("name,content,message", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_malformed_question_files_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataFormatError) as err:
        load_questions(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_non_utf8_and_duplicate_passages(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"id": "1", "title": "a", "text": "b"}\n{"id": "2", "title": "caf\xe9", "text": "x"}\n')
    with pytest.raises(DataFormatError, match=r"latin1.jsonl:2: not valid UTF-8"):
        load_corpus(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "1", "title": "a", "text": "b"}\n{"id": "1", "title": "c", "text": "d"}\n')
    with pytest.raises(DataFormatError, match=r"dup.jsonl:2: duplicate passage id '1'"):
        load_corpus(dup)


def test_records_round_trip_through_dicts(data_root):
    recs = load_questions(data_root / "musique" / "musique_ans_train_subset.jsonl", limit=20)
    assert [QuestionRecord.from_dict(r.to_dict()) for r in recs] == recs


def test_profile_loading_keeps_gold_in_a_limited_corpus():
    cfg = get_config("smoke")
    train = load_split(cfg, "train")
    assert len(train) == cfg.data.max_train_questions
    evals = load_eval_sets(cfg)
    assert set(evals) == {"hotpotqa", "2wiki", "musique", "bamboogle"}
    assert all(len(v) == cfg.data.max_eval_questions for v in evals.values())
    keep = train + [r for v in evals.values() for r in v]
    corpus = load_profile_corpus(cfg, keep)
    assert len(corpus) == cfg.data.corpus_limit
    keys = {passage_key(p.title, p.text) for p in corpus}
    assert all(passage_key(p.title, p.text) in keys for r in keep for p in gold_and_sub_paragraphs(r))
