"""Mail: an outbox row, sent by the worker's service through a real SMTP server, once."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from app.db import db
from app.mail import outbox, smtp
from app.models import OutboxMail
from tests.support.factories import UserFactory


def _queued_mail(user=None) -> OutboxMail:
    user = user or UserFactory()
    mail = outbox.add(
        user.id, user.email, "password_reset", username=user.username, token="T" * 43, link="https://x/?t=1", minutes=30
    )
    db.session.commit()
    return mail


def test_a_mail_goes_out_once_with_a_text_and_an_html_part(app, mail_on):
    user = UserFactory(username="mailee")
    mail = _queued_mail(user)
    assert outbox.deliver(mail.id) is True
    assert outbox.deliver(mail.id) is False  # a second delivery of the task sends nothing
    (message,) = mail_on.wait_for(1)
    assert mail_on.recipients == [[user.email]]
    assert message["Subject"] == "Reset your Postboard password"
    assert message["From"] == app.config["MAIL_FROM"]
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert "Hello mailee" in text and "T" * 43 in text and "https://x/?t=1" in text
    assert '<a href="https://x/?t=1">' in html and "T" * 43 in html
    db.session.refresh(mail)
    # sent, and the bodies (which may hold a token) are gone from the database
    assert mail.sent_at is not None and mail.attempts == 1
    assert (mail.text_body, mail.html_body) == ("", "")


def test_html_in_the_context_is_escaped_in_the_html_part(app, mail_on):
    user = UserFactory(username="x")
    mail = outbox.add(
        user.id, user.email, "verify_email", username="<b>x</b>", email="a@b.c", token="t", link="l", hours=1
    )
    db.session.commit()
    outbox.deliver(mail.id)
    (message,) = mail_on.wait_for(1)
    assert "&lt;b&gt;x&lt;/b&gt;" in message.get_body(preferencelist=("html",)).get_content()


def test_a_refused_send_raises_for_the_retry_and_counts_the_attempt(app, mail_on):
    mail = _queued_mail()
    mail_on.refuse = True
    with pytest.raises(smtplib.SMTPException):
        outbox.deliver(mail.id)
    db.session.refresh(mail)
    assert (mail.sent_at, mail.attempts) == (None, 1)
    mail_on.refuse = False
    assert outbox.deliver(mail.id) is True
    assert len(mail_on.wait_for(1)) == 1


def test_a_server_that_is_down_raises_for_the_retry(app, mail_on, monkeypatch):
    mail_on.stop()
    mail = _queued_mail()
    with pytest.raises(OSError):
        outbox.deliver(mail.id)
    db.session.refresh(mail)
    assert mail.sent_at is None


def test_unsent_mail_whose_task_was_lost_is_queued_again(app, mail_on, monkeypatch):
    old, fresh, done = _queued_mail(), _queued_mail(), _queued_mail()
    outbox.deliver(done.id)
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    db.session.execute(update(OutboxMail).where(OutboxMail.id.in_([old.id, done.id])).values(created_at=long_ago))
    db.session.commit()
    sent = []
    monkeypatch.setattr("app.queue.send", lambda name, args=None, **_: sent.append((name, args)) or True)
    assert outbox.requeue_unsent() == 1
    assert sent == [("worker.tasks.send_mail", [old.id])]
    assert fresh.id not in [args[0] for _, args in sent]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://u%40x:p%3Aw@mail.example.com:2525", ("smtp", "mail.example.com", 2525, "u@x", "p:w")),
        ("smtps://mail.example.com", ("smtps", "mail.example.com", 465, None, None)),
        ("smtp://mail.example.com", ("smtp", "mail.example.com", 587, None, None)),
        ("smtp+plain://127.0.0.1:8025", ("smtp+plain", "127.0.0.1", 8025, None, None)),
    ],
)
def test_mail_url_forms(url, expected):
    server = smtp.server(url)
    assert (server.scheme, server.host, server.port, server.user, server.password) == expected


@pytest.mark.parametrize("url", ["http://mail.example.com", "smtp://", "mail.example.com"])
def test_a_mail_url_that_is_not_smtp_is_refused(url):
    with pytest.raises(smtp.MailNotConfigured):
        smtp.server(url)


def test_smtp_insists_on_starttls(app, mail_on, monkeypatch):
    """smtp:// never falls back to clear text: the test server offers no STARTTLS."""
    monkeypatch.setitem(app.config, "MAIL_URL", mail_on.url.replace("smtp+plain://", "smtp://"))
    mail = _queued_mail()
    with pytest.raises(smtplib.SMTPNotSupportedError):
        outbox.deliver(mail.id)
    assert mail_on.messages == []
