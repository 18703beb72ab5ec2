"""The study's committed inputs (``results/cpu_study/inputs/``): what every run shares, so that a fresh machine
resumes the study instead of redoing an hour of SFT -- the warm start's adapter and report, and the SHA-256 of the
constructed questions every run trains on (those stay out of git: construction is deterministic; `restore_inputs`
checks its output against them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .cli import UsageError, stage_command
from .fileio import atomic_path, require, sha256_of, write_json
from .sft import warm_start_dir, warm_start_report_path, warm_start_settings

INPUT_DATA = ("stepsearch_train.jsonl", "stepsearch_dev.jsonl")
"""The constructed questions (``runs/<profile>/data``) the warm start and every run draw from."""


def publish_inputs(cfg, inputs: Path) -> Path:
    """Commit what every study run shares, so that a fresh machine resumes the study instead of redoing an hour of
    SFT: the warm start's adapter and report (``inputs/warm_start/<name>/``) and ``inputs/manifest.json`` with the
    SHA-256 of each and of the constructed questions (those stay out of git: construction is deterministic and
    `restore_inputs` checks its output). Nothing is written when a manifest exists; a different warm start (other
    SFT settings) is not committed over it."""
    manifest_path = inputs / "manifest.json"
    if manifest_path.is_file():  # committed once: a second warm start never replaces the one the runs started from
        return manifest_path
    adapter = warm_start_dir(cfg)
    files = {f"warm_start/{adapter.name}/{path.name}": path for path in sorted(adapter.iterdir())}
    files[f"warm_start/{adapter.name}/report.json"] = warm_start_report_path(cfg)
    for relative, source in files.items():
        with atomic_path(inputs / relative) as tmp:
            shutil.copyfile(source, tmp)
    manifest = {
        "warm_start": adapter.name,
        "settings": warm_start_settings(cfg),
        "data_sha256": {name: sha256_of(cfg.path("data", name)) for name in INPUT_DATA},
        "sha256": {relative: sha256_of(inputs / relative) for relative in files},
    }
    return write_json(manifest_path, manifest)


def restore_inputs(cfg, inputs: Path) -> None:
    """Check and fill the run folder from the committed inputs (`publish_inputs`), if any: the constructed questions
    must exist (`stepsearch construct` makes them) and match the committed digests (every run of the study trains on
    the same questions: different ones are an error naming the file); the warm start and its report are copied in,
    each checked against its SHA-256, when this config's warm start is the committed one and the run folder has none."""
    manifest_path = inputs / "manifest.json"
    if not manifest_path.is_file():
        return
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    # the questions first: a warm start restored beside different questions would pair runs that saw other data
    for name, digest in manifest["data_sha256"].items():
        target = require(cfg.path("data", name), stage_command("construct", cfg))
        if sha256_of(target) != digest:
            raise UsageError(
                f"{target} differs from the questions the study's runs train on (SHA-256 in {manifest_path}): "
                f"rerun `{stage_command('construct', cfg)}`"
            )
    adapter = warm_start_dir(cfg)
    if adapter.name != manifest["warm_start"] or (adapter / "adapter_config.json").is_file():
        return  # other SFT settings (their own warm start), or already here: nothing to copy
    prefix = f"warm_start/{adapter.name}/"
    for relative, digest in sorted(manifest["sha256"].items()):
        source, name = inputs / relative, relative[len(prefix) :]
        if sha256_of(source) != digest:
            raise UsageError(f"{source} does not match its SHA-256 in {manifest_path}: restore it with git")
        with atomic_path(warm_start_report_path(cfg) if name == "report.json" else adapter / name) as tmp:
            shutil.copyfile(source, tmp)
