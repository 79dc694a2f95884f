"""The app's Redis clients (the main one, and the cache's when CACHE_REDIS_URL differs)."""

from __future__ import annotations

import redis
from flask import current_app
from redis.backoff import NoBackoff
from redis.retry import Retry


class CountingConnection(redis.Connection):
    """A Redis connection that counts (re)connects, process-wide.

    redis-py quietly replaces a pooled connection the server closed, so a Redis restart
    raises no error a caller could see; a new connection is the sign. The revocation
    check re-reads the server's run_id whenever this count has moved.
    """

    connects = 0

    def on_connect_check_health(self, *args, **kwargs):
        # redis-py 7 runs this after every (re)connect (on_connect is not always called)
        super().on_connect_check_health(*args, **kwargs)
        CountingConnection.connects += 1


class RedisStore:
    """The app's Redis client, with short timeouts so a hung Redis never hangs a request.

    One client (and connection pool) per app, kept in app.extensions like the others.
    """

    def init_app(self, app) -> None:
        app.extensions["redis"] = self._connect(app, app.config["REDIS_URL"])
        # the cache may live on another Redis (CACHE_REDIS_URL); else it shares the client
        cache_url = app.config["CACHE_REDIS_URL"]
        same = cache_url == app.config["REDIS_URL"]
        app.extensions["cache_redis"] = app.extensions["redis"] if same else self._connect(app, cache_url)

    @staticmethod
    def _connect(app, url: str) -> redis.Redis:
        timeout = app.config["REDIS_SOCKET_TIMEOUT"]
        tcp = {"connection_class": CountingConnection} if url.startswith("redis://") else {}
        return redis.Redis.from_url(
            url,
            **tcp,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            # no silent retry: a dropped connection is how a Redis restart shows itself
            # (the revocation check then re-reads the server's run_id); callers fall back
            retry=Retry(NoBackoff(), 0),
        )

    @property
    def client(self) -> redis.Redis:
        return current_app.extensions["redis"]


redis_store = RedisStore()
