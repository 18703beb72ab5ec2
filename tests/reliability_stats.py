"""Counts that the reliability tests record (cases tried, faults injected, requests served).

Each test adds to a named counter; at the end of the session `conftest.py` merges the counters
into ``runs/reliability/stats.json``, from which ``python -m tests.reliability_report`` renders
docs/reliability.md -- so the document's figures are what the tests actually did.
"""

from collections import Counter

COUNTS: Counter = Counter()


def record(name: str, n: int = 1) -> None:
    COUNTS[name] += n
