"""Command lines derived from the runner's field declarations (see ``runner_fields``).

Each field declared with ``setting(...)`` becomes one flag (plus aliases); omitted flags stay
absent so the dataclass default applies; optional values accept ``none``; booleans take
``--x/--no-x``. Flags are grouped in ``--help`` by the destination they reach. ``run_command``
is the one error path shared by every command's ``main``: refused input is one line on stderr
and exit status 2. Torch-free, like the declarations.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ptycho_torch.config import ConfigError, plain_int, shown_value
from scripts.studies.config_file import CONFIG_FLAG, read_settings, setting_hints
from scripts.studies.runner_fields import flag_of, flags_of, route_of

NONE_WORD = "none"
REFUSED = 2  # exit status of refused input (bad flag, file, machine or output folder)
FAILED_RUN = 3  # exit status of a run that diverged, never trained, or stopped on non-finite gradients
# --help sections, in order, keyed by a field's first destination ("runner" = runner-only).
GROUPS = {
    "runner": "paths and run safety",
    "model": "model",
    "training": "training",
    "simulation": "simulated data (used when no NPZ is given)",
    "execution": "execution (hardware, precision, logging)",
}


def ascii_number(kind: type, text: str) -> int | float:
    """``kind(text)`` for ``kind`` int or float, refusing (ValueError) what those read beyond ASCII:
    other scripts' digits ('٣') and '_' separators."""
    if not text.isascii() or "_" in text:
        raise ValueError(f"{text!r}: not an ASCII decimal number")
    return kind(text)


def _converter(kind: type, optional: bool) -> Callable[[str], Any]:
    label = {int: "an integer", float: "a number", str: "a string"}.get(kind, "a path")

    def convert(text: str) -> Any:
        if optional and text.lower() == NONE_WORD:
            return None
        try:
            if not text.strip():
                raise ValueError("empty")
            return ascii_number(kind, text) if kind in (int, float) else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {label}{' or none' if optional else ''}, got {text!r}") from None

    return convert


def _field_kind(hint: Any) -> tuple[type, bool]:
    """(base type, optional) of a field annotation such as ``float | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def value_parser(cls: type, f: dataclasses.Field) -> Callable[[str], Any]:
    """Text -> a value of field ``f`` as its flag would parse it (its type, ``none``, its choices);
    booleans from true/false, yes/no, 1/0. Raises argparse.ArgumentTypeError naming the rule."""
    kind, optional = _field_kind(setting_hints(cls)[f.name])
    choices = route_of(f).choices

    def parse(text: str) -> Any:
        if kind is bool:
            if text.strip().lower() not in BOOLEAN_WORDS:
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return BOOLEAN_WORDS[text.strip().lower()]
        value = _converter(kind, optional)(text)
        if choices and value not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a plain decimal integer >= ``minimum`` (``plain_int``: no '²', no 5000 digits)."""
    def parse(text: str) -> int:
        value = plain_int(text)
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value
    return parse


def nonempty_path(text: str) -> Path:
    """An argparse type: a path that is not empty (``Path("")`` would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a non-empty path")
    return Path(text)


def group_of(f: dataclasses.Field) -> str:
    """The --help section of a field: its first destination, or "runner"."""
    route = route_of(f)
    return route.to[0] if route.to else "runner"


def add_setting_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                          fields: Sequence[dataclasses.Field], flag_prefix: str = "--") -> None:
    """Add one flag (and its aliases) per declared field of ``cls``."""
    hints = setting_hints(cls)
    for f in fields:
        route = route_of(f)
        kind, optional = _field_kind(hints[f.name])
        default_text = NONE_WORD if f.default is None else f.default
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{route.help} (default: {default_text})")
        if kind is bool:
            parser.add_argument(*flags_of(f, flag_prefix), action=argparse.BooleanOptionalAction, **common)
        else:
            parser.add_argument(*flags_of(f, flag_prefix), type=_converter(kind, optional), choices=route.choices,
                                metavar=None if route.choices else kind.__name__.upper(), **common)


def add_grouped_settings(parser: argparse.ArgumentParser, cls: type, fields: Sequence[dataclasses.Field],
                         flag_prefix: str = "--") -> None:
    """Add the flags of ``fields`` in one --help section per destination (GROUPS order)."""
    for key, title in GROUPS.items():
        members = [f for f in fields if group_of(f) == key]
        if members:
            add_setting_arguments(parser.add_argument_group(title), cls, members, flag_prefix)


def new_parser(prog: str, description: str, usage: str | None = None) -> argparse.ArgumentParser:
    """A parser that refuses abbreviated flags: a mistyped flag must never set another setting."""
    return argparse.ArgumentParser(prog=prog, description=description, usage=usage, allow_abbrev=False)


def setting_flags(cls: type, flag_prefix: str = "--") -> dict[str, str]:
    """Field name -> its flag, for restating ConfigErrors in the user's words."""
    return {f.name: flag_of(f, flag_prefix) for f in dataclasses.fields(cls)}


