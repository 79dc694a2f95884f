"""A local SMTP server for `make run` and the tests: every message it receives is kept
as an .eml file (one per recipient) and announced with one line on stdout.

    python scripts/mail_server.py [--host 127.0.0.1] [--port 8025] [--dir instance/mail]

It speaks plain SMTP without authentication: the app reaches it as
MAIL_URL=smtp+plain://127.0.0.1:8025. Never expose it beyond the machine.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller

DEFAULT_DIR = Path(os.environ.get("INSTANCE_DIR", Path(__file__).resolve().parent.parent / "instance")) / "mail"


class KeepAsFiles:
    """aiosmtpd handler: write each message to `folder` as <time>-<id>.eml."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        for recipient in envelope.rcpt_tos:
            name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
            temporary = self.folder / f".{name}"
            temporary.write_bytes(envelope.content)
            temporary.rename(self.folder / name)  # readers see no half-written file
            print(f"[mail] to {recipient}: {message['Subject']} -> {self.folder / name}", flush=True)
        return "250 Message accepted for delivery"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    controller = Controller(KeepAsFiles(args.dir.absolute()), hostname=args.host, port=args.port)
    controller.start()
    print(f"[mail] SMTP server on {args.host}:{args.port}; messages in {args.dir}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
