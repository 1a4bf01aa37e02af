"""environment.yml (conda) and pyproject.toml (pip) name the same dependencies."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).parent.parent
CONDA_TO_PIP = {"pytorch": "torch"}
CONDA_ONLY = {"python", "pip"}


def conda_requirements(env):
    """Conda match specs written as PEP 440 (``name>=x``) -> {pip name: specifier}."""
    out = {}
    for item in env["dependencies"]:
        if isinstance(item, str):
            req = Requirement(item)  # a conda-only form such as "numpy=1.26" fails here
            if req.name not in CONDA_ONLY:
                out[CONDA_TO_PIP.get(req.name, req.name)] = req.specifier
    return out


def test_conda_and_pip_dependencies_agree():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pip = {Requirement(r).name: Requirement(r).specifier for r in pyproject["project"]["dependencies"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = conda_requirements(env)
    assert set(conda) == set(pip), f"only conda: {set(conda) - set(pip)}; only pip: {set(pip) - set(conda)}"
    for name in pip:
        assert conda[name] == pip[name], f"{name}: conda {conda[name]} vs pip {pip[name]}"


def test_environment_is_conda_forge_and_installs_the_package():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    pip_section = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert pip_section and any(line.startswith("-e .") or line.startswith('-e ".') for line in pip_section[0])


def test_python_requirement_agrees():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert SpecifierSet(python[0][len("python"):]) == SpecifierSet(pyproject["project"]["requires-python"])
