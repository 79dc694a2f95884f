"""`make bench`'s data set is the seeded one at the start of every run (bench/run.py
seed): reused while it is, seeded again when a stopped run left follows behind."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

import bench.run as bench
from app.db import db

pytestmark = [pytest.mark.no_transaction, pytest.mark.system]  # runs the flask CLI


def follows_count(app) -> int:
    with app.app_context():
        count = db.session.scalar(text("SELECT count(*) FROM follows"))
        db.session.rollback()
    return count


def test_a_data_set_whose_follows_are_not_the_seeds_is_seeded_again(app, committed, test_db_url, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "USERS", 4)
    monkeypatch.setattr(bench, "POSTS", 1)
    monkeypatch.setattr(bench, "FOLLOWS", 1)
    env = {**os.environ, "FLASK_APP": "wsgi:app", "DATABASE_URL": test_db_url.render_as_string(hide_password=False)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)

    password = bench.seed(env)
    seeded = follows_count(app)
    assert seeded > 0 and (tmp_path / ".bench-follows").read_text() == str(seeded)
    assert bench.seed(env) == password  # as seeded: reused

    with app.app_context():  # a run stopped after its follows: a pair left followed
        db.session.execute(
            text(
                "INSERT INTO follows (follower_id, followed_id) SELECT a.id, b.id FROM users a, users b"
                " WHERE a.id <> b.id ON CONFLICT DO NOTHING"
            )
        )
        db.session.commit()
    assert follows_count(app) > seeded

    again = bench.seed(env)
    assert again != password
    assert follows_count(app) == seeded
    with app.app_context():
        assert db.session.scalar(text("SELECT count(*) FROM users")) == 4
        db.session.rollback()
