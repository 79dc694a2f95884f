"""Every setting, read from the environment (twelve-factor).

Profiles: `development` (default), `test` and `production`, chosen by APP_ENV.
Development defaults are safe to run on a laptop; production refuses to start with a
missing or development secret.
"""

from __future__ import annotations

import os
from datetime import timedelta

# development-only default, refused by the production profile
DEV_SECRET = "dev-only-insecure-secret-change-me-0000000000"  # noqa: S105


class ConfigError(RuntimeError):
    """A setting is missing or unsafe for the chosen profile."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw) if raw not in (None, "") else default
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw not in (None, "") else default
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _bool(name: str, default: bool) -> bool:
    raw = (os.environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in _TRUE | _FALSE:
        raise ConfigError(f"{name} must be true or false, got {os.environ[name]!r}")
    return raw in _TRUE


def database_url(raw: str) -> str:
    """Accept the Heroku-style `postgres://` scheme and pin the psycopg (3) driver."""
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def engine_options(behind_pgbouncer: bool) -> dict:
    """SQLAlchemy engine settings: our own pool, or none behind PgBouncer.

    In PgBouncer's transaction pooling a server connection serves another client after
    every transaction, so nothing may rely on session state: no client-side pool (PgBouncer
    is the pool) and no startup `options` (PgBouncer refuses them; set statement_timeout
    on the database role instead: ALTER ROLE ... SET statement_timeout = '15s').
    """
    connect_args = {
        "connect_timeout": _int("DB_CONNECT_TIMEOUT", 3),
        "application_name": os.environ.get("DB_APPLICATION_NAME", "postboard"),
    }
    if behind_pgbouncer:
        from sqlalchemy.pool import NullPool

        # a statement prepared on one server connection is unknown on the next
        # (PgBouncer 1.21+ can track them: max_prepared_statements; 1.18 cannot)
        connect_args["prepare_threshold"] = None
        return {"poolclass": NullPool, "connect_args": connect_args}
    # a runaway query never holds a connection past the request budget
    connect_args["options"] = f"-c statement_timeout={_int('DB_STATEMENT_TIMEOUT_MS', 15000)}"
    return {
        "pool_size": _int("DB_POOL_SIZE", 10),
        "max_overflow": _int("DB_MAX_OVERFLOW", 10),
        "pool_timeout": _int("DB_POOL_TIMEOUT", 5),
        "pool_recycle": _int("DB_POOL_RECYCLE", 1800),
        # a ping (a round trip) per checkout; off by default: a connection the server ended
        # is found without one (extensions.hand_out_live_connections); on for networks
        # that drop idle connections silently
        "pool_pre_ping": _bool("DB_POOL_PRE_PING", False),
        "connect_args": connect_args,
    }


def load(overrides: dict | None = None) -> dict:
    """Build the Flask config for APP_ENV, then apply `overrides` (used by tests)."""
    env = (overrides or {}).get("APP_ENV") or os.environ.get("APP_ENV", "development")
    if env not in {"development", "test", "production"}:
        raise ConfigError(f"APP_ENV must be development, test or production, got {env!r}")
    # settings derived from REDIS_URL follow an overridden one too
    redis_url = (overrides or {}).get("REDIS_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    behind_pgbouncer = _bool("DB_PGBOUNCER", False)
    cfg = {
        "APP_ENV": env,
        "TESTING": env == "test",
        "SECRET_KEY": os.environ.get("SECRET_KEY", DEV_SECRET),
        "SQLALCHEMY_DATABASE_URI": database_url(
            os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postboard")
        ),
        "DB_PGBOUNCER": behind_pgbouncer,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(behind_pgbouncer),
        "SQLALCHEMY_RECORD_QUERIES": False,
        "SQLALCHEMY_TRACK_MODIFICATIONS": False,
        "REDIS_URL": redis_url,
        "REDIS_SOCKET_TIMEOUT": _float("REDIS_SOCKET_TIMEOUT", 0.5),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO").upper(),
        # json (one object per line, for log shippers) or text (for a terminal)
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "json"),
        # /metrics answers only with `Authorization: Bearer <METRICS_TOKEN>`; off when unset
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN", ""),
        # the profile/post cache: may be its own Redis (an LRU one) in production
        "CACHE_REDIS_URL": os.environ.get("CACHE_REDIS_URL", redis_url),
        "CACHE_TTL_SECONDS": _int("CACHE_TTL_SECONDS", 300),
        # the room (bytes) for each process's copies of entries it has read, dropped when Redis
        # reports a change; 0 turns them off (a Redis, proxy or cluster without CLIENT TRACKING)
        "CACHE_LOCAL_MAX_BYTES": _int("CACHE_LOCAL_MAX_BYTES", 16 * 1024 * 1024),
        # the longest a copy is kept, should the connection that reports changes die unseen
        "CACHE_LOCAL_TTL_SECONDS": _int("CACHE_LOCAL_TTL_SECONDS", 60),
        # jobs: a running job whose heartbeat is older than this is presumed dead
        "JOB_STALE_SECONDS": _int("JOB_STALE_SECONDS", 120),
        "JOB_REAPER_INTERVAL_SECONDS": _int("JOB_REAPER_INTERVAL_SECONDS", 30),
        "IMPORT_MAX_BYTES": _int("IMPORT_MAX_BYTES", 64 * 1024 * 1024),
        "IMPORT_MAX_LINES": _int("IMPORT_MAX_LINES", 100_000),
        # number of proxies in front of the app whose X-Forwarded-For / -Proto to trust
        "TRUSTED_PROXY_COUNT": _int("TRUSTED_PROXY_COUNT", 0),
        "CORS_ORIGINS": [o.strip() for o in os.environ.get("CORS_ORIGINS", "").split(",") if o.strip()],
        # rate limits (Flask-Limiter on Redis; in memory per process while Redis is down)
        "RATELIMIT_ENABLED": _bool("RATELIMIT_ENABLED", True),
        "RATELIMIT_STORAGE_URI": os.environ.get("RATELIMIT_STORAGE_URI", redis_url),
        "RATELIMIT_STORAGE_OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_HEADERS_ENABLED": True,
        "RATELIMIT_KEY_PREFIX": "ratelimit",
        "RATELIMIT_LOGIN_PER_IP": os.environ.get("RATELIMIT_LOGIN_PER_IP", "30 per minute"),
        "RATELIMIT_REGISTER_PER_IP": os.environ.get("RATELIMIT_REGISTER_PER_IP", "10 per hour"),
        "RATELIMIT_REFRESH_PER_SESSION": os.environ.get("RATELIMIT_REFRESH_PER_SESSION", "10 per minute"),
        "RATELIMIT_PASSWORD_PER_USER": os.environ.get("RATELIMIT_PASSWORD_PER_USER", "5 per minute"),
        "RATELIMIT_IMPORT_PER_USER": os.environ.get("RATELIMIT_IMPORT_PER_USER", "20 per hour"),
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", redis_url),
        # none by default: nothing reads task results (a job's outcome is its row), and a
        # result backend that is down would stall every task a request queues
        "CELERY_RESULT_BACKEND": os.environ.get("CELERY_RESULT_BACKEND") or None,
        # JWT: algorithm pinned, header only, short access tokens
        "JWT_SECRET_KEY": os.environ.get("JWT_SECRET_KEY", DEV_SECRET),
        "JWT_ALGORITHM": "HS256",
        "JWT_DECODE_ALGORITHMS": ["HS256"],
        "JWT_TOKEN_LOCATION": ["headers"],
        # header tokens only: no CSRF claim (it serves cookies), no `nbf` (it equals `iat`);
        # a shorter token is also faster to check (PyJWT validates it character by character)
        "JWT_COOKIE_CSRF_PROTECT": False,
        "JWT_ENCODE_NBF": False,
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(minutes=_int("JWT_ACCESS_TOKEN_MINUTES", 15)),
        "JWT_REFRESH_TOKEN_EXPIRES": timedelta(days=_int("JWT_REFRESH_TOKEN_DAYS", 30)),
        "JWT_ERROR_MESSAGE_KEY": "detail",
        # argon2id cost; OWASP's minimum is m=19 MiB, t=2, p=1
        "ARGON2_TIME_COST": _int("ARGON2_TIME_COST", 3),
        "ARGON2_MEMORY_COST": _int("ARGON2_MEMORY_COST", 65536),
        "ARGON2_PARALLELISM": _int("ARGON2_PARALLELISM", 2),
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 1024 * 1024),
        "PAGE_DEFAULT_LIMIT": 20,
        "PAGE_MAX_LIMIT": 100,
        "RETRY_AFTER_SECONDS": _int("RETRY_AFTER_SECONDS", 5),
        # login limits: tight per account (a username and its email are one) and client
        # address, so guessing from one address does not lock the owner out elsewhere; a
        # looser ceiling per account from every address together against spread guessing
        "RATELIMIT_LOGIN_PER_ACCOUNT_IP": os.environ.get("RATELIMIT_LOGIN_PER_ACCOUNT_IP", "5 per minute"),
        "RATELIMIT_LOGIN_PER_ACCOUNT": os.environ.get("RATELIMIT_LOGIN_PER_ACCOUNT", "50 per hour"),
        # full-text search (GET /posts?q=): the longest one may run (then 503), and a
        # limit per client address on requests with `q` (the plain list is not limited)
        "SEARCH_STATEMENT_TIMEOUT_MS": _int("SEARCH_STATEMENT_TIMEOUT_MS", 2000),
        "RATELIMIT_SEARCH_PER_IP": os.environ.get("RATELIMIT_SEARCH_PER_IP", "60 per minute"),
        "JSON_SORT_KEYS": False,
        # flask-smorest / OpenAPI
        "API_TITLE": "Postboard API",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "/docs",
        "OPENAPI_SWAGGER_UI_URL": os.environ.get("SWAGGER_UI_URL", "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"),
    }
    if env == "test":
        # cheap hashing keeps the suite fast; the production cost is set above
        cfg.update(ARGON2_TIME_COST=1, ARGON2_MEMORY_COST=8, ARGON2_PARALLELISM=1)
    cfg.update(overrides or {})
    if env == "production":
        check_production(cfg)
    return cfg


def check_production(cfg: dict) -> None:
    """Refuse to run production on development or weak secrets."""
    for key in ("SECRET_KEY", "JWT_SECRET_KEY"):
        value = cfg.get(key) or ""
        if value == DEV_SECRET or len(value) < 32:
            raise ConfigError(f"{key} must be set to a random value of at least 32 characters in production")
    if cfg["SECRET_KEY"] == cfg["JWT_SECRET_KEY"]:
        raise ConfigError("SECRET_KEY and JWT_SECRET_KEY must differ in production")
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        raise ConfigError("DATABASE_URL and REDIS_URL must be set in production")
