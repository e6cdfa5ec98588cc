"""Runner settings from a JSON file (``--config PATH``), merged under the command-line flags.

The file is either a plain mapping of runner field names to values, or a run's own config.json
(its ``runner`` section is used), so that a recorded run can be run again. Values are JSON's:
paths are strings, ``null`` is none. Unknown names are refused, each with the closest valid
name; the values then pass the same rules as flags (``TorchRunnerConfig`` validates them).
Torch-free, like the rest of the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Any, NamedTuple

from ptycho_torch.special_files import is_special_file
from ptycho_torch.config import ConfigError, Problem, to_jsonable

RUN_RECORD_SECTION = "runner"  # where a run's config.json keeps the runner settings
CONFIG_FLAG = "--config"


def _refused(path: Path, rule: str) -> ConfigError:
    return ConfigError("config file", [Problem("config", str(path), rule)])


# The names settings' annotations use beyond builtins. A command's settings class lives in the module run
# as __main__, whose namespace a wrapper such as ``python -m cProfile -m ...`` does not register in
# sys.modules, where typing would look for it.
ANNOTATION_NAMES = {"Path": Path, "Any": Any}


def setting_hints(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a settings dataclass, wherever its module was run from."""
    return typing.get_type_hints(cls, localns=ANNOTATION_NAMES)


def _path_fields(cls: type) -> set[str]:
    hints = setting_hints(cls)
    return {f.name for f in dataclasses.fields(cls) if Path in (hints[f.name], *typing.get_args(hints[f.name]))}


class FileSettings(NamedTuple):
    values: dict[str, Any]  # ready for cls(**values)
    given: set[str]  # the names the user chose: every name of a plain mapping; of a run's config.json,
    # which spells out every setting, those that differ from the default
    dropped: dict[str, Any]  # the ``ignored`` names the file chose (as ``given``), with their values


class RepeatedName(ValueError):
    """A JSON object naming one key twice (json keeps the last silently)."""


def _no_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated is not None:
        raise RepeatedName(repeated)
    return dict(pairs)


def read_settings(path: Path, cls: type, ignored: tuple[str, ...] = ()) -> FileSettings:
    """The settings in ``path`` for ``cls``'s fields (``ignored`` names dropped).

    Raises ConfigError (one problem, field ``config``) for an unreadable or malformed file, a
    top level that is not a mapping, and unknown names."""
    if is_special_file(path):
        raise _refused(path, "is a pipe, socket or device, not a settings file")
    try:
        data = json.loads(Path(path).read_text(), object_pairs_hook=_no_repeated_names)
    except RepeatedName as err:
        raise _refused(path, f"names {str(err)!r} twice (which one was meant?)") from None
    except OSError as err:
        raise _refused(path, f"cannot be read ({err.strerror or err})") from None
    except (UnicodeDecodeError, ValueError) as err:  # ValueError: JSONDecodeError, an integer of > 4300 digits
        raise _refused(path, f"is not JSON ({err})") from None
    except RecursionError:  # nesting deeper than the parser's recursion limit
        raise _refused(path, "is not a settings file (JSON nested too deeply to read)") from None
    recorded = isinstance(data, dict) and isinstance(data.get(RUN_RECORD_SECTION), dict)
    if recorded:
        data = data[RUN_RECORD_SECTION]  # a run's config.json
    if not isinstance(data, dict):
        raise _refused(path, "must hold a JSON object of setting names and values (or a run's config.json)")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        raise _refused(path, "; ".join(_unknown(key, names) for key in unknown))
    paths = _path_fields(cls)
    # a blank one stays text (Path("") would be ".", the current folder): the path rule refuses it by name
    values = {key: Path(value) if key in paths and isinstance(value, str) and value.strip() else value
              for key, value in data.items() if key not in ignored}
    defaults = cls()
    given = {key for key, value in values.items() if not recorded or value != getattr(defaults, key)}
    dropped = {key: data[key] for key in ignored  # in a run's record, those it did not run with by default
               if key in data and (not recorded or data[key] != to_jsonable(getattr(defaults, key)))}
    return FileSettings(values, given, dropped)


def _unknown(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    return f"unknown setting {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
