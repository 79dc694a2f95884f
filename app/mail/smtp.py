"""One mail to the SMTP server MAIL_URL names.

`smtp://user:pass@host:587` speaks STARTTLS and refuses a server that does not offer it
(no silent fall back to clear text); `smtps://host:465` is TLS from the first byte;
`smtp+plain://host:port` is clear text, for a server on this machine (production
refuses it). User and password are URL-decoded.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import unquote, urlsplit

from flask import current_app

DEFAULT_PORTS = {"smtp": 587, "smtps": 465, "smtp+plain": 25}


class MailNotConfigured(RuntimeError):
    """MAIL_URL is empty or not an SMTP URL."""


@dataclass(frozen=True)
class Server:
    scheme: str
    host: str
    port: int
    user: str | None
    password: str | None


def server(url: str) -> Server:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise MailNotConfigured("MAIL_URL must be smtp://, smtps:// or smtp+plain:// with a host")
    return Server(
        parts.scheme,
        parts.hostname,
        parts.port or DEFAULT_PORTS[parts.scheme],
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


def enabled() -> bool:
    return bool(current_app.config["MAIL_URL"])


def build(to: str, subject: str, text: str, html: str) -> EmailMessage:
    """A multipart/alternative mail: the plain text first, the HTML as the richer part."""
    message = EmailMessage()
    message["From"] = current_app.config["MAIL_FROM"]
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="postboard")
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def send(message: EmailMessage) -> None:
    """Hand the mail to the server; raises smtplib.SMTPException or OSError when it does
    not take it (the caller retries)."""
    target = server(current_app.config["MAIL_URL"])
    timeout = current_app.config["MAIL_TIMEOUT_SECONDS"]
    context = ssl.create_default_context()
    if target.scheme == "smtps":
        connection = smtplib.SMTP_SSL(target.host, target.port, timeout=timeout, context=context)
    else:
        connection = smtplib.SMTP(target.host, target.port, timeout=timeout)
    with connection:
        if target.scheme == "smtp":
            connection.starttls(context=context)  # SMTPNotSupportedError when not offered
        if target.user:
            connection.login(target.user, target.password or "")
        connection.send_message(message)
