"""The flags every entry point shares, and configs built from them.

Every command (`sft`, `train`, `evaluate`, ...) takes ``--profile``, ``--seed`` and repeatable
``--set SECTION.FIELD=VALUE`` the same way: `add_config_args` declares them, `config_from_args` turns
them into a `Config`.
"""

from __future__ import annotations

from typing import Any, Mapping

from .config import Config, get_config
from .overrides import parse_cli_overrides
from .profiles import FIDELITY_PRESETS


def add_config_args(ap) -> None:
    """The flags every entry point takes the same way: ``--profile``, ``--seed``, ``--set SECTION.FIELD=VALUE``."""
    ap.add_argument("--profile", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    ap.add_argument("--seed", type=int, default=None, help="seed of every random generator (default: the config's, 0)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="config override, repeatable (e.g. --set train.questions_per_step=4)")


def config_from_args(args, extra: Mapping[str, Any] | None = None):
    """The config of parsed `add_config_args` flags (``extra`` overrides, e.g. from dedicated flags, win)."""
    overrides = {**parse_cli_overrides(args.set), **(extra or {})}
    if args.seed is not None:
        overrides["seed"] = args.seed
    return get_config(args.profile, overrides)


def fidelity_configs(profile: str, overrides: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, Config]:
    """One config per fidelity preset (`released`, `paper`), otherwise the same profile and overrides.

    >>> {name: c.reward.redundancy_match for name, c in fidelity_configs("smoke").items()}
    {'released': 'same_rank', 'paper': 'any_rank'}
    """
    return {name: get_config(profile, {**(overrides or {}), "reward.fidelity": name}, seed=seed)
            for name in FIDELITY_PRESETS}
