"""`python -m bench [name ...]`: run benchmarks (default: all), then write docs/performance.md."""

import sys

from bench import ann, fast_rl, report, retrieval, rewards, rollout, study_jobs, training, update_profile

ALL = {
    "rewards": rewards.run,
    "retrieval": retrieval.run,
    "ann": ann.run,
    "rollout": rollout.run,
    "training": training.run,
    "rl": fast_rl.run,
    "update": update_profile.run,
    "study_jobs": study_jobs.run,
}

names = sys.argv[1:] or list(ALL)
unknown = [n for n in names if n not in ALL]
if unknown:
    raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(ALL)}")
for name in names:
    ALL[name]()
report.main()
