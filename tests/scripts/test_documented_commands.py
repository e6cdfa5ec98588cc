"""Every command the README, the docs and the Makefile show parses: its flags exist and its values pass the rules.

The commands are read from the files themselves (the Markdown files' bash blocks and inline code spans,
the Makefile's recipes), so a renamed flag or a tightened rule turns this red until the
documentation follows. Parsing only: nothing runs, no folder is read or written. Commands with
placeholders (``...``, ``[--flag]``) are not complete command lines and are skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from scripts import grid_lines_datagen, grid_lines_reconstruct
from scripts.studies import grid_lines_compare_wrapper, grid_lines_torch_runner

ROOT = Path(__file__).resolve().parents[2]
PARSERS: dict[str, Callable[[Sequence[str]], object]] = {
    "scripts.studies.grid_lines_torch_runner": grid_lines_torch_runner.parse_config,
    "scripts.studies.grid_lines_compare_wrapper": grid_lines_compare_wrapper.parse_study,
    "scripts.grid_lines_reconstruct": grid_lines_reconstruct.parse_config,
    "scripts.grid_lines_datagen": lambda argv: grid_lines_datagen.build_parser().parse_args(argv),
}  # and every benchmarks.* module by its build_parser()
PLACEHOLDERS = ("...", "[")


def command_lines(text: str) -> list[tuple[str, list[str]]]:
    """(module, argv) of every complete ``-m scripts...`` / ``-m benchmarks...`` command, one per
    line (backslash continuations joined)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        match = re.search(r"-m ((?:scripts|benchmarks)\.[\w.]+)(.*)", line)
        if match and not any(p in match.group(2) for p in PLACEHOLDERS):
            found.append((match.group(1), shlex.split(match.group(2))))
    return found


def commands(text: str) -> list[tuple[str, list[str]]]:
    """The commands of a Markdown text's bash blocks and inline code spans (wrapped lines joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    inline = [span.replace("\n", " ") for span in re.findall(r"`([^`]*-m\s+(?:scripts|benchmarks)\.[^`]*)`", prose)]
    return [command for span in blocks + inline for command in command_lines(span)]


def parse_problem(module: str, argv: list[str], capsys: pytest.CaptureFixture) -> str | None:
    """None when the command parses; else what its parser said."""
    parse = PARSERS.get(module)
    if parse is None and module.startswith("benchmarks."):
        parse = importlib.import_module(module).build_parser().parse_args
    if parse is None:
        return f"{module}: not a command of this project"
    try:
        parse(argv)
    except SystemExit as stopped:
        return f"exit {stopped.code}: {capsys.readouterr().err.strip().splitlines()[-1]}"
    return None


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHOWN = [command for document in DOCUMENTS for command in commands(document.read_text())] + command_lines(
    (ROOT / "Makefile").read_text())


def test_every_entry_point_is_shown():
    assert {module for module, _ in SHOWN} >= set(PARSERS)


@pytest.mark.parametrize("module, argv", SHOWN, ids=[f"{m.rsplit('.', 1)[-1]}:{' '.join(a)[:60]}" for m, a in SHOWN])
def test_a_documented_command_parses(module, argv, capsys):
    if "--baseline" in argv and importlib.util.find_spec("cdtools") is None:
        pytest.skip('--baseline needs the baselines extra: pip install -e ".[baselines]"')
    assert parse_problem(module, argv, capsys) is None


def test_a_misspelled_flag_or_a_bad_value_is_caught(capsys):
    text = ("```bash\npython -m scripts.studies.grid_lines_compare_wrapper --architectures cnn \\\n"
            "    --torch-grad-clp 1 --output-dir runs/x\n```\n"
            "and `python -m scripts.grid_lines_reconstruct --checkpoint c.ckpt --test-npz t.npz --precision bf16`\n"
            "but not `python -m scripts.studies.grid_lines_torch_runner ... --resume`; `python -m\n"
            "benchmarks.bench_throughput --precisions 64-true`")
    shown = commands(text)
    assert [module for module, _ in shown] == ["scripts.studies.grid_lines_compare_wrapper",
                                               "scripts.grid_lines_reconstruct", "benchmarks.bench_throughput"]
    problems = [parse_problem(module, argv, capsys) for module, argv in shown]
    assert "--torch-grad-clp" in problems[0] and "--precision" in problems[1] and "--precisions" in problems[2]
