"""``stepsearch <stage> [flags]`` (also ``python -m stepsearch_lib <stage>``): one door per stage, in pipeline order.

Each stage is its module's ``main``; ``python -m stepsearch_lib.<module>`` keeps working. Every stage takes
``--profile``, ``--seed`` and ``--set SECTION.FIELD=VALUE``; ``stepsearch <stage> --help`` shows an example.
A stage whose inputs are missing says which stage produces them.
"""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "data": ("fetch", "fetch the profile's official data files (offline: check the shared mirror)"),
    "construct": ("construct", "build the training data: decompose, write queries, filter by retrieval"),
    "index": ("index", "build the profile's dense + BM25 indexes (or one folder: `index build`)"),
    "server": ("server", "serve index folders over the Search-R1 /retrieve API"),
    "sft": ("sft", "train the SFT warm start (the protocol)"),
    "train": ("train", "RL: StePPO, PPO or GRPO from the warm start"),
    "evaluate": ("evaluate", "score a method on a question file (EM / F1, 95 % intervals)"),
    "study": ("study", "the cpu study: StePPO vs PPO from one warm start over paired seeds (warm, pilot, train)"),
    "reproduce": ("reproduce", "run the notebooks 01-05 in order"),
}
"""stage -> (module of stepsearch_lib with its ``main``, one line of help). Imported on use: `stepsearch --help`
answers without loading torch."""


def usage() -> str:
    width = max(map(len, STAGES))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in STAGES.items()]
    return (
        "usage: stepsearch <stage> [--profile P] [--seed S] [--set SECTION.FIELD=VALUE ...]\n\nstages, in order:\n"
        + "\n".join(lines)
        + "\n\nexample: stepsearch construct --profile smoke && stepsearch train --profile smoke"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"error: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"stepsearch_lib.{STAGES[stage][0]}")
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
