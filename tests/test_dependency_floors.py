"""Dependency floors: the versions with known CVEs can be neither declared, locked nor run.

pyproject.toml states the floors, requirements.lock pins the exact versions that
`make` installs and CI tests, and this environment must be the locked one.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.support.process import ROOT

# Security floors (docs/security.md): the first release with each fix.
SECURITY_FLOORS = {
    "python-socketio": "5.16.2",  # CVE-2025-61765 (pickle over the queue), CVE-2026-48804
    "python-engineio": "4.13.2",  # CVE-2026-48802, CVE-2026-48809
    "aiohttp": "3.10.11",  # CVE-2024-52303, CVE-2024-52304
    "pyjwt": "2.10",  # the auth helper's token checks
}


def _name(name: str) -> str:
    """A distribution name normalised as PEP 503 does."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in lines]


def _floor(requirement: Requirement) -> Version | None:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(floors, default=None)


def _locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in (ROOT / "requirements.lock").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        pin = line.split(";", 1)[0]  # an environment marker: `uvloop==0.23.0 ; sys_platform ...`
        name, sep, version = pin.partition("==")
        assert sep, f"requirements.lock: {raw!r} is not an exact pin"
        pins[_name(name)] = Version(version.strip())
    return pins


def test_pyproject_declares_every_security_floor() -> None:
    declared = {_name(r.name): r for r in _declared()}
    for name, floor in SECURITY_FLOORS.items():
        assert name in declared, f"{name} is not a declared dependency"
        found = _floor(declared[name])
        assert found is not None, f"{name} has no floor in pyproject.toml"
        assert found >= Version(floor), f"{name}>={found} admits versions below {floor}"
    assert "crypto" in declared["pyjwt"].extras  # RS/ES/EdDSA keys need cryptography


@pytest.mark.parametrize(("name", "floor"), sorted(SECURITY_FLOORS.items()))
def test_installed_version_meets_the_security_floor(name: str, floor: str) -> None:
    assert Version(metadata.version(name)) >= Version(floor)


def test_the_lock_pins_every_dependency_at_or_above_its_floor() -> None:
    pins = _locked()
    for requirement in [*_declared(), *_declared("test")]:
        name = _name(requirement.name)
        assert name in pins, f"requirements.lock lacks {name}: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement}: run `make lock`"
        )
    for name, floor in SECURITY_FLOORS.items():
        assert pins[name] >= Version(floor)
    assert "cryptography" in pins


def test_this_environment_runs_the_locked_versions() -> None:
    # `make` installs exactly the lock; a drift here means CI tested something else.
    drift = {
        name: (str(pinned), metadata.version(name))
        for name, pinned in _locked().items()
        if Version(metadata.version(name)) != pinned
    }
    assert drift == {}, "installed differs from requirements.lock (locked, installed)"
