"""The WSGI entry point: gunicorn (`wsgi:app`) and `flask` (FLASK_APP=wsgi) load it."""

from app import create_app

app = create_app()
