"""The ceiling: a bare Flask JSON endpoint, served by the same gunicorn settings."""

from flask import Flask

app = Flask(__name__)


@app.get("/ping")
def ping():
    return {"status": "ok"}
