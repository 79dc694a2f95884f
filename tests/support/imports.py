"""Imports through the API: the upload request, its job run inline, and what it wrote."""

from __future__ import annotations

import io
import json

from sqlalchemy import func, select

from app.db import db
from app.jobs import service as jobs
from app.models import Post

IMPORT = "/api/v1/posts/import"
EXPORT = "/api/v1/users/me/export"
PROBLEM = "application/problem+json"


def jsonl(*records) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records).encode()


def upload(client, headers, content: bytes, name: str = "posts.jsonl", **form):
    return client.post(
        IMPORT, data={"file": (io.BytesIO(content), name), **form}, headers=headers, content_type="multipart/form-data"
    )


def run_job(client, headers, response) -> dict:
    assert response.status_code == 202, response.get_json()
    location = response.headers["Location"]
    assert location == f"/api/v1/jobs/{response.get_json()['id']}"
    assert response.get_json()["status"] == "queued"
    jobs.run(response.get_json()["id"])
    return client.get(location, headers=headers).get_json()


def posts_of(user_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(Post).where(Post.author_id == user_id))


def good(i: int) -> dict:
    """A line every import accepts."""
    return {"external_id": f"g{i}", "title": f"Good {i}", "body": "Fine."}
