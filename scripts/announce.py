"""Tell a `make run` user where things are, once everything is up.

The web server, both Celery workers and beat print their banners as they start; what
a developer needs (the URLs and the demo logins) would scroll away under them. This
waits until the API answers /readyz, a worker consumes each queue and beat has written
its schedule, then prints those last. It ends with the process that started it
(honcho), so Ctrl-C leaves nothing behind.

    python scripts/announce.py [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def api_ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:  # noqa: S310 (http://HOST:PORT)
            return response.status == 200
    except OSError:
        return False


def queues_consumed(celery) -> set[str]:
    """The queues some running worker consumes."""
    replies = celery.control.inspect(timeout=1.0).active_queues() or {}
    return {queue["name"] for queues in replies.values() for queue in queues}


def beat_started(schedule: Path, since: float) -> bool:
    """beat writes its schedule file (shelve may add a suffix) as it starts."""
    return any(path.stat().st_mtime >= since for path in schedule.parent.glob(schedule.name + "*"))


def waiting_for(base: str, celery, queues: tuple[str, ...], schedule: Path, since: float) -> list[str]:
    missing = [] if api_ready(base) else [f"the API ({base}/readyz)"]
    missing += [f"a worker on queue {q}" for q in sorted(set(queues) - queues_consumed(celery))]
    return missing + ([] if beat_started(schedule, since) else [f"beat (its schedule {schedule})"])


def banner(base: str, logins_file: Path) -> str:
    logins = (
        logins_file.read_text().splitlines() if logins_file.exists() else ["(none: `flask seed --demo` makes them)"]
    )
    rule = "=" * 72
    lines = [
        rule,
        "postboard is up",
        f"  API      {base}/api/v1/",
        f"  docs     {base}/docs   (the OpenAPI document: {base}/openapi.json)",
        f"  logins   {logins[0]}",
        *(f"           {line}" for line in logins[1:]),
        f"           (kept in {logins_file})",
        f"  try      PORT={base.rsplit(':', 1)[-1]} sh scripts/walkthrough.sh",
        "  Ctrl-C stops everything.",
        rule,
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=180.0, help="give up waiting after this (default 180 s)")
    args = parser.parse_args()
    since = time.time() - 1
    parent = os.getppid()

    from app.factory import create_app
    from app.queue import QUEUES

    app = create_app()
    celery = app.extensions["celery"]
    base = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
    schedule = Path(os.environ.get("BEAT_SCHEDULE_FILE") or "instance/celerybeat-schedule").absolute()
    deadline = time.monotonic() + args.timeout
    while missing := waiting_for(base, celery, QUEUES, schedule, since):
        if os.getppid() != parent:  # honcho ended (Ctrl-C): nothing to announce
            return 0
        if time.monotonic() > deadline:
            print(f"[announce] not up after {args.timeout:.0f} s; still waiting for: {', '.join(missing)}", flush=True)
            return 1
        time.sleep(0.5)
    print("\n" + banner(base, Path(app.instance_path) / "demo-logins.txt"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
