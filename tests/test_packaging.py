"""The package installs beside any framework: lower bounds only, each one said in the README."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += [r for r in extra if not r.startswith("lossprobe[")]
    return reqs


def test_no_pins_only_lower_bounds():
    for req in _requirements():
        name, _, spec = re.match(r"([A-Za-z0-9_.\-]+)(\[.*\])?(.*)", req).groups()
        assert re.fullmatch(r">=[0-9.]+", spec.strip()), f"{req}: only a lower bound, never ==, <, ~= or !="


def test_lower_bounds_are_the_ones_the_readme_says_were_tested():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| package | oldest claimed |"):]
    rows = table[:table.index("\n\n")].splitlines()[2:]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(r.startswith(f"| Python | {project['requires-python'].lstrip('>=')} |") for r in rows)
    for req in _requirements():
        if req.startswith(("pytest", "scikit-learn")):
            continue                              # test tools, not something lossprobe runs on
        name, version = re.match(r"([A-Za-z0-9_.\-]+)>=([0-9.]+)", req).groups()
        row = next((r for r in rows if name in r.split("|")[1]), None)
        assert row is not None and version in row, f"{req}: say in the README's table that it was tested"


def test_typed_marker_ships():
    assert (ROOT / "lossprobe" / "py.typed").exists()
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in cfg["package-data"]["lossprobe"]
