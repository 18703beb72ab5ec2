"""The package's floors, enforced: a module imports only modules on the floors below it (or earlier on its own).

Read bottom up, this table is the import graph in words. Every module must appear in it; every intra-package
import sits at the top of its file (no deferred imports hiding a cycle); plotting reads files and draws
figures, nothing else; evaluation loads a policy, not a trainer.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stepsearch_lib"

FLOORS = [
    ("foundations", ["paths", "fileio", "overrides", "parallel"]),
    ("config and paths", ["profiles", "config", "cli"]),
    ("data", ["data", "download", "fetch", "decompose", "stepsearch_format", "profile_data"]),
    ("models", ["models", "encoder", "critic"]),
    ("retrieval", ["retrieval", "index", "recall", "server"]),
    ("construct", ["query_writers", "construct"]),
    ("protocol and rollout", ["protocol", "decoding", "rollout", "demonstrations"]),
    ("rewards (pure)", ["tfidf", "rewards", "scripted", "batching"]),
    ("training", ["checkpoint", "steppo", "sft", "train"]),
    ("evaluation", ["evaluate", "heldout", "eval_suite"]),
    ("files in, figures out", ["plotting", "reproduce"]),
    ("experiments", ["study_inputs", "study_stats", "study_results", "jobs", "study"]),
    ("doors", ["__main__"]),
]
ORDER = [m for _, mods in FLOORS for m in mods]
RANK = {m: i for i, m in enumerate(ORDER)}
ONLY = {
    "plotting": {"fileio"},  # files in, figures out
    "tfidf": set(),  # numpy (and scikit-learn for the reference) only
    "rewards": {"protocol", "tfidf"},  # pure functions of text and numbers
}
NEVER = {"evaluate": {"train", "critic", "steppo"}, "eval_suite": {"train", "critic", "steppo"}}


def package_imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, at top level?, line) for every import of a stepsearch_lib module in ``path``."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
            elif node.module and node.module.split(".")[0] == "stepsearch_lib":
                parts = node.module.split(".")
                names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            else:
                continue
            out += [(n, node in tree.body, node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            out += [
                (a.name.split(".")[1], node in tree.body, node.lineno)
                for a in node.names
                if a.name.startswith("stepsearch_lib.")
            ]
    return out


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_every_module_has_a_floor():
    assert sorted(ORDER) == MODULES, set(MODULES) ^ set(ORDER)


@pytest.mark.parametrize("module", MODULES)
def test_imports_go_down_the_floors_and_sit_at_the_top(module):
    for target, top, line in package_imports(PACKAGE / f"{module}.py"):
        where = f"stepsearch_lib/{module}.py:{line} imports {target}"
        assert top, f"{where} inside a function: move it to the top of the file"
        assert RANK[target] < RANK[module], f"{where}, which is not below it in tests/test_layering.py FLOORS"
        assert target in ONLY.get(module, {target}), f"{where}; {module} may import only {sorted(ONLY[module])}"
        assert target not in NEVER.get(module, set()), f"{where}: evaluation loads a policy, not a trainer"


@pytest.mark.parametrize("module", ["tfidf", "rewards"])
def test_the_rewards_are_pure(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    third_party = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    third_party |= {
        n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level
    }
    assert not third_party & {"torch", "transformers", "faiss", "bm25s", "httpx"}, third_party


def test_the_checker_sees_a_deferred_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom .fileio import write_json\n\ndef f():\n    from stepsearch_lib.train import train\n"
    )
    assert package_imports(bad) == [("fileio", True, 2), ("train", False, 5)]


def test_the_readme_file_map_lists_every_module_in_floor_order():
    readme = (PACKAGE.parent / "README.md").read_text()
    listed = [
        line.split("`")[1].removeprefix("stepsearch_lib/").removesuffix(".py")
        for line in readme.splitlines()
        if line.startswith("| `stepsearch_lib/")
    ]
    assert sorted(listed) == MODULES, set(listed) ^ set(MODULES)
    assert listed == sorted(listed, key=RANK.__getitem__), "README's Files table is not in tests/test_layering.py order"
