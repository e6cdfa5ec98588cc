"""Evidence for ``pytest -m integration``: the run's log, JUnit XML, environment and run artifacts.

Active when the marker expression selects integration tests (``-m integration``) or when
``--evidence-topic`` is given. Everything goes to ``.artifacts/<topic>/``, which is cleared at
the start of the run. Under xdist the controller writes the log, the XML and the environment
(it receives every worker's reports); workers copy their runs' artifacts into folders named
after their own tests, so no two processes write one file.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EVIDENCE_FILES = ("config.json", "metrics.json", "history.csv", "metrics_table.csv", "metrics_table.md")
PACKAGES = ("torch", "lightning", "numpy", "scipy", "hypothesis", "pytest", "pytest-xdist", "torchmetrics",
            "matplotlib")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--evidence-topic", default=None,
                     help="write integration evidence to .artifacts/<NAME>/ (default topic: integration, "
                          "written whenever -m selects integration tests)")


def evidence_root(config: pytest.Config) -> Path | None:
    topic = config.getoption("--evidence-topic")
    markexpr = config.getoption("markexpr") or ""
    selects_integration = "integration" in markexpr and "not integration" not in markexpr
    if topic is None and not selects_integration:
        return None
    return config.rootpath / ".artifacts" / (topic or "integration")


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _git_commit(root: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    commit = done.stdout.strip() if done.returncode == 0 else f"unknown ({done.stderr.strip()})"
    return commit + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def environment_record(root: Path) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version, "platform": platform.platform(), "machine": platform.machine(),
            "git_commit": _git_commit(root), "packages": versions, "argv": sys.argv,
            "started": dt.datetime.now(dt.timezone.utc).isoformat()}


class EvidenceLog:
    """Controller-side plugin: one log line (and captured output) per test phase that matters."""

    def __init__(self, path: Path):
        self.file = path.open("w", encoding="utf-8")
        self.file.write(f"pytest evidence log, {dt.datetime.now(dt.timezone.utc).isoformat()}\n"
                        f"command: {' '.join(sys.argv)}\n\n")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call" and report.outcome == "passed":
            return
        self.file.write(f"{report.outcome.upper():8} {report.when:8} {report.duration:8.2f}s  {report.nodeid}\n")
        for title, content in report.sections:
            self.file.write(f"  --- {title} ---\n" + "".join(f"  {line}\n" for line in content.splitlines()))
        if report.failed:
            self.file.write(f"  --- failure ---\n{report.longreprtext}\n")
        self.file.flush()

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.file.write(f"\nexit status {int(exitstatus)}; {session.testscollected} tests collected, "
                        f"{session.testsfailed} failed\n")
        self.file.close()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    root = evidence_root(config)
    if root is None or not _is_controller(config):
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if not config.option.xmlpath:
        config.option.xmlpath = str(root / "junit.xml")  # read later by the junitxml plugin
    (root / "environment.json").write_text(json.dumps(environment_record(config.rootpath), indent=2) + "\n")
    config.pluginmanager.register(EvidenceLog(root / "pytest_integration.log"), "evidence-log")


class Evidence:
    """Copies a run's artifacts into the evidence folder (a no-op when evidence is off)."""

    def __init__(self, root: Path | None, test_name: str):
        self.folder = None if root is None else root / "runs" / test_name

    def keep(self, run_dir: Path, label: str = "") -> None:
        if self.folder is None:
            return
        target = self.folder / label if label else self.folder
        target.mkdir(parents=True, exist_ok=True)
        for path in Path(run_dir).iterdir():
            if path.name in EVIDENCE_FILES or path.suffix == ".png":
                shutil.copy2(path, target / path.name)


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Evidence:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.name)
    return Evidence(evidence_root(request.config), safe)
