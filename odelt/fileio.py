"""Every write of the package goes through here.

Artifacts are written to a temporary file (or folder) beside their target and renamed into place
only when complete, so a crash or a full disk never leaves a half-written file. An OSError on the
way (read-only folder, no space left, permission denied) becomes one `WriteError` naming the path
and the reason, after what the failed write started has been removed.

The three steps in `PRIMITIVES` (make a folder, make a temp file, rename it into place) are the
only places that touch the file system for writing: they are the seam for fault injection (a test
replaces one, `monkeypatch.setattr(fileio.PRIMITIVES, "commit", full_disk)`, to make a disk full or
a folder read-only at that step).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from odelt.errors import WriteError


def write_error(path: str | os.PathLike, e: OSError) -> WriteError:
    """The one-line error for a failed write of `path`."""
    reason = e.strerror or (errno.errorcode.get(e.errno, "") if e.errno else "") or str(e) or type(e).__name__
    return WriteError(f"cannot write {path}: {reason}")


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _make_temp(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)


@dataclass
class Primitives:
    """The write layer's steps on the file system; an OSError from any of them becomes a WriteError."""

    make_dir: Callable[[Path], None] = _make_dir                 # mkdir -p PATH
    make_temp: Callable[[Path, str], Path] = _make_temp          # an empty temp file beside PATH, with SUFFIX
    commit: Callable[[Path, Path], None] = _commit               # rename TMP onto PATH (atomic on one file system)


PRIMITIVES = Primitives()      # the fault-injection seam (see the module docstring)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def make_dir(path: str | os.PathLike) -> Path:
    """mkdir -p, with a one-line WriteError when the folder cannot be created."""
    path = Path(path)
    try:
        PRIMITIVES.make_dir(path)
    except OSError as e:
        raise write_error(path, e) from None
    return path


@contextmanager
def writing(path: str | os.PathLike, cleanup: tuple[str | os.PathLike, ...] = ()) -> Iterator[Path]:
    """Run a write into `path` that a library does itself; an OSError becomes a WriteError for
    `path`, and the `cleanup` paths (what the write started) are removed on any failure."""
    path = Path(path)
    try:
        yield path
    except OSError as e:
        for p in cleanup:
            _remove(Path(p))
        raise write_error(path, e) from None
    except BaseException:
        for p in cleanup:
            _remove(Path(p))
        raise


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to `path` (keeping `suffix`, which some writers read as the
    format); on success it replaces `path` with mode 0644, on failure it is removed."""
    path = Path(path)
    tmp: Path | None = None
    made = _missing_parents(path)
    try:
        PRIMITIVES.make_dir(path.parent)
        tmp = PRIMITIVES.make_temp(path, suffix)
        yield tmp
        os.chmod(tmp, 0o644)                   # mkstemp files are 0600; artifacts are shared data
        PRIMITIVES.commit(tmp, path)
        made = []
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for d in made:                         # folders this failed write created, deepest first
            try:
                d.rmdir()
            except OSError:
                break


def _missing_parents(path: Path) -> list[Path]:
    out, p = [], path.parent
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


# A stage builds a folder under a hidden name carrying its pid, then renames it into place; a killed
# process leaves it behind, and the next writer removes it once that pid is gone.
_PARTIAL = re.compile(r"^\..+\.(?:partial|old)-(\d+)$")


def partial_dir(parent: str | os.PathLike, name: str) -> Path:
    """A fresh, empty hidden work folder for `name` inside `parent` (stale ones are removed first)."""
    parent = Path(parent)
    remove_stale_partials(parent)
    tmp = parent / f".{name}.partial-{os.getpid()}"
    _remove(tmp)
    try:
        PRIMITIVES.make_dir(tmp)
    except OSError as e:
        raise write_error(parent / name, e) from None
    return tmp


@contextmanager
def building(parent: str | os.PathLike, name: str) -> Iterator[Path]:
    """`partial_dir` for a body that builds the folder: when the body fails the folder is removed,
    and an OSError (or a WriteError of a file inside) names `parent/name`, not the hidden folder.
    The body renames the folder into place (`rename`)."""
    final = Path(parent) / name
    tmp = partial_dir(parent, name)
    try:
        yield tmp
    except OSError as e:
        _remove(tmp)
        raise write_error(final, e) from None
    except WriteError as e:
        _remove(tmp)
        raise WriteError(str(e).replace(str(tmp), str(final))) from None
    except BaseException:
        _remove(tmp)
        raise


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
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = _PARTIAL.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            _remove(p)
            removed.append(p)
    return removed


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a finished temporary file or folder into place (same file system)."""
    try:
        PRIMITIVES.commit(Path(src), Path(dst))
    except OSError as e:
        raise write_error(dst, e) from None


