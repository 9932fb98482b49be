"""One clear last line for a bundle run that fails on user input.

Why: ``python -m monai.bundle run`` wraps every error raised while a config expression is evaluated in
``RuntimeError: Failed to evaluate ...``, so a missing input file or checkpoint ends a 70-line traceback whose
useful line is buried in the middle. :func:`install` (an ``initialize`` step of every config) replaces
``sys.excepthook``: when the chain of causes holds a user error (a missing file, or an ``InputError`` from these
scripts), the run prints only ``error: <file>: <problem>`` and exits with status 2, the project's rule for bad
input; set ``SPLEENSEG_TRACEBACK=1`` to see the traceback too. Any other error keeps its full traceback and
gets the innermost cause repeated as its last line.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Iterator, Sequence

#: exit status for bad user input (the project's command lines use the same)
INPUT_ERROR_STATUS = 2
#: exception class names that mean "the user can fix this input" (``spleenseg.errors`` and its subclasses)
USER_ERROR_NAMES = frozenset({"SpleensegError", "InputError"})


class InputError(ValueError):
    """A problem the user can fix in the input (names the file and the problem); ends the run with status 2."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its causes, outermost first (each exception once)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def user_error(exc: BaseException) -> BaseException | None:
    """The innermost cause the user can fix (missing file or an input error), or None."""
    found = None
    for e in _chain(exc):
        if isinstance(e, FileNotFoundError) or USER_ERROR_NAMES & {c.__name__ for c in type(e).__mro__}:
            found = e
    return found


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of the chain: the one that says what was wrong (MONAI wraps it in
    ``RuntimeError: applying transform ...``)."""
    return list(_chain(exc))[-1]


def message(exc: BaseException) -> str:
    """``file: problem`` for a missing file, else the exception's own text."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or 'file not found'}"
    return str(exc) or type(exc).__name__


def check_file(path: str, what: str) -> str:
    """Fail before any work when a file the run needs is missing; returns ``path``."""
    if not Path(path).is_file():
        raise FileNotFoundError(2, f"{what} not found", path)
    return path


def _hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    problem = user_error(exc)
    if problem is None or os.environ.get("SPLEENSEG_TRACEBACK"):
        sys.__excepthook__(kind, exc, tb)
    inner = problem or root_cause(exc)
    print(f"error: {message(inner)}", file=sys.stderr, flush=True)
    if problem is not None:
        sys.stdout.flush()
        os._exit(INPUT_ERROR_STATUS)  # an excepthook cannot set the status any other way


def install() -> None:
    """Make a failed run end with one line naming the problem (see the module docstring)."""
    sys.excepthook = _hook


#: ``monai.bundle run``'s own parameters: every other ``--name`` on its command line overrides a config key
RUN_PARAMETERS = frozenset({"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file",
                            "tracking", "args_file"})


def _options(args: Sequence[str]) -> dict[str, str]:
    """``--name value`` and ``--name=value`` pairs of a command line (a bare ``--flag`` maps to '')."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--") and len(arg) > 2:
            name, _, value = arg[2:].partition("=")
            if not value and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
            found[name] = value
    return found


def _config_files(value: str) -> list[str]:
    """``--config_file`` as ``monai.bundle`` takes it: one path, or a Python list of paths."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return [str(p) for p in (parsed if isinstance(parsed, (list, tuple)) else [parsed])]


def check_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse a ``python -m monai.bundle run`` option that names no key of its configs (``--overlapp 0.5``).

    Why: ``monai.bundle`` adds an unknown override as a new, unused key, so a typo silently runs with the
    default. Only the command line of ``python -m monai.bundle`` is checked (also under torchrun); a workflow
    built in Python passes its overrides itself and is not looked at.
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        return
    options = _options(argv[1:])
    files = _config_files(options.get("config_file", ""))
    keys: set[str] = set()
    for name in files:
        try:
            keys |= set(json.loads(Path(name).read_text()))
        except (OSError, ValueError):
            return  # not JSON (a YAML config): nothing to compare with
    unknown = [n for n in options if n not in RUN_PARAMETERS and n.split("#")[0] not in keys]
    if unknown:
        hints = [f"--{n} (did you mean --{close[0]}?)" if (close := difflib.get_close_matches(n.split("#")[0], keys, 1))
                 else f"--{n}" for n in unknown]
        raise InputError(f"unknown option(s) {', '.join(hints)}: not a key of {', '.join(files)}")