def config_error_message(err: ConfigError, flags: dict[str, str]) -> str:
    """A ConfigError restated with CLI flags instead of field names."""
    flags = {"config": CONFIG_FLAG, "resume": "--resume", **flags}  # a settings file's own problems, a run record's
    return "; ".join(f"{flags.get(p.field, p.field)}={shown_value(p.value)}: {p.rule}" for p in err.problems)


class _GivenOnce(argparse.Action):
    """A flag that may be given once: argparse keeps the last of several silently."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} is given twice ({str(getattr(namespace, self.dest))!r} and "
                         f"{str(values)!r}): which one was meant? give one settings file")
        setattr(namespace, self.dest, values)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(CONFIG_FLAG, type=nonempty_path, default=None, metavar="PATH", action=_GivenOnce,
                        help="JSON file of runner settings (names as in config.json), or a run's config.json; "
                             "flags given on the command line override it (overwrite: the flag only)")


# Never taken from a settings file: consent to replace a folder's files is given per command, and a
# run's config.json records the --overwrite it ran with (running that record again must not reuse it).
COMMAND_LINE_ONLY = ("overwrite",)
# Why a settings file's value of a name a command does not take from it is not used (warned of).
NOT_USED_BECAUSE = {
    "overwrite": "only the --overwrite flag lets a run replace a folder's files",
    "architecture": "a study runs the architectures of its --architectures",
    "output_dir": "a study writes each run into a folder of its own under its --output-dir",
}


def settings_given(parser: argparse.ArgumentParser, namespace: argparse.Namespace, cls: type,
                   command_only: tuple[str, ...], ignored: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings of ``--config`` (if given) overridden by the flags given; ``command_only``
    namespace entries are not settings, ``ignored`` names of the file (and ``COMMAND_LINE_ONLY``)
    are dropped. Sets ``namespace.given``: the names the user chose (flags, and see
    ``config_file.FileSettings``)."""
    given = {k: v for k, v in vars(namespace).items() if k not in (*command_only, "config")}
    namespace.given = tuple(given)
    if namespace.config is None:
        return given
    try:
        from_file = read_settings(namespace.config, cls, (*ignored, *COMMAND_LINE_ONLY))
    except ConfigError as err:
        parser.error(config_error_message(err, {}))
    for name, value in from_file.dropped.items():
        if name == "overwrite" and (value is False or vars(namespace).get("overwrite")):
            continue  # nothing asked, or the flag gave the consent
        print(f"warning: {CONFIG_FLAG}={str(namespace.config)!r}: its {name}={json.dumps(value)} is not used; "
              f"{NOT_USED_BECAUSE[name]}", file=sys.stderr)
    namespace.given = tuple(sorted(from_file.given | set(given)))
    return {**from_file.values, **given}


def build_config(parser: argparse.ArgumentParser, cls: type, given: dict[str, Any],
                 check: Callable[[Any], Any] = lambda cfg: None, flags: dict[str, str] | None = None) -> Any:
    """``cls(**given)`` then ``check(cfg)``; a ConfigError exits 2 through the parser, naming the flags."""
    try:
        cfg = cls(**given)
        check(cfg)
    except ConfigError as err:
        parser.error(config_error_message(err, flags if flags is not None else setting_flags(cls)))
    return cfg


