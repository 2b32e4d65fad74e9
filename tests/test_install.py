"""Tests of the locked install: requirements.lock against pyproject.toml's ranges, the running environment
against the lock, and scripts/setup.sh's refusals of bad input before anything is made."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# scripts/lock.sh points NMTQ_LOCK at the lock it is about to write, to check it against the venv it was frozen from
LOCK = Path(os.environ.get("NMTQ_LOCK", ROOT / "requirements.lock"))


def locked_versions() -> dict[str, Version]:
    """``{canonical name: version}`` of every line of the lock that is not a comment."""
    pins = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: {line!r} is not pinned as NAME==VERSION"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_every_declared_dependency_is_locked_inside_its_range_and_below_its_next_major():
    pins = locked_versions()
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock: run bash scripts/lock.sh"
        # the local torch wheel is 2.13.0+cpu; the range is about the public version
        assert requirement.specifier.contains(Version(pins[name].public)), \
            f"requirements.lock has {name}=={pins[name]}, outside {requirement}: run bash scripts/lock.sh"
        uppers = [s for s in requirement.specifier if s.operator == "<"]
        assert len(uppers) == 1, f"{requirement} needs an upper bound below the next major version"
        locked = pins[name]
        next_major = Version(f"{locked.major + 1}") if locked.major else Version("1")
        assert Version(uppers[0].version) <= next_major, f"{requirement}: the bound should be <{next_major}"


def lock_python() -> str:
    """The Python the lock was made with, from its header line ``# python: 3.11 (CPython 3.11.7, ...)``."""
    header = [line for line in LOCK.read_text(encoding="utf-8").splitlines() if line.startswith("# python: ")]
    assert len(header) == 1, "requirements.lock needs one '# python: X.Y (...)' line: run bash scripts/lock.sh"
    return header[0].split()[2]


def test_the_lock_names_its_python_and_holds_transitive_dependencies():
    assert Version(lock_python()).release[0] == 3 and lock_python().count(".") == 1
    pins = locked_versions()
    # what transformers needs without our naming it: the lock is the whole environment, not our direct list
    for transitive in ("tokenizers", "regex", "filelock", "pyarrow"):
        assert transitive in pins


@pytest.mark.skipif(os.environ.get("NMTQ_DEPS") == "latest" and "NMTQ_LOCK" not in os.environ,
                    reason="set up with NMTQ_DEPS=latest, not from the lock")
def test_the_running_environment_is_the_lock():
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in metadata.distributions()}
    installed.pop("nmtq", None)
    for tool in ("pip", "setuptools", "wheel"):  # the venv's own, which pip freeze leaves out
        installed.pop(tool, None)
    pins = locked_versions()
    differences = sorted(f"{name}: {installed.get(name, 'none')} installed, {pins.get(name, 'none')} locked"
                         for name in installed.keys() | pins.keys() if installed.get(name) != pins.get(name))
    assert not differences, f"this environment is not {LOCK.name} (run bash scripts/setup.sh): {differences}"


def run_setup(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "NMTQ_VENV": str(tmp_path / "venv"), "NMTQ_DEPS": "locked", **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True,
                          env=environment, timeout=60)


def test_setup_refuses_an_unknown_switch_before_making_anything(tmp_path):
    result = run_setup(tmp_path, NMTQ_DEPS="newest")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "setup.sh: NMTQ_DEPS=newest: use NMTQ_DEPS=locked (the default, requirements.lock) or NMTQ_DEPS=latest"]
    assert not (tmp_path / "venv").exists()


def test_setup_refuses_a_missing_lock(tmp_path):
    result = run_setup(tmp_path, NMTQ_LOCK=str(tmp_path / "nothing.lock"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"setup.sh: {tmp_path / 'nothing.lock'} is missing: run bash scripts/lock.sh to make it, or NMTQ_DEPS=latest "
        "bash scripts/setup.sh for the newest versions"]
    assert not (tmp_path / "venv").exists()


def test_setup_refuses_a_python_the_lock_was_not_made_with(tmp_path):
    fake = tmp_path / "python3.99"
    fake.write_text("#!/bin/sh\necho 3.99\n")
    fake.chmod(0o755)
    result = run_setup(tmp_path, PYTHON=str(fake))
    assert result.returncode == 2
    want = lock_python()
    lock = os.environ.get("NMTQ_LOCK", "requirements.lock")
    assert result.stderr.strip().splitlines() == [
        f"setup.sh: {lock} was made with Python {want}, and {fake} is Python 3.99: run "
        f"PYTHON=python{want} bash scripts/setup.sh, or NMTQ_DEPS=latest bash scripts/setup.sh for the newest "
        "versions instead"]
    assert not (tmp_path / "venv").exists()
