"""/docs in a real headless Chromium, with every host but 127.0.0.1 unreachable: Swagger UI
must load from the app itself and list the operations of the OpenAPI document.

Runs wherever Chromium is installed (.ci/run installs Debian's package); without it the
test fails, saying how to install it, rather than passing unseen."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import Web, http, service_env

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in CANDIDATES:
        if found := shutil.which(name):
            return found
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.fail("no Chromium on this machine: `apt-get install -y chromium` (.ci/run does) to render /docs")


def rendered_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (virtual time lets the spec's fetch finish)."""
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            # no host but ours resolves: a CDN the page still named would fail to load
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(profile)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.no_transaction
def test_docs_render_offline_in_a_headless_browser(app, committed, test_db_url, tmp_path):
    web = Web(service_env(app, test_db_url), tmp_path / "web.log")
    try:
        web.wait_ready()
        spec = http("GET", web.url("/openapi.json"))[2]
        dom = rendered_dom(web.url("/docs"), tmp_path / "chromium")
    finally:
        web.stop()
    assert 'class="swagger-ui' in dom, dom[-2000:]
    assert "Failed to load API definition" not in dom
    operation_ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values() if "responses" in op]
    # displayOperationId: each operation's id is on the page, so each operation is
    missing = [op_id for op_id in operation_ids if op_id not in dom]
    assert not missing, f"operations not on the page: {missing}"
    assert "Authorize" in dom  # the security schemes were read
