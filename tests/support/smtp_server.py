"""A real SMTP server (aiosmtpd) in a thread of the test process, keeping the messages."""

from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from sqlalchemy import select

from app.db import db
from app.mail import outbox
from app.models import OutboxMail
from tests.support.processes import free_port


class SmtpServer:
    def __init__(self):
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []
        self.refuse = False  # answer 451 (try again later) while set
        self.refuse_next = 0  # answer 451 to this many deliveries, then accept
        self._stopped = False
        self._arrived = threading.Condition()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp+plain://127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._controller.stop()

    async def handle_DATA(self, server, session, envelope):
        if self.refuse or self.refuse_next > 0:
            self.refuse_next = max(0, self.refuse_next - 1)
            return "451 Try again later"
        with self._arrived:
            self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            self.recipients.append(list(envelope.rcpt_tos))
            self._arrived.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 20) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.messages)} mail(s) arrived, expected {count}")
                self._arrived.wait(left)
            return list(self.messages)


def token_in(message: EmailMessage) -> str:
    """The token a mail carries (in its plain-text part, on a line of its own)."""
    text = message.get_body(preferencelist=("plain",)).get_content()
    match = re.search(r"^\s*([A-Za-z0-9_-]{43})\s*$", text, re.M)
    assert match, text
    return match.group(1)


def deliver_outbox() -> int:
    """What the worker does: send every unsent outbox row; returns how many."""
    ids = db.session.scalars(select(OutboxMail.id).where(OutboxMail.sent_at.is_(None))).all()
    for mail_id in ids:
        outbox.deliver(mail_id)
    return len(ids)
