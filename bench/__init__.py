"""Benchmarks: `make bench` (or `python -m bench [rewards retrieval rollout training]`).

Each benchmark writes `runs/bench/<name>.json`; `python -m bench.report` renders
`docs/performance.md` and its figures from those files. Speed targets are ratios measured
side by side in one process (this machine is noisy); absolute times hold only for the machine
named in each file's `machine` block.
"""
