"""Download primitives: resumable HTTP with SHA-256 checks, hub files with offline errors that
say what to fetch by hand, a trust-on-first-use checksum lock, atomic unpacking (zip, gzip, parts).

The catalogue of sources and the ``make data`` CLI live in :mod:`stepsearch_lib.fetch`.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from .fileio import atomic_path, sha256_of, write_json

LOCK_FILE = "checksums.json"
"""Per data root: relative path -> sha256, size, origin, time of every fetched file."""
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A download or unpack step failed; the message says what to do."""


class ChecksumError(FetchError):
    """A downloaded file's SHA-256 differs from the expected one (the file was deleted)."""


def hub_url(repo_id: str, repo_type: str, filename: str) -> str:
    """Browser / curl URL of one hub file (what to fetch by hand)."""
    prefix = {"dataset": "datasets/", "space": "spaces/"}.get(repo_type, "")
    return f"https://huggingface.co/{prefix}{repo_id}/resolve/main/{filename}"


# ---- checksum lock (trust on first use for sources that publish no digest) ----
def read_lock(root: Path) -> dict:
    path = root / LOCK_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FetchError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); fix or delete it") from err


def record(root: Path, relative: str, digest: str, size: int, origin: str) -> None:
    lock = read_lock(root)
    lock[relative] = {
        "sha256": digest,
        "bytes": size,
        "origin": origin,
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(root / LOCK_FILE, dict(sorted(lock.items())))


def expected_digest(root: Path, relative: str, pinned: str = "") -> str:
    """The pinned digest, else the one recorded at the first download, else ""."""
    return pinned or read_lock(root).get(relative, {}).get("sha256", "")


def check_digest(path: Path, expected: str, origin: str) -> str:
    """SHA-256 of ``path``; on a mismatch the file is deleted and :class:`ChecksumError` raised."""
    got = sha256_of(path)
    if expected and got != expected.lower():
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {origin}: expected sha256 {expected}, got {got}; "
            f"the download was deleted (nothing kept). Run again to re-download, or, if the "
            f"source changed on purpose, remove its entry from {LOCK_FILE} / the pinned digest."
        )
    return got


# ---- HTTP with resume ----
def http_download(url: str, dest: Path | str, sha256: str = "", timeout_s: float = 60.0, progress: bool = True) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, rename into place; its SHA-256.

    An interrupted transfer keeps ``dest.part`` so the next call continues with a ``Range`` request
    (a server that ignores ranges answers 200 and the download restarts from zero).
    """
    import httpx

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout_s, follow_redirects=True) as r:
            if r.status_code == 416 and have:  # the .part is already whole
                pass
            elif r.status_code == 206 and have:
                start = int(r.headers.get("content-range", "bytes 0-").split()[1].split("-")[0])
                if start != have:
                    raise FetchError(f"{url}: asked to resume at byte {have}, the server sent from {start}")
                _write_stream(r, part, "ab", have, url, progress)
            elif r.status_code == 200:
                _write_stream(r, part, "wb", 0, url, progress)
            else:
                raise FetchError(f"{url}: HTTP {r.status_code} {r.reason_phrase}")
    except httpx.HTTPError as err:
        kept = part.stat().st_size if part.exists() else 0
        raise FetchError(
            f"download of {url} interrupted ({type(err).__name__}: {err}); {kept:,} bytes kept "
            f"in {part} — run again to resume"
        ) from err
    digest = check_digest(part, sha256, url)
    os.replace(part, dest)
    return digest


def _write_stream(response, part: Path, mode: str, have: int, url: str, progress: bool) -> None:
    length = response.headers.get("content-length")
    total = have + int(length) if length else None
    with (
        open(part, mode) as f,
        tqdm(
            total=total, initial=have, unit="B", unit_scale=True, disable=not progress, desc=url.rsplit("/", 1)[-1][:40]
        ) as bar,
    ):
        for block in response.iter_bytes():  # as received: a dropped connection loses nothing already read
            f.write(block)
            bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise FetchError(f"{url}: transfer ended at {part.stat().st_size:,} of {total:,} bytes; run again to resume")


def remote_size(url: str, timeout_s: float = 15.0) -> int | None:
    """Content-Length from a HEAD request (None when the server does not say or cannot be reached)."""
    import httpx

    try:
        r = httpx.head(url, timeout=timeout_s, follow_redirects=True)
        return int(r.headers["content-length"]) if r.status_code == 200 and "content-length" in r.headers else None
    except (httpx.HTTPError, ValueError):
        return None


# ---- the hub ----
def hub_error(err: Exception, repo_id: str, repo_type: str, filename: str, dest: Path) -> FetchError:
    what = (
        f"{filename} of the hub {repo_type} {repo_id}"
        if filename not in ("", "*")
        else f"the hub {repo_type} {repo_id}"
    )
    by_hand = (
        f"`huggingface-cli download {repo_id} --repo-type {repo_type} --local-dir {dest}`"
        if filename in ("", "*")
        else f"{hub_url(repo_id, repo_type, filename)} and save it as {dest}"
    )
    return FetchError(
        f"could not download {what} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
        f"Fetch it by hand on a connected machine: {by_hand}"
    )


def hub_guard():
    import httpx
    from huggingface_hub import errors

    return (
        errors.LocalEntryNotFoundError,
        errors.OfflineModeIsEnabled,
        errors.HfHubHTTPError,
        errors.RepositoryNotFoundError,
        httpx.HTTPError,
        OSError,
    )


def hub_file_info(repo_id: str, repo_type: str, filename: str) -> tuple[int | None, str]:
    """(size, LFS sha256 or "") of one hub file, from the hub's API."""
    from huggingface_hub import HfApi

    (info,) = HfApi().get_paths_info(repo_id, [filename], repo_type=repo_type)
    lfs = getattr(info, "lfs", None)
    return getattr(info, "size", None), (lfs.sha256 if lfs else "")


