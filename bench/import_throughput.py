"""Import throughput: the job's import of N posts beside a raw PostgreSQL COPY of the same
rows, on the same server. Run with `make bench-import` (N defaults to 100,000).

It writes into the database in DATABASE_URL (the embedded one under `make`), as a fresh
throwaway user, and removes that user and its posts afterwards. It runs the development
profile (secrets from SECRET_KEY / JWT_SECRET_KEY or instance/): it signs no token.
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid

from sqlalchemy import delete, text

from app.db import db
from app.factory import create_app
from app.jobs import service as jobs
from app.models import User
from app.posts import imports


def main(lines: int) -> None:
    app = create_app({"APP_ENV": "development"})
    with app.app_context():
        name = f"bench_{uuid.uuid4().hex[:8]}"
        # "!" is no argon2 hash: nobody can log in as this user
        user = User(username=name, email=f"{name}@example.com", password_hash="!", display_name=name)  # noqa: S106
        db.session.add(user)
        db.session.commit()
        rows = [(f"ext-{i}", f"Imported post number {i}", f"Body of post {i}, a line of text.") for i in range(lines)]
        content = "\n".join(json.dumps({"external_id": e, "title": t, "body": b}) for e, t, b in rows).encode()
        try:
            started = time.perf_counter()
            job = imports.start(user.id, io.BytesIO(content), "bench.jsonl", "", None, queue=False)
            status = jobs.run(job.id)
            job_seconds = time.perf_counter() - started
            assert status == "succeeded", status

            db.session.execute(text("DELETE FROM posts WHERE author_id = :id"), {"id": user.id})
            db.session.commit()
            buffer = io.StringIO("".join(f"{user.id}\t{e}\t{t}\t{b}\n" for e, t, b in rows))
            raw = db.engine.raw_connection()
            try:
                started = time.perf_counter()
                copy_sql = "COPY posts (author_id, external_id, title, body) FROM STDIN"
                with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:
                    copy.write(buffer.getvalue())
                raw.commit()
                copy_seconds = time.perf_counter() - started
            finally:
                raw.close()
        finally:
            db.session.rollback()
            db.session.execute(delete(User).where(User.id == user.id))
            db.session.commit()
    print("| what | lines | seconds | lines/s |\n|---|---:|---:|---:|")
    for what, seconds in (
        ("import job (validate, INSERT ... ON CONFLICT per 5,000)", job_seconds),
        ("raw COPY of the same rows", copy_seconds),
    ):
        print(f"| {what} | {lines} | {seconds:.2f} | {lines / seconds:,.0f} |")
    print(f"import runs at {copy_seconds / job_seconds:.0%} of COPY's speed")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