def swap_in_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move a finished temporary folder to `final`, replacing what is there; when the move fails the
    old `final` is put back."""
    tmp, final = Path(tmp), Path(final)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    had_old = final.exists()
    if had_old:
        rename(final, old)
    try:
        rename(tmp, final)
    except BaseException:
        if had_old:
            rename(old, final)
        raise
    _remove(old)
    return final


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int = 1, sort_keys: bool = False) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys, default=float) + "\n")


def save_with(path: str | os.PathLike, save: Callable[[Path], Any], suffix: str = ".tmp") -> Path:
    """`save(tmp)` writes the artifact (PNG, npz, safetensors, torch, ONNX) to a temporary path that
    then replaces `path`."""
    with atomic_path(path, suffix=suffix) as tmp:
        save(tmp)
    return Path(path)


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (first 16 hex digits): the identity of a model or a bundle file.
    Numpy- and torch-free, so the runtime can hash on a device."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


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
    except OSError as e:
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None


# -- where a command may write ------------------------------------------------------------------
# A folder this tool writes (a bundle, a serving repository, an autoencoder, a demo) carries a small
# marker naming its kind. `--force` replaces only a folder with the same marker: never a bundle by a
# repository, never a user's folder, never the input the command reads.
OUTPUT_MARK = ".odelt-output"


def mark_output(folder: str | os.PathLike, kind: str) -> None:
    """Record that `folder` (a work folder not yet in place) is an output of kind `kind` made by
    this tool; a failure names the folder."""
    try:
        (Path(folder) / OUTPUT_MARK).write_text(kind + "\n")
    except OSError as e:
        raise write_error(folder, e) from None


def output_kind(folder: str | os.PathLike) -> str | None:
    """The kind a folder's marker names (None when it has none or it cannot be read)."""
    try:
        return (Path(folder) / OUTPUT_MARK).read_text(errors="replace").strip()[:64] or None
    except OSError:
        return None


def _relation(out: str, inp: str) -> str | None:
    if out == inp:
        return "the input itself"
    if os.path.commonpath([out, inp]) == inp:
        return "a path inside the input"
    if os.path.commonpath([out, inp]) == out:
        return "a folder holding the input"
    return None


def check_out(out: str | os.PathLike, kind: str, inputs: tuple = (), force: bool = False, folder: bool = True,
              legacy: Callable[[Path], bool] | None = None, error: type[Exception] | None = None) -> Path:
    """The one rule for every command's output, checked before any work starts.

    The output may not be an input, lie inside one, or hold one (writing or replacing it would
    destroy what the command reads); a file output may be a new file inside an input folder. A folder output (`folder`) that exists and is not empty is
    replaced only with `force` and only when it is an output of the same `kind` made by this tool
    (its marker, or `legacy(path)` for outputs from before markers); anything else is refused."""
    from odelt.errors import ConfigError

    error = error or ConfigError
    out = Path(out)
    real = os.path.realpath(out)
    for inp in inputs:
        if inp is None or not Path(inp).exists():
            continue
        how = _relation(real, os.path.realpath(inp))
        if how == "a path inside the input" and not folder and not out.exists():
            how = None                           # a new file beside the input's files replaces none of them
        if how:
            raise error(f"--out {out}: expected a path outside the input {inp}, found {how}; "
                              "refusing to write there")
    if not folder or not out.exists():
        return out
    if not out.is_dir():
        raise error(f"--out {out} exists and is a file; expected a folder path")
    if not any(out.iterdir()):
        return out
    ours = output_kind(out) == kind or (output_kind(out) is None and legacy is not None and legacy(out))
    if not ours:
        found = f"an odelt {output_kind(out)}" if output_kind(out) else "a folder holding other files"
        raise error(f"--out {out}: expected a new or empty folder or an odelt {kind} made by this tool, found "
                    f"{found} (not an odelt {kind}); refusing to replace it, even with --force")
    if not force:
        raise error(f"--out {out} already exists; pass --force to replace it (an odelt {kind} made by this tool)")
    return out


def check_writable(path: str | os.PathLike) -> Path:
    """Before the work: a file can be made beside `path` (its folder exists and takes writes), so a
    bad output path fails before anything else is written or computed."""
    path = Path(path)
    if not path.parent.is_dir():
        raise WriteError(f"cannot write {path}: its folder {path.parent} does not exist")
    if path.is_dir():
        raise WriteError(f"cannot write {path}: expected a file path, found a folder")
    try:
        tmp = PRIMITIVES.make_temp(path, ".probe")
    except OSError as e:
        raise write_error(path, e) from None
    tmp.unlink(missing_ok=True)
    return path
