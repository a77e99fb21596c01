"""Atomic file writes: every artifact is written to a temporary file beside its target and renamed
into place only when complete, so a crash or a full disk never leaves a half-written file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to `path` (keeping `suffix`, which some writers read as the
    format); on success it replaces `path` with mode 0644, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)                   # mkstemp files are 0600; artifacts are shared data
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 1) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def read_json(path: str | os.PathLike, error: type[Exception], missing: str | None = None) -> Any:
    """Parse a JSON file; a missing or unparsable file raises `error` with a one-line message
    (`missing` replaces the default message for a file that does not exist)."""
    path = Path(path)
    if not path.is_file():
        raise error(missing or f"{path} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: expected JSON, found invalid content ({e})") from None


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (first 16 hex digits): the identity of models and bundle files."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# A stage builds a folder under a hidden name carrying its pid, then renames it into place; a killed
# process leaves it behind, and the next writer removes it once that pid is gone.
_PARTIAL = re.compile(r"^\..+\.(?:partial|old)-(\d+)$")


def partial_dir(parent: str | os.PathLike, name: str) -> Path:
    """A fresh, empty hidden work folder for `name` inside `parent` (stale ones are removed first)."""
    parent = Path(parent)
    remove_stale_partials(parent)
    tmp = parent / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                  # exists, owned by someone else
        return True
    return True


def remove_stale_partials(parent: str | os.PathLike) -> list[Path]:
    """Delete `.<name>.partial-<pid>` (and `.old-<pid>`) entries of `parent` whose process no longer runs."""
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = _PARTIAL.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
