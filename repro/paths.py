"""The paths a user gives (a results folder, a log folder, the data folder, an init_from checkpoint, a command's output
folder, the files a command reads), checked before any work: a path that cannot be used is one line of bad input
(`PathError`, a ReproError: `<flag or field>=<path>: <what is wrong>; <what is allowed>`), not a traceback halfway
through, and nothing is left written.

    output_dir(path, "--out-dir")          # a folder that exists and is writable, or can be created and written
    input_dir(path, "--results-dir")       # an existing folder
    input_file(path, "--refs")             # an existing file; kind="text" / "json" / "safetensors": and of that kind
    read_text(path, "--refs")              # input_file(kind="text"), read

An output folder is tested, not guessed (os.access says yes to root for any folder): the missing folders are created,
a temporary file is written in the last one, and the folders this check created are removed again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from repro.errors import ReproError


class PathError(ReproError):
    """A path that does not exist, is the wrong kind of thing (a file for a folder, a folder or an image for a record),
    or cannot be created or written."""


def output_dir(path: str | Path, what: str) -> Path:
    """`path` as a folder a command can write into: it exists and a file can be written in it, or it can be created.
    Leaves nothing behind: the folders created to test it are removed again (the command creates them when it
    writes)."""
    p = Path(path).expanduser()
    for attempt in range(3):  # another job testing the same new folder may remove it under us: test again
        try:
            return _try_output_dir(p, path, what)
        except FileNotFoundError:
            if attempt == 2:
                raise PathError(f"{what}={path}: cannot be created (it keeps disappearing)") from None
    return p


def _try_output_dir(p: Path, path: str | Path, what: str) -> Path:
    created: list[Path] = []
    existing = p
    while not existing.exists() and existing != existing.parent:
        created.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == p else f"is under {existing}, which is a file"
        raise PathError(f"{what}={path}: {where}; allowed: a folder that exists or can be created")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PathError(
            f"{what}={path}: cannot be {'created' if created else 'written'} ({exc.strerror or exc}); "
            "allowed: a folder that exists or can be created, and written"
        ) from None
    finally:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass  # another process wrote into it meanwhile: then it is theirs
    return p


def input_dir(path: str | Path, what: str) -> Path:
    """`path` as an existing folder to read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PathError(f"{what}={path}: no such folder")
    if not p.is_dir():
        raise PathError(f"{what}={path}: is a file, not a folder")
    if not os.access(p, os.R_OK | os.X_OK):
        raise PathError(f"{what}={path}: cannot be read (permission denied)")
    return p


def input_file(path: str | Path, what: str, kind: str | None = None, hint: str = "") -> Path:
    """`path` as an existing readable file; with `kind`, one whose content is of that kind (`KINDS`): a PNG where a
    record is expected is refused here, naming the file, not as a decoding traceback later. `hint`: what to do
    about a missing file (e.g. which run writes it)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PathError(f"{what}={path}: no such file" + (f"; {hint}" if hint else ""))
    if p.is_dir():
        raise PathError(f"{what}={path}: is a folder, not a file")
    try:
        with open(p, "rb") as f:
            head = f.read(1)
    except OSError as exc:
        raise PathError(f"{what}={path}: cannot be read ({exc.strerror or exc})") from None
    if kind is not None:
        if why := KINDS[kind](p, head):
            raise PathError(f"{what}={path}: not a {KIND_NAMES.get(kind, kind)} file ({why})")
    return p


def read_text(path: str | Path, what: str) -> str:
    """The file's text (UTF-8), after input_file(kind="text")."""
    return input_file(path, what, kind="text").read_text(encoding="utf8")


# ---------------------------------------------------------------- what a file of each kind must be
def _not_text(path: Path, head: bytes) -> str | None:
    try:
        path.read_text(encoding="utf8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text: byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}"
    return None


def _not_json(path: Path, head: bytes) -> str | None:
    if why := _not_text(path, head):
        return why
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except json.JSONDecodeError as exc:
        return f"JSONDecodeError: {exc}"
    return None if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"


def _not_safetensors(path: Path, head: bytes) -> str | None:
    try:
        with safe_open(str(path), framework="numpy") as f:  # reads the header only
            f.metadata()
    except SafetensorError as exc:
        return str(exc)
    return None


KINDS = {"text": _not_text, "json": _not_json, "safetensors": _not_safetensors}
KIND_NAMES = {"json": "JSON"}
