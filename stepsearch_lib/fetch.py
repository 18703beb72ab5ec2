"""Get the full official data (and the paper-scale corpus, index, models) onto a connected machine.

``make data`` / ``stepsearch data`` downloads the files a profile reads into its data
root, in the layout the loaders expect; examples::

    stepsearch data --profile gpu                  # MuSiQue, HotpotQA, 2Wiki, Bamboogle
    stepsearch data --profile gpu --with corpus    # + the Search-R1 wiki-18 corpus
    stepsearch data --profile gpu --with index stepsearch --models --yes
    stepsearch data --list                         # every source, its size and origin

* When the profile's data root is the offline mirror (``../shared/data``), the mirror is used and
  nothing is downloaded (pass ``--data-root DIR`` to download elsewhere anyway).
* Sizes are stated before anything is downloaded (exact when the server or hub tells them, else the
  catalogue's approximate figure); downloads over ``--confirm-gb`` (10 GB) need ``--yes``.
* HTTP downloads go to ``<file>.part`` and resume with a ``Range`` request when run again; the file
  appears under its name only after its SHA-256 matched (one rename). A mismatch deletes the partial
  file and raises :class:`ChecksumError` — nothing half-written stays.
* Checksums: hub files are checked against the hub's own LFS SHA-256. The official HTTP sources
  publish no digests, so their first download records one in ``<data root>/checksums.json`` (trust on
  first use) and every later download or ``--verify`` must match it; pin one with ``--sha256 NAME=HEX``.
* Hub failures (offline, unreachable, gated) become a :class:`FetchError` naming the file to fetch
  by hand and where to put it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .config import PROJECT_ROOT, get_config
from .download import (
    LOCK_FILE,
    ChecksumError,
    FetchError,
    check_digest,
    expected_digest,
    fetch_models,
    gunzip_to,
    http_download,
    hub_download,
    hub_file_info,
    hub_guard,
    hub_snapshot,
    hub_url,
    join_parts,
    read_lock,
    record,
    remote_size,
    sha256_of,
    unzip_members,
)

__all__ = ["SOURCES", "Source", "FetchError", "ChecksumError", "fetch_source", "fetch_models", "main"]

MIRROR = PROJECT_ROOT.parent / "shared" / "data"
"""The offline mirror: used as is, never written."""


def is_mirror(root: Path | str) -> bool:
    """Whether ``root`` is (inside) the offline mirror, symlinks resolved on both sides."""
    return MIRROR.is_dir() and Path(root).resolve().is_relative_to(MIRROR.resolve())


@dataclass(frozen=True)
class Source:
    """One downloadable artifact and how it lands in the data root."""

    name: str
    """Short name used on the command line (``--only hotpotqa-dev``)."""
    group: str
    """``qa`` (fetched by default), ``corpus``, ``index``, ``stepsearch`` (opt-in with ``--with``)."""
    description: str
    """What it is, for the plan table."""
    url: str = ""
    """Plain HTTP(S) source (resumable download); empty for hub sources."""
    hub: tuple[str, str, str] = ()
    """(repo_id, repo_type, filename) on the Hugging Face hub; filename ``*`` = the whole repository."""
    approx_bytes: int = 0
    """Approximate size stated before downloading when the server does not tell (0 = unknown)."""
    sha256: str = ""
    """Pinned digest of the downloaded artifact ("" = the hub's LFS digest, or recorded on first use)."""
    archive: str = ""
    """Where the downloaded artifact is kept, relative to the data root ("" = it is the file itself)."""
    members: tuple[tuple[str, str], ...] = ()
    """For a zip archive: (member file name, destination relative to the data root) pairs."""
    dest: str = ""
    """Destination of a plain file (or gunzipped file / joined parts / snapshot folder)."""
    gunzip: bool = False
    """Decompress the downloaded ``.gz`` into ``dest``."""
    parts: tuple[str, ...] = field(default_factory=tuple)
    """Hub filenames concatenated, in order, into ``dest`` (Search-R1's split FAISS index)."""

    def outputs(self) -> list[str]:
        """Paths (relative to the data root) this source provides."""
        return [d for _, d in self.members] if self.members else [self.dest]


GB = 10**9
MB = 10**6
GDRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="

SOURCES: tuple[Source, ...] = (
    Source(
        "musique",
        "qa",
        "MuSiQue v1.0 (Ans + Full; train / dev / test), official Google Drive zip",
        url=GDRIVE + "1tGdADlNjWFaHLeZZGShh2IRcpO6Lv24h",
        approx_bytes=180 * MB,
        archive="musique/musique_v1.0.zip",
        members=(
            ("musique_ans_v1.0_train.jsonl", "musique/musique_ans_v1.0_train.jsonl"),
            ("musique_ans_v1.0_dev.jsonl", "musique/musique_ans_v1.0_dev.jsonl"),
            ("musique_ans_v1.0_test.jsonl", "musique/musique_ans_v1.0_test.jsonl"),
        ),
    ),
    Source(
        "hotpotqa-train",
        "qa",
        "HotpotQA v1.1 train (distractor contexts), official CMU server",
        url="http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_train_v1.1.json",
        approx_bytes=566 * MB,
        dest="hotpotqa/hotpot_train_v1.1.json",
    ),
    Source(
        "hotpotqa-dev",
        "qa",
        "HotpotQA dev, distractor setting, official CMU server",
        url="http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json",
        approx_bytes=47 * MB,
        dest="hotpotqa/hotpot_dev_distractor_v1.json",
    ),
    Source(
        "2wiki",
        "qa",
        "2WikiMultiHopQA (train / dev / test), official Dropbox zip",
        url="https://www.dropbox.com/s/ms2m13252h6xubs/data_ids_april7.zip?dl=1",
        approx_bytes=650 * MB,
        archive="2wikimultihopqa/data_ids_april7.zip",
        members=(
            ("train.json", "2wikimultihopqa/train.json"),
            ("dev.json", "2wikimultihopqa/dev.json"),
            ("test.json", "2wikimultihopqa/test.json"),
        ),
    ),
    Source(
        "bamboogle",
        "qa",
        "Bamboogle (125 questions), FlashRAG's copy on the hub",
        hub=("RUC-NLPIR/FlashRAG_datasets", "dataset", "bamboogle/test.jsonl"),
        approx_bytes=20_000,
        dest="bamboogle/test.jsonl",
    ),
    Source(
        "wiki18-corpus",
        "corpus",
        "Search-R1's 2018 Wikipedia dump, 21M 100-word passages (FlashRAG jsonl)",
        hub=("PeterJinGo/wiki-18-corpus", "dataset", "wiki-18.jsonl.gz"),
        approx_bytes=5 * GB,
        archive="corpus/wiki-18.jsonl.gz",
        dest="corpus/wiki-18.jsonl",
        gunzip=True,
    ),
    Source(
        "wiki18-e5-index",
        "index",
        "Search-R1's e5-base-v2 FAISS Flat index over wiki-18 (two parts, joined)",
        hub=("PeterJinGo/wiki-18-e5-index", "dataset", ""),
        parts=("part_aa", "part_ab"),
        approx_bytes=65 * GB,
        dest="index/wiki-18-e5/e5_Flat.index",
    ),
    Source(
        "stepsearch-data",
        "stepsearch",
        "StepSearch's released MuSiQue sub-question search-key data",
        hub=("Zill1/StepSearch-musi-dataset", "dataset", "*"),
        dest="stepsearch/StepSearch-musi-dataset",
    ),
)
"""The catalogue. Official sources where the datasets publish one; the hub where they do not."""

BY_NAME = {s.name: s for s in SOURCES}
GROUPS = ("qa", "corpus", "index", "stepsearch")


# ---- one source, the plan, the profile check ----
def fetch_source(src: Source, root: Path, sha256: str = "", progress: bool = True, force: bool = False) -> str:
    """Download, verify and unpack one source into ``root``; "present" when its outputs already exist."""
    if is_mirror(root):
        raise FetchError(f"{root} is the offline mirror ({MIRROR}): it is read-only; fetch into another data root")
    outputs = [root / o for o in src.outputs()]
    if not force and all(p.exists() for p in outputs):
        return "present"
    repo_id, repo_type, filename = src.hub or ("", "", "")
    if filename == "*":
        hub_snapshot(repo_id, repo_type, root / src.dest)
        return "downloaded"
    # what is downloaded: the archive / file itself, or the parts joined afterwards
    names = src.parts or ((filename or src.url),)
    targets = [root / Path(src.dest).parent / n for n in src.parts] or [root / (src.archive or src.dest)]
    for name, target in zip(names, targets):
        rel = target.relative_to(root).as_posix()
        expected = expected_digest(root, rel, (sha256 or src.sha256) if src.url else "")
        if target.exists() and not force and (src.parts or src.archive):
            check_digest(target, expected, str(target))  # fetched before; unpacking / joining still to do
            continue
        if src.url:
            digest, origin = http_download(src.url, target, expected, progress=progress), src.url
        else:
            digest = hub_download(repo_id, repo_type, name, target, root / ".hub")
            origin = hub_url(repo_id, repo_type, name)
        record(root, rel, digest, target.stat().st_size, origin)
    if src.parts:
        join_parts(targets, root / src.dest)
        for piece in targets:  # the joined file replaces them (they are as large as it)
            piece.unlink()
        return "downloaded"
    target = targets[0]
    if src.members:
        unzip_members(target, src.members, root)
    if src.gunzip:
        gunzip_to(target, root / src.dest)
    return "downloaded"


def source_size(src: Source, probe: bool = True) -> tuple[int, bool]:
    """(bytes, exact?) of what a source downloads: asked from the server / hub, else the catalogue's figure."""
    if probe:
        try:
            if src.url:
                n = remote_size(src.url)
                if n is not None:
                    return n, True
            elif src.hub and src.hub[2] == "*":
                from huggingface_hub import HfApi

                info = HfApi().dataset_info(src.hub[0], files_metadata=True)
                return sum(s.size or 0 for s in info.siblings or []), True
            elif src.hub:
                names = src.parts or (src.hub[2],)
                sizes = [hub_file_info(src.hub[0], src.hub[1], n)[0] for n in names]
                if all(s is not None for s in sizes):
                    return sum(sizes), True
        except hub_guard():
            pass
    return src.approx_bytes, False


def human(n: int, exact: bool = True) -> str:
    if not n:
        return "unknown"
    for unit, scale in (("GB", GB), ("MB", MB), ("kB", 1000)):
        if n >= scale:
            return f"{'' if exact else '~'}{n / scale:.1f} {unit}"
    return f"{n} B"


def select(only: list[str] | None = None, groups: list[str] | None = None, cfg=None) -> list[Source]:
    """``only`` by name; else the ``qa`` group, the named ``groups`` and every source of a file ``cfg`` reads."""
    if only:
        unknown = [n for n in only if n not in BY_NAME]
        if unknown:
            raise FetchError(f"unknown source(s) {unknown}; choose from {sorted(BY_NAME)}")
        return [BY_NAME[n] for n in only]
    wanted = {"qa", *(groups or [])}
    bad = wanted - set(GROUPS)
    if bad:
        raise FetchError(f"unknown group(s) {sorted(bad)}; choose from {GROUPS}")
    needed = set(profile_files(cfg)) if cfg is not None else set()
    return [s for s in SOURCES if s.group in wanted or needed & set(s.outputs())]


def profile_files(cfg) -> list[str]:
    """Data files (relative to the data root) a profile reads."""
    d = cfg.data
    files = [d.train_file, d.dev_file, d.corpus_file, *(f for _, f in d.eval_files), *(f for _, f in d.construct_files)]
    return list(dict.fromkeys(f for f in files if f and not Path(f).is_absolute()))


def missing_files(cfg, root: Path) -> list[str]:
    """A line per profile file absent from ``root``, naming the source that provides it."""
    provider = {o: s.name for s in SOURCES for o in s.outputs()}
    return [
        f"{f} (source: {provider[f]})" if f in provider else f"{f} (not in the catalogue: place it by hand)"
        for f in profile_files(cfg)
        if not (root / f).exists()
    ]


def describe_root(root: Path) -> str:
    """Which data a run reads: the offline mirror, files fetched by `make data`, or a user folder."""
    root = Path(root).resolve()
    if is_mirror(root):
        return f"the offline mirror {root} (nothing downloaded)"
    if (root / LOCK_FILE).is_file():
        return f"{root}, fetched by `make data` ({len(read_lock(root))} files in {LOCK_FILE})"
    if not root.exists():
        return f"{root} (does not exist yet)"
    return f"{root} (a folder provided by the user)"


def verify(root: Path) -> list[str]:
    """Re-hash every recorded file; the lines that differ. Recorded files no longer there (an archive
    deleted after unpacking, a joined index's parts) are listed on stdout, not counted as bad."""
    bad = []
    for rel, entry in tqdm(sorted(read_lock(root).items()), desc="verify", unit="file"):
        p = root / rel
        if not p.exists():
            print(f"[fetch] not checked, no longer present: {p}")
            continue
        got = sha256_of(p)
        if got != entry["sha256"]:
            bad.append(f"{p}: sha256 {got}, recorded {entry['sha256']} ({entry['origin']})")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="stepsearch data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", default="cpu", help="whose data root and files (default cpu)")
    ap.add_argument("--data-root", default=None, help="download here (default: the profile's data root)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these sources only (see --list)")
    ap.add_argument(
        "--with",
        dest="groups",
        nargs="+",
        default=[],
        metavar="GROUP",
        help="also the optional groups: corpus, index, stepsearch (a profile's own files are always fetched)",
    )
    ap.add_argument("--models", action="store_true", help="also pull the profile's policy and encoder from the hub")
    ap.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX", help="pin a source's digest")
    ap.add_argument("--yes", action="store_true", help="download even when the total exceeds --confirm-gb")
    ap.add_argument("--confirm-gb", type=float, default=10.0, help="above this many GB ask for --yes (default 10)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan with sizes, download nothing")
    ap.add_argument("--list", action="store_true", help="list the catalogue")
    ap.add_argument("--verify", action="store_true", help="re-hash the fetched files against checksums.json")
    ap.add_argument("--force", action="store_true", help="download even when the outputs exist")
    a = ap.parse_args(argv)
    cfg = get_config(a.profile)
    if a.list:
        for s in SOURCES:
            print(
                f"{s.name:16} {s.group:10} {human(s.approx_bytes, False):>9}  {s.description}\n"
                f"{'':28}{s.url or hub_url(*s.hub[:2], s.hub[2] or ','.join(s.parts))} -> {', '.join(s.outputs())}"
            )
        return 0
    root = Path(a.data_root).expanduser().resolve() if a.data_root else cfg.data_root
    print(f"[fetch] profile {a.profile}: data root {describe_root(root)}")
    if is_mirror(root):
        missing = missing_files(cfg, root)
        print(
            "[fetch] the offline mirror is in use; nothing is downloaded (pass --data-root DIR to download "
            "the official files elsewhere)." + ("" if not missing else f" Missing in it: {missing}")
        )
        return 1 if missing else 0
    if a.verify:
        bad = verify(root)
        print("\n".join(bad) or f"[fetch] every file in {root / LOCK_FILE} matches its checksum")
        return 1 if bad else 0
    pins = dict(p.split("=", 1) for p in a.sha256)
    sources = select(a.only, a.groups, cfg)
    rows, total, all_exact, unknown = [], 0, True, 0
    for s in sources:
        present = all((root / o).exists() for o in s.outputs()) and not a.force
        n, exact = (0, True) if present else source_size(s, probe=not a.dry_run)
        total, all_exact, unknown = total + n, all_exact and exact, unknown + (not present and not n)
        rows.append((s, present, human(n, exact) if not present else "present"))
    for s, _present, size in rows:
        print(f"  {s.name:16} {size:>10}  {s.description} -> {', '.join(s.outputs())}")
    print(
        f"[fetch] to download: {human(total, all_exact) if total else 'nothing'}"
        + (f" + {unknown} source(s) of unknown size" if unknown else "")
        + f" into {root}"
    )
    if a.dry_run:
        return 0
    if total > a.confirm_gb * GB and not a.yes:
        print(f"[fetch] more than {a.confirm_gb:g} GB: run again with --yes to download", file=sys.stderr)
        return 2
    for s, present, _ in rows:
        if not present:
            print(f"[fetch] {s.name}: {fetch_source(s, root, pins.get(s.name, ''), force=a.force)}")
    if a.models:
        fetch_models([n for n in (cfg.model.policy, cfg.model.encoder) if "/" in n])
    missing = missing_files(cfg, root)
    print(
        f"[fetch] profile {a.profile}: "
        + (f"still missing {missing}" if missing else "every data file it reads is present")
    )
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
