"""The layers as a checked contract: the import-linter contracts in pyproject.toml hold and
can fail, and the light commands (``--help``, ``config show``) start without torch or ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config.loader import config_to_dict, load_config

REPO = Path(__file__).resolve().parents[1]
ROOT_PACKAGES = ("pipeline", "curation", "training", "inference", "evaluation", "demo", "commands", "support")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with the repository's contracts on the packages found from ``cwd``
    (it puts ``cwd`` first on its path)."""
    script = Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(script), "--no-cache", "--config", str(REPO / "pyproject.toml")],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_hold() -> None:
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_contract_reports_an_import_that_breaks_it(tmp_path) -> None:
    """A stand-in tree with one import across each rule: all four contracts break and name
    the import, while ``python -m pipeline``'s import of the command line stays allowed."""
    modules = {
        "pipeline/__main__.py": "import commands.main\n",
        "pipeline/loader.py": "import curation.buckets\n",  # the core imports a stage
        "commands/main.py": "import curation.buckets\nimport demo.run\n",  # allowed: the top layer
        "evaluation/run.py": "import training.validation\n",  # one stage imports another
        "training/validation.py": "",
        "training/job.py": "import support.synthetic\n",  # a stage imports the support package
        "support/synthetic.py": "import curation.buckets\n",  # the support package imports a stage
        "curation/buckets.py": "",
        "demo/run.py": "import support.synthetic\n",  # allowed: the demo uses the support package
    }
    for package in ROOT_PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for path, source in modules.items():
        (tmp_path / path).write_text(source)
    proc = _lint_imports(tmp_path)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 1, report
    assert "0 kept, 4 broken" in report, report
    for line in ("pipeline.loader -> curation.buckets", "evaluation.run -> training.validation",
                 "training.job -> support.synthetic", "support.synthetic -> curation.buckets"):
        assert line in report, report
    assert "pipeline.__main__ ->" not in report and "commands.main ->" not in report and "demo.run ->" not in report


# Runs ``python -m pipeline ARGS`` in this interpreter, then names torch and ray if imported.
_RUN_AND_LIST_HEAVY = """
import runpy, sys
try:
    runpy.run_module("pipeline", run_name="__main__")
finally:
    print("heavy:", ",".join(m for m in ("torch", "ray") if m in sys.modules))
"""


def _light(*args: str) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-c", _RUN_AND_LIST_HEAVY, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    output, heavy = proc.stdout.rsplit("heavy:", 1)
    return output, heavy.strip()


def test_config_show_prints_the_config_without_torch_or_ray() -> None:
    output, heavy = _light("config", "show", "tiny")
    assert heavy == ""
    assert yaml.safe_load(output) == config_to_dict(load_config("tiny"))


@pytest.mark.parametrize("command", [(), ("train",), ("generate",), ("eval",), ("curate",)])
def test_help_starts_without_torch_or_ray(command: tuple[str, ...]) -> None:
    output, heavy = _light(*command, "--help")
    assert heavy == ""
    assert output.startswith(" ".join(("usage: i2vgen", *command)))
