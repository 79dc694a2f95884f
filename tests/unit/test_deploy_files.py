"""The files a platform reads: a Heroku-style Python buildpack (.python-version,
requirements.txt, app.json, Procfile) and the Dockerfile, which install the same locked
packages; the lock stays within setup.cfg's ranges; the web process's gunicorn settings."""

from __future__ import annotations

import configparser
import gc
import importlib.util
import json
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*\\$")


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=("#",))
    parser.read(ROOT / "setup.cfg")
    return parser


def install_requires() -> list[Requirement]:
    lines = setup_cfg()["options"]["install_requires"].splitlines()
    return [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]


def locked() -> dict[str, tuple[str, int]]:
    """{package: (version, how many hashes)} from requirements.txt."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            pins[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"requirements.txt: not a pin with hashes: {line!r}")
    return pins


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name.strip(): cmd.strip() for name, cmd in (line.split(":", 1) for line in lines if line.strip())}


def test_the_lock_pins_every_runtime_package_within_setup_cfgs_ranges():
    pins = locked()
    assert len(pins) > 30
    for name, (_version, hashes) in pins.items():
        assert hashes >= 1, f"{name} has no hash"
    for requirement in install_requires():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.txt (make lock)"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"requirements.txt pins {name}=={pins[name][0]}, outside setup.cfg's {requirement} (make lock)"
        )


def test_the_python_version_is_one_setup_cfg_and_the_image_use():
    version = (ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", version)
    assert SpecifierSet(setup_cfg()["options"]["python_requires"]).contains(f"{version}.0")
    assert f"ARG PYTHON_IMAGE=python:{version}-slim" in (ROOT / "Dockerfile").read_text()


def test_the_image_installs_the_lock_and_then_the_package_without_dependencies():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements.txt" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    assert re.search(r"^RUN pip install \.(\s|$)", dockerfile, re.M) is None  # resolving anew


def test_app_json_runs_the_procfile_with_its_addons_and_generated_secrets():
    app = json.loads((ROOT / "app.json").read_text())
    processes = procfile()
    # every long-running process type, one beat (it schedules; two would double each task)
    assert set(app["formation"]) == set(processes) - {"release"}
    assert app["formation"]["beat"]["quantity"] == 1
    assert all(process["quantity"] >= 1 for process in app["formation"].values())
    assert processes["release"] == "flask db upgrade"  # Heroku's release phase, on every deploy
    plans = {addon["plan"].split(":")[0]: addon.get("as") for addon in app["addons"]}
    assert plans == {"heroku-postgresql": "DATABASE", "heroku-redis": "REDIS"}  # DATABASE_URL, REDIS_URL
    env = app["env"]
    assert env["APP_ENV"]["value"] == "production"
    for secret in ("SECRET_KEY", "JWT_SECRET_KEY"):
        assert env[secret]["generator"] == "secret" and "value" not in env[secret]
    assert {"heroku/python"} == {pack["url"] for pack in app["buildpacks"]}


def test_a_web_worker_freezes_what_it_loaded_out_of_the_collectors_full_passes(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # else the file makes a folder of its own
    spec = importlib.util.spec_from_file_location("gunicorn_settings", ROOT / "gunicorn.conf.py")
    settings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(settings)
    assert gc.get_freeze_count() == 0
    try:
        settings.post_worker_init(worker=None)
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