def hub_download(repo_id: str, repo_type: str, filename: str, dest: Path, staging: Path) -> str:
    """One hub file to ``dest`` (the hub client resumes its own partial files); checked against the
    hub's LFS digest when it has one. Returns the SHA-256."""
    from huggingface_hub import hf_hub_download

    try:
        _size, lfs_sha = hub_file_info(repo_id, repo_type, filename)
        got = hf_hub_download(repo_id, filename, repo_type=repo_type, local_dir=staging)
    except hub_guard() as err:
        raise hub_error(err, repo_id, repo_type, filename, dest) from err
    digest = check_digest(Path(got), lfs_sha, hub_url(repo_id, repo_type, filename))
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(got, dest)
    return digest


def hub_snapshot(repo_id: str, repo_type: str, dest: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        with atomic_path(dest, is_dir=True) as tmp:
            snapshot_download(repo_id, repo_type=repo_type, local_dir=tmp)
    except hub_guard() as err:
        raise hub_error(err, repo_id, repo_type, "*", dest) from err


def fetch_models(names: list[str]) -> None:
    """Pull hub models into the HF cache (where `from_pretrained` looks); errors name what to fetch."""
    from huggingface_hub import snapshot_download

    for name in names:
        if Path(name).exists():
            print(f"[fetch] model {name}: a local folder, nothing to download")
            continue
        try:
            path = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"])
        except hub_guard() as err:
            raise hub_error(err, name, "model", "*", Path("~/.cache/huggingface/hub")) from err
        print(f"[fetch] model {name}: {path}")


# ---- unpacking (each output written atomically) ----
def unzip_members(archive: Path, members: tuple[tuple[str, str], ...], root: Path) -> list[Path]:
    """Extract the named members (matched by file name, whatever folder the zip keeps them in)."""
    out = []
    with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if not n.startswith("__MACOSX") and not n.endswith("/")]
        for member, rel in members:
            found = [n for n in names if Path(n).name == member]
            if len(found) != 1:
                raise FetchError(
                    f"{archive}: expected one member named {member!r}, found {found or 'none'} (it holds {names[:20]})"
                )
            with atomic_path(root / rel) as tmp, z.open(found[0]) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            out.append(root / rel)
    return out


def gunzip_to(src: Path, dest: Path) -> Path:
    try:
        with atomic_path(dest) as tmp, gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
    except (OSError, EOFError) as err:
        raise FetchError(f"{src}: not a complete gzip file ({err}); delete it and fetch again") from err
    return dest


def join_parts(parts: list[Path], dest: Path) -> Path:
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
    return dest
