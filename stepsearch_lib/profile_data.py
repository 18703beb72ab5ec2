"""Profile-driven data loading: which questions and which corpus a profile uses.

python -m stepsearch_lib.profile_data [--profile P]   # load every data file of a profile and report
"""

from __future__ import annotations

from typing import Iterable

from .config import get_config
from .data import Passage, QuestionRecord, gold_and_sub_paragraphs, load_corpus, load_questions, passage_key
from .fetch import describe_root, missing_files


def load_split(cfg, which: str) -> list[QuestionRecord]:
    """The profile's training (``train``) or held-out MuSiQue (``dev``) questions, capped by the profile."""
    if which not in ("train", "dev"):
        raise ValueError(f"which must be 'train' or 'dev', got {which!r}")
    rel = cfg.data.train_file if which == "train" else cfg.data.dev_file
    limit = cfg.data.max_train_questions if which == "train" else cfg.data.max_eval_questions
    return load_questions(cfg.data_file(rel), dataset="musique", limit=limit)


def load_eval_sets(cfg) -> dict[str, list[QuestionRecord]]:
    """Every evaluation dataset of the profile, by name, capped at ``max_eval_questions`` each."""
    return {
        name: load_questions(cfg.data_file(rel), dataset=name, limit=cfg.data.max_eval_questions)
        for name, rel in cfg.data.eval_files
    }


def load_profile_corpus(cfg, keep: Iterable[QuestionRecord] | None = None) -> list[Passage]:
    """The profile's corpus. With ``corpus_limit`` set, the gold paragraphs of ``keep``
    (default: every question the profile uses -- construction, train, dev and evaluation sets)
    are always kept, then the file's first passages fill up to the limit, so every notebook of a
    profile sees the same corpus."""
    passages = load_corpus(cfg.data_file(cfg.data.corpus_file))
    limit = cfg.data.corpus_limit
    if not limit or limit >= len(passages):
        return passages
    if keep is None:
        keep = [
            *load_construct_questions(cfg),
            *load_split(cfg, "train"),
            *load_split(cfg, "dev"),
            *(r for recs in load_eval_sets(cfg).values() for r in recs),
        ]
    wanted = {passage_key(p.title, p.text) for r in keep for p in gold_and_sub_paragraphs(r)}
    chosen = [p for p in passages if passage_key(p.title, p.text) in wanted]
    taken = {p.id for p in chosen}
    for p in passages:
        if len(chosen) >= limit:
            break
        if p.id not in taken:
            chosen.append(p)
    return chosen


def load_construct_questions(cfg) -> list[QuestionRecord]:
    """Questions that data construction decomposes: every ``construct_files`` entry, each capped
    at ``max_train_questions``."""
    out: list[QuestionRecord] = []
    for name, rel in cfg.data.construct_files:
        out += load_questions(cfg.data_file(rel), dataset=name, limit=cfg.data.max_train_questions)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m stepsearch_lib.data [--profile P]``: load every data file of a profile and report."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args(argv)
    cfg = get_config(args.profile)
    print(f"data root: {describe_root(cfg.data_root)}")
    missing = missing_files(cfg, cfg.data_root)
    if missing:
        print(f"missing: {missing}; fetch them with `make data PROFILE={args.profile}`")
        return 1
    corpus = load_corpus(cfg.data_file(cfg.data.corpus_file))
    keys = {passage_key(p.title, p.text) for p in corpus}
    print(f"corpus    {cfg.data.corpus_file}: {len(corpus)} passages")
    files = [
        ("train", cfg.data.train_file),
        ("dev", cfg.data.dev_file),
        *cfg.data.eval_files,
        *cfg.data.construct_files,
    ]
    named: dict[str, str] = {}
    for name, rel in files:
        named.setdefault(rel, name)
    for rel, name in named.items():
        recs = load_questions(cfg.data_file(rel))
        gold = [p for r in recs for p in gold_and_sub_paragraphs(r)]
        found = sum(passage_key(p.title, p.text) in keys for p in gold)
        print(f"{name:9s} {rel}: {len(recs)} questions, gold paragraphs in corpus {found}/{len(gold)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
