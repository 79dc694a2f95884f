"""Mail through a real Celery worker to a real SMTP server: sent after the commit, retried
with backoff while the server refuses, and sent once."""

from __future__ import annotations

import time

import pytest

from app import queue
from app.db import db
from app.mail import outbox
from app.models import OutboxMail
from tests.support.factories import UserFactory
from tests.support.processes import Worker, service_env


@pytest.mark.no_transaction
def test_the_worker_sends_a_mail_retrying_while_the_server_refuses(app, committed, test_db_url, tmp_path, smtp_server):
    smtp_server.refuse_next = 2
    worker = Worker(
        service_env(app, test_db_url, MAIL_URL=smtp_server.url), tmp_path / "short.log", queues=[queue.SHORT]
    )
    try:
        worker.wait_ready()
        with app.app_context():
            user = UserFactory()
            mail = outbox.add(
                user.id, user.email, "verify_email", username="u", email="e", token="t", link="l", hours=1
            )
            db.session.commit()
            outbox.dispatch(mail)
            mail_id = mail.id
        (message,) = smtp_server.wait_for(1, timeout=30)  # the third try, after two backoffs
        assert message["Subject"] == "Confirm your email address for Postboard"
        time.sleep(1)
        assert len(smtp_server.messages) == 1
        with app.app_context():
            sent = db.session.get(OutboxMail, mail_id)
            assert sent.sent_at is not None and sent.attempts == 3
            db.session.rollback()
        assert "Retry in" in worker.log()
    finally:
        worker.stop()
