"""The command line every command of the package shares: one way to refuse bad input, one flag convention.

    @command
    def main(argv: list[str] | None = None) -> int:
        p = parser("tables", __doc__)
        add_results_dir(p)
        ...

Bad input -- a ReproError (an unknown name, a path that cannot be used, a config value), an argparse usage error, a
file that cannot be opened -- is one line on stderr, `error: <what is wrong>; <what is allowed>`, and exit status 2,
with nothing written: every command checks its inputs and output folders (repro.paths) before it works.
REPRO_DEBUG=1 raises the error with its traceback instead.

Flags, the same in every command: `--results-dir DIR` the records' root (default $REPRO_RESULTS_DIR, else results/),
`--out-dir DIR` the folder a command writes into, `--strict` a record that cannot be read is an error (without it,
each is named on stderr and in the command's output, never left out silently). The old spellings (`--results`, and
`--out` where it named a folder or a file stem) still work for one release, each with a line on stderr.

Each command is also a console script (pyproject.toml [project.scripts]: repro-tables, repro-claims, ...), named by
`prog` in its usage text. This module imports nothing heavy, and the commands import torch, transformers or
matplotlib only after their arguments are parsed: `--help` answers before any of them loads.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from repro.errors import ReproError

# file errors a command can meet reading its inputs or writing its outputs: bad input, one line
FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


class UsageError(ReproError):
    """A command line argparse cannot parse: an unknown flag, a missing argument, a choice not allowed."""


class UnreadableRecords(ReproError):
    """--strict: records that cannot be read are an error."""


def debug() -> bool:
    """REPRO_DEBUG=1: bad input raises with its traceback instead of the one-line error."""
    return os.environ.get("REPRO_DEBUG", "").lower() in ("1", "true", "yes")


def one_line(text: str) -> str:
    """A multi-line message (Hydra's lists of options are tab-indented) as one line."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if out and raw[:1] in ("\t", " "):
            out[-1] += (" " if out[-1].endswith(":") else ", ") + line
        else:
            out.append(line)
    return "; ".join(out)


def hydra_error(exc: BaseException) -> str:
    """A command line that Hydra cannot compose (a group option that does not exist, a key the config does not have,
    an override it cannot parse) as one line; an unknown key lists the keys the schema allows there."""
    cause = exc.__cause__
    if cause is not None and "not in struct" in str(cause) and getattr(cause, "full_key", None):
        # here, not at the top: the schema (pydantic) is needed only for this message
        from repro.schema import allowed_keys

        path = str(cause.full_key).split(".")
        allowed = allowed_keys(path[:-1])
        if allowed:
            return f"{cause.full_key}: unknown key; allowed keys of {'.'.join(path[:-1]) or 'the config'}: {', '.join(allowed)}"
    text = str(exc).split("\nConfig search path:")[0]  # Hydra's search path says nothing about the mistake
    if cause is not None and str(cause) not in text:
        text += f"\n{cause}"
    return one_line(text)


def describe(exc: BaseException) -> str:
    """The one line of a bad-input error."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return one_line(str(exc))


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """A command's main(argv) with the shared handling of bad input: ReproError, argparse's errors, file errors and a
    `SystemExit("message")` become one line `error: ...` on stderr and return 2; REPRO_DEBUG=1 lets them raise.
    `--help` exits 0 as usual."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except (ReproError, *FILE_ERRORS) as exc:
            if debug():
                raise
            return fail(describe(exc))
        except SystemExit as exc:
            if not isinstance(exc.code, str) or debug():
                raise  # --help (0), or an exit status a command chose
            return fail(one_line(exc.code))  # `raise SystemExit("why")`: a refusal in words, as any other

    return run


def hydra_command(app: Callable[[], object]) -> None:
    """Run a Hydra app (the runner, the planner): what Hydra cannot compose, and a file error (a log folder it cannot
    create), as one line and exit 2; REPRO_DEBUG=1 shows Hydra's full traceback instead."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its report: formatted below
    try:
        app()
    except (HydraException, OmegaConfBaseException, *FILE_ERRORS) as exc:
        if debug():
            raise
        sys.exit(fail(hydra_error(exc) if isinstance(exc, (HydraException, OmegaConfBaseException)) else describe(exc)))
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)


# ---------------------------------------------------------------- the parser and the shared flags
class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors raised as UsageError (one line, exit 2 through `command`) instead of printed
    with the whole usage text; subcommands' parsers are of this class too."""

    def error(self, message: str):
        raise UsageError(f"{message}; see {self.prog} --help")


def prog(name: str) -> str:
    """How the user called the command: its console script (`repro-tables`) or `python -m repro.tables`."""
    called = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return called if called.startswith("repro-") else f"python -m repro.{name}"


def parser(name: str, doc: str | None, **kwargs) -> ArgumentParser:
    """The command's parser: its usage text is the module's docstring, as written."""
    return ArgumentParser(
        prog=prog(name), description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )


class Deprecated(argparse.Action):
    """An old spelling of a flag: still works for one release, with one line on stderr naming the new one."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated and goes in the next release; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_results_dir(p: argparse.ArgumentParser, dest: str = "results_dir") -> None:
    """--results-dir DIR (read with `results_dir(args)`); the old `--results DIR` still works, deprecated."""
    p.add_argument(
        "--results-dir",
        metavar="DIR",
        dest=dest,
        default=None,
        help="the records' root (default: $REPRO_RESULTS_DIR or results/)",
    )
    p.add_argument("--results", dest=dest, action=Deprecated, new="--results-dir")


def results_dir(args: argparse.Namespace, dest: str = "results_dir") -> str:
    """The records' root: --results-dir, else $REPRO_RESULTS_DIR, else results/."""
    return getattr(args, dest) or os.environ.get("REPRO_RESULTS_DIR") or "results"


def add_out_dir(
    p: argparse.ArgumentParser, shown_default: str, old_out: bool = True, dest: str = "out_dir", default=None
) -> None:
    """--out-dir DIR (`shown_default`: what its help says it defaults to); `old_out`: the old `--out DIR` (a folder)
    still works, deprecated."""
    p.add_argument(
        "--out-dir",
        metavar="DIR",
        dest=dest,
        default=default,
        help=f"the folder to write into (default: {shown_default})",
    )
    if old_out:
        p.add_argument("--out", dest=dest, action=Deprecated, new="--out-dir")


def add_strict(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strict",
        action="store_true",
        help="a record that cannot be read is an error (exit 2); without it each is named on stderr and in the output",
    )


def report_unreadable(files: list[tuple], strict: bool) -> None:
    """The records a command could not read ((path, why) pairs, as repro.results.load_records returns them): each
    named on stderr, or with `strict` an error that names them."""
    if not files:
        return
    if strict:
        named = "; ".join(f"{p} ({why})" for p, why in files[:3]) + (
            f"; and {len(files) - 3} more" if len(files) > 3 else ""
        )
        raise UnreadableRecords(f"{len(files)} record(s) cannot be read (--strict): {named}")
    for p, why in files:
        print(f"warning: cannot read record {p} ({why}); left out", file=sys.stderr)
