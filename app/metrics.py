"""Prometheus metrics at /metrics, behind a bearer token (METRICS_TOKEN; off when unset).

Per-process numbers (requests, latency, pool use) are aggregated across gunicorn workers
with prometheus-client's multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (the
gunicorn config sets it). Shared numbers (cache hits and misses, jobs by status) are read
from Redis and PostgreSQL when scraped.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError
from sqlalchemy import event, func, select
from sqlalchemy.exc import SQLAlchemyError

from app import cache
from app.db import db
from app.errors import problem
from app.models import Job, JobStatus

log = logging.getLogger(__name__)

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POOL_CHECKED_OUT = Gauge("db_pool_checked_out", "Connections in use", multiprocess_mode="livesum")
POOL_CONNECTIONS = Gauge("db_pool_connections", "Connections open (in use or idle)", multiprocess_mode="livesum")
POOL_SIZE = Gauge("db_pool_size", "Configured pool size per process", multiprocess_mode="max")
POOL_MAX_OVERFLOW = Gauge("db_pool_max_overflow", "Configured overflow per process", multiprocess_mode="max")
POOL_TIMEOUTS = Counter("db_pool_timeouts_total", "Requests that found no free connection in time (503)")


class SharedStateCollector:
    """Numbers every process shares, read at scrape time."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        with self.app.app_context():
            try:
                numbers = cache.stats()
            except RedisError as exc:
                log.warning("metrics: no cache numbers this scrape (%s)", exc)
            else:
                for name, key in (("cache_hits", "hits"), ("cache_misses", "misses")):
                    family = CounterMetricFamily(name, f"Profile/post cache {key}")
                    family.add_metric([], numbers[key])
                    yield family
            # the backlog only (a partial index serves it); finished jobs grow without end
            jobs = GaugeMetricFamily("jobs", "Unfinished jobs by status", labels=["status"])
            try:
                counts = dict(
                    db.session.execute(
                        select(Job.status, func.count())
                        .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                        .group_by(Job.status)
                    ).all()
                )
            except SQLAlchemyError as exc:  # PostgreSQL down: the HTTP numbers matter most now
                db.session.rollback()
                log.warning("metrics: no job numbers this scrape (%s)", exc)
            else:
                for status in (JobStatus.QUEUED, JobStatus.RUNNING):
                    jobs.add_metric([status.value], counts.get(status.value, 0))
                yield jobs


def _watch_pool(app: Flask) -> None:
    with app.app_context():
        engine = db.engine
    options = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    POOL_SIZE.set(options.get("pool_size", 0))
    POOL_MAX_OVERFLOW.set(options.get("max_overflow", 0))
    event.listen(engine, "checkout", lambda *_: POOL_CHECKED_OUT.inc())
    event.listen(engine, "checkin", lambda *_: POOL_CHECKED_OUT.dec())
    event.listen(engine, "connect", lambda *_: POOL_CONNECTIONS.inc())
    event.listen(engine, "close", lambda *_: POOL_CONNECTIONS.dec())


def init_metrics(app: Flask) -> None:
    _watch_pool(app)

    # the labelled series, looked up once each (routes and statuses are few)
    requests: dict[tuple, Counter] = {}
    latencies: dict[tuple, Histogram] = {}

    @app.after_request
    def _count(response):
        key = (request.method, request.url_rule.rule if request.url_rule else "unmatched")
        counted = (*key, str(response.status_code))
        if counted not in requests:
            requests[counted] = REQUESTS.labels(*counted)
        requests[counted].inc()
        started = g.get("started")  # set by the request-id hook in create_app
        if started is not None:
            if key not in latencies:
                latencies[key] = LATENCY.labels(*key)
            latencies[key].observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics():
        token = current_app.config["METRICS_TOKEN"]
        if not token:
            return problem(404, "Metrics are off; set METRICS_TOKEN to turn them on.")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return problem(401, "A bearer token is required.", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        shared = CollectorRegistry()
        shared.register(SharedStateCollector(current_app._get_current_object()))
        return Response(generate_latest(registry) + generate_latest(shared), mimetype=CONTENT_TYPE_LATEST)
