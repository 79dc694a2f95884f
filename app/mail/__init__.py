"""Mail: rendered into the outbox in a request, sent by a worker (app/mail/outbox.py)."""
