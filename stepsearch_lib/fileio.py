"""Line-aware JSON reading with file:line errors, and atomic writes.

Every loader in the library reads through `iter_json_records`, so a malformed file is
reported as ``path:line: what is wrong`` and nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


class MissingInputError(FileNotFoundError):
    """An input a stage needs does not exist; the message names the command that produces it."""


def require(path: Path | str, made_by: str) -> Path:
    """``path`` if it exists, else a `MissingInputError` naming ``made_by``, the command that produces it."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path} is missing; `{made_by}` produces it")
    return path


class DataFormatError(ValueError):
    """A data file does not have the expected format; the message starts with ``file:line``."""


def where(path: Path | str, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


def iter_json_records(path: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)`` from a JSON Lines file or a JSON array file.

    ``.jsonl`` files hold one object per line (blank lines allowed); any other file is read
    as a JSON array of objects (the official HotpotQA / 2Wiki files) and each object's line
    is the line where it starts. Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataFormatError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataFormatError(f"{where(path, line)}: not valid UTF-8 ({err.reason} at byte {err.start})") from err
    if text.startswith("\ufeff"):
        text = text[1:]
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        yield from _iter_jsonl(path, text)
    else:
        yield from _iter_json_array(path, text)


def _iter_jsonl(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{where(path, lineno)}: invalid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(obj, dict):
            raise DataFormatError(f"{where(path, lineno)}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0
    n = len(text)

    def skip_ws(p: int) -> int:
        while p < n and text[p] in " \t\r\n":
            p += 1
        return p

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    pos = skip_ws(pos)
    if pos < n and text[pos] == "]":
        raise DataFormatError(f"{path}: the JSON array is empty")
    while True:
        pos = skip_ws(pos)
        start_line = line_at(pos)
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{where(path, err.lineno)}: invalid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(obj, dict):
            raise DataFormatError(f"{where(path, start_line)}: expected a JSON object, got {type(obj).__name__}")
        yield start_line, obj
        pos = skip_ws(end)
        if pos >= n:
            raise DataFormatError(f"{where(path, line_at(n))}: the JSON array is not closed (truncated file?)")
        if text[pos] == "]":
            return
        if text[pos] != ",":
            raise DataFormatError(f"{where(path, line_at(pos))}: expected ',' or ']' between records")
        pos += 1


def field(obj: dict, key: str, kind: type | tuple[type, ...], path: Path | str, line: int | None, optional=False):
    """``obj[key]`` checked against ``kind``; a missing or mistyped field is a `DataFormatError`."""
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise DataFormatError(f"{where(path, line)}: missing field '{key}'")
    value = obj[key]
    if isinstance(value, bool) and kind in (int, float):
        raise DataFormatError(f"{where(path, line)}: field '{key}' must be {kind.__name__}, got bool")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFormatError(f"{where(path, line)}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and briefly changes it


def _default_mode(path: Path, is_dir: bool) -> None:
    if path.exists():
        path.chmod((0o777 if is_dir else 0o666) & ~_UMASK)


@contextlib.contextmanager
def atomic_path(target: Path | str, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename.

    On error the temporary is removed and ``target`` keeps its previous content.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _default_mode(tmp, is_dir)  # mkstemp / mkdtemp create 0600 / 0700: give the result the umask's mode
        if is_dir and target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: Path | str, rows) -> Path:
    """Write rows as JSON Lines atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def write_json(path: Path | str, obj: Any) -> Path:
    """Write one JSON document atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


def write_csv(path: Path | str, rows: list[dict]) -> Path:
    """Write dict rows (same keys) as CSV atomically."""
    import csv

    if not rows:
        raise ValueError(f"no rows to write to {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return Path(path)


def read_csv(path: Path | str) -> list[dict]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def sha256_of(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in ``chunk``-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