def config_to_argv(cfg: Any, flag_prefix: str = "--") -> list[str]:
    """argv that parses back to ``cfg`` (every field spelled out)."""
    argv: list[str] = []
    for f in dataclasses.fields(cfg):
        flag, value = flag_of(f, flag_prefix), getattr(cfg, f.name)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            text = NONE_WORD if value is None else repr(value) if isinstance(value, float) else str(value)
            argv.append(f"{flag}={text}")
    return argv


def run_command(work: Callable[[], int], flags: dict[str, str] | None = None) -> int:
    """Run a command's body with honest exit statuses (see README, "Exit statuses and safety").

    Refused input (bad setting, data file, machine or output folder) -> one line, REFUSED (2);
    a run that stopped on non-finite gradients -> one line, FAILED_RUN (3); SIGTERM / SIGINT ->
    128 + signal (143 / 130); a failed read or write, or memory running out -> one line, 1. ``work`` returns 0 or, for
    a run that finished but diverged or never trained, FAILED_RUN.
    """
    from ptycho_torch.interrupts import Interrupted, deferred, signals_interrupt
    from ptycho_torch.npz_data import DataError
    from ptycho_torch.outcome import NonFiniteGradientError
    from ptycho_torch.output_folder import OutputDirError

    try:
        with signals_interrupt(), one_line_warnings():
            with deferred():  # a signal inside torch's first import would cut its C++ set-up short (SIGABRT)
                import torch  # noqa: F401
            return work()
    except ConfigError as err:
        return _fail(config_error_message(err, flags) if flags is not None else str(err), REFUSED)
    except (DataError, OutputDirError) as err:
        return _fail(str(err), REFUSED)
    except NonFiniteGradientError as err:
        return _fail(str(err), FAILED_RUN)
    except Interrupted as err:
        return _fail(f"{err}; the run stopped (temporary files removed, claim released)", err.exit_status, "stopped")
    except SystemExit as exit_:
        if type(exit_).__name__ != "SIGTERMException":  # Lightning's own SIGTERM stop, whose code is None (0)
            raise
        return _fail("interrupted by SIGTERM", 128 + signal.SIGTERM, "stopped")
    except OSError as err:
        return _fail(_os_error_line(err), 1)
    except RuntimeError as err:
        failed = _os_error_behind(err)
        if failed is None:
            raise
        return _fail(_os_error_line(failed), 1)
    except MemoryError as err:  # numpy's allocation errors are MemoryErrors; a run's settings passed the checks
        return _fail(f"out of memory ({err or 'an allocation failed'}); give the run fewer or smaller patterns", 1)


def _os_error_line(err: OSError) -> str:
    return f"{err.strerror or err}: {err.filename or ''}".rstrip(": ")


def _os_error_behind(err: BaseException) -> OSError | None:
    """The failed read or write a library's own error was raised while handling, if any: torch.save
    meets a full disk with an OSError, then raises a RuntimeError about its zip writer's position."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


OWN_PACKAGES = tuple(Path(__file__).resolve().parents[2] / name for name in ("ptycho_torch", "scripts"))


@contextlib.contextmanager
def one_line_warnings():
    """This project's own warnings printed as the commands' other messages ("warning: ..."), not
    with Python's file:line prefix and source line; other libraries' warnings keep their format."""
    default = warnings.formatwarning

    def formatted(message, category, filename, lineno, line=None):
        if any(Path(filename).resolve().is_relative_to(package) for package in OWN_PACKAGES):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatted
    try:
        yield
    finally:
        warnings.formatwarning = default


def exit_with(main: Callable[[], int]) -> typing.NoReturn:
    """A command's process: exit with ``main``'s status. Once ``main`` has returned, the work is done
    and said; the interpreter's shutdown that follows (about a second with Lightning loaded) ignores
    SIGTERM and SIGINT, which would otherwise turn that status into 143 or 130."""
    status = main()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(status)


def _fail(message: str, status: int, label: str = "error") -> int:
    print(f"{label}: {message}", file=sys.stderr)
    return status


def outcome_status(outcomes: dict[str, dict[str, Any]]) -> int:
    """0 when every run's status is ok; else one warning line per other run and FAILED_RUN."""
    failed = {name: m for name, m in outcomes.items() if m.get("status") != "ok"}
    for name, metrics in failed.items():
        print(f"warning: {name} {metrics.get('status')}: {metrics.get('status_reason')}", file=sys.stderr)
    return FAILED_RUN if failed else 0
