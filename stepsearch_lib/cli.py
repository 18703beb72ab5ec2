"""The flags every entry point shares, and configs built from them.

Every command (`sft`, `train`, `evaluate`, ...) takes ``--profile``, ``--seed`` and repeatable
``--set SECTION.FIELD=VALUE`` the same way: `add_config_args` declares them, `config_from_args` turns
them into a `Config`.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Mapping

from .config import Config, get_config
from .fileio import DataFormatError, MissingInputError
from .overrides import parse_cli_overrides
from .profiles import FIDELITY_PRESETS


class UsageError(ValueError):
    """A user mistake a command reports in one line (settings that do not match a run, a bad flag value)."""


USER_ERRORS = (MissingInputError, DataFormatError, UsageError)
"""What a door reports as one line on stderr (exit 2) instead of a traceback."""


def door(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a stage's ``main(argv) -> int``: a user mistake ends in ``error: <what to do>`` and exit status 2."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


def stage_command(stage: str, cfg) -> str:
    """The command line that runs ``stage`` for this config's profile and seed (for messages naming a producer)."""
    seed = f" --seed {cfg.seed}" if cfg.seed else ""
    return f"stepsearch {stage} --profile {cfg.profile}{seed}"


def add_config_args(ap) -> None:
    """The flags every entry point takes the same way: ``--profile``, ``--seed``, ``--set SECTION.FIELD=VALUE``."""
    ap.add_argument("--profile", default="cpu", help="smoke, cpu or gpu (default: cpu)")
    ap.add_argument("--seed", type=int, default=None, help="seed of every random generator (default: the config's, 0)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="config override, repeatable (e.g. --set train.questions_per_step=4)",
    )


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
    return {
        name: get_config(profile, {**(overrides or {}), "reward.fidelity": name}, seed=seed)
        for name in FIDELITY_PRESETS
    }
