"""The outbox: a mail is a row written in the transaction that decides to send it, and a
worker sends it after the commit (never a request).

The worker locks the row, hands the mail to the SMTP server, then marks it sent and
drops its bodies (they may hold a token) in the same transaction: a mail goes out once,
or twice should the worker die between the server's acceptance and the commit. A send
that fails is retried by the task with backoff; a row whose task was lost (broker down)
is queued again by the beat task (requeue_unsent).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from flask import render_template
from sqlalchemy import select, update

from app import queue
from app.db import db
from app.mail import smtp
from app.models import OutboxMail

log = logging.getLogger(__name__)

# how long an unsent row waits for its own task before the beat task queues it again
UNSENT_GRACE = timedelta(minutes=2)
# a row that failed this many sends is left for an operator (its log lines say why)
MAX_ATTEMPTS = 10


def add(user_id: int | None, to: str, template: str, **context) -> OutboxMail:
    """Render mail/<template>.{txt,html} (the first line of the text is the subject) into
    an outbox row in the caller's transaction; queue it with dispatch() after the commit."""
    subject, _, text = render_template(f"mail/{template}.txt", **context).partition("\n")
    html = render_template(f"mail/{template}.html", subject=subject, **context)
    mail = OutboxMail(
        user_id=user_id, to_address=to, subject=subject.strip()[:200], text_body=text.lstrip(), html_body=html
    )
    db.session.add(mail)
    db.session.flush()
    return mail


def dispatch(mail: OutboxMail) -> None:
    """Ask a worker to send a committed row (if the broker is down, requeue_unsent will)."""
    queue.send(queue.SEND_MAIL, [mail.id])


def deliver(mail_id: int) -> bool:
    """Send one row unless it was sent (or another worker is sending it); True if sent
    here. SMTP and network errors propagate: the task retries them."""
    mail = db.session.scalars(
        select(OutboxMail)
        .where(OutboxMail.id == mail_id, OutboxMail.sent_at.is_(None))
        .with_for_update(skip_locked=True)
    ).first()
    if mail is None:
        db.session.rollback()
        return False
    message = smtp.build(mail.to_address, mail.subject, mail.text_body, mail.html_body)
    try:
        smtp.send(message)
    except Exception:
        db.session.rollback()
        db.session.execute(update(OutboxMail).where(OutboxMail.id == mail_id).values(attempts=OutboxMail.attempts + 1))
        db.session.commit()
        raise
    mail.sent_at = datetime.now(UTC)
    mail.attempts = OutboxMail.attempts + 1
    mail.text_body = mail.html_body = ""
    db.session.commit()
    log.info("mail sent", extra={"outbox_id": mail_id})
    return True


def requeue_unsent() -> int:
    """Queue again the rows still unsent a while after they were written; returns how many."""
    ids = db.session.scalars(
        select(OutboxMail.id)
        .where(OutboxMail.sent_at.is_(None), OutboxMail.attempts < MAX_ATTEMPTS)
        .where(OutboxMail.created_at < datetime.now(UTC) - UNSENT_GRACE)
        .order_by(OutboxMail.created_at)
        .limit(1000)
    ).all()
    db.session.rollback()
    for mail_id in ids:
        queue.send(queue.SEND_MAIL, [mail_id])
    return len(ids)
