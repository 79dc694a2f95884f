"""Every setting, read from the environment (twelve-factor).

Profiles: `production` (the default), `development` and `test`, chosen by APP_ENV.
Production refuses to start on a missing or weak secret and other unsafe settings
(check_production), so a deploy that forgets APP_ENV fails closed. Development and
test take SECRET_KEY / JWT_SECRET_KEY from the environment when set, else random ones
made once per instance folder (local_secrets).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

from sqlalchemy.pool import NullPool

PROFILES = ("production", "development", "test")
SECRET_NAMES = ("SECRET_KEY", "JWT_SECRET_KEY")
# where development and test keep their secrets, in the instance folder
LOCAL_SECRETS_FILE = "dev-secrets.json"
# the start of a development secret in this repository's history: anyone can sign tokens
# with it, so no production secret may contain it
PUBLISHED_SECRET_PREFIX = "dev-only-insecure-secret"  # noqa: S105
# OWASP's argon2id minimums (memory in KiB, passes), each with one lane; any setting at
# or above one of the rows is accepted
OWASP_ARGON2 = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))
MAX_ACCESS_TOKEN_MINUTES = 60


class ConfigError(RuntimeError):
    """A setting is missing or unsafe for the chosen profile."""


def refuse_to_start(error: ConfigError, code: int = 1) -> NoReturn:
    """End a process whose settings are refused: one line on stderr, no traceback."""
    print(f"postboard: refusing to start: {error}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def instance_dir() -> Path:
    """Flask's instance folder: INSTANCE_DIR, else instance/ beside the package."""
    return Path(os.environ.get("INSTANCE_DIR") or Path(__file__).resolve().parent.parent / "instance").absolute()


def local_secrets(folder: Path) -> dict[str, str]:
    """SECRET_KEY and JWT_SECRET_KEY for development and test: random, made on first use
    and kept in `folder` (mode 0600), so every process of one checkout signs alike and
    two checkouts never share them."""
    path = folder / LOCAL_SECRETS_FILE
    try:
        if not path.exists():
            _write_local_secrets(path)
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot make or read the development secrets in {path}: {exc}") from exc
    values = stored if isinstance(stored, dict) else {}
    if not all(isinstance(values.get(name), str) and values[name] for name in SECRET_NAMES):
        raise ConfigError(f"{path} does not hold both secrets; delete it to make new ones")
    return {name: values[name] for name in SECRET_NAMES}


def _write_local_secrets(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # written whole under another name (mkstemp makes it 0600), then linked into place:
    # processes starting together see no file or a complete one, and one link wins
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".dev-secrets-")
    try:
        with os.fdopen(fd, "w") as file:
            json.dump({name: secrets.token_urlsafe(48) for name in SECRET_NAMES}, file)
        with contextlib.suppress(FileExistsError):  # another process made them first: theirs are read
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


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
        # is found without one (db.hand_out_live_connections); on for networks
        # that drop idle connections silently
        "pool_pre_ping": _bool("DB_POOL_PRE_PING", False),
        "connect_args": connect_args,
    }


def load(overrides: dict | None = None) -> dict:
    """Build the Flask config for APP_ENV, then apply `overrides` (used by tests)."""
    env = (overrides or {}).get("APP_ENV") or os.environ.get("APP_ENV") or "production"
    if env not in PROFILES:
        raise ConfigError(f"APP_ENV must be production, development or test, got {env!r}")
    # settings derived from REDIS_URL follow an overridden one too
    redis_url = (overrides or {}).get("REDIS_URL") or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    behind_pgbouncer = _bool("DB_PGBOUNCER", False)
    cfg = {
        "APP_ENV": env,
        "TESTING": env == "test",
        "SECRET_KEY": os.environ.get("SECRET_KEY", ""),
        "SQLALCHEMY_DATABASE_URI": database_url(
            os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postboard")
        ),
        "DB_PGBOUNCER": behind_pgbouncer,
        # streaming replicas for the reads of GET requests (app/replicas.py), comma-separated
        "DATABASE_REPLICA_URLS": [
            database_url(url.strip()) for url in os.environ.get("DATABASE_REPLICA_URLS", "").split(",") if url.strip()
        ],
        "REPLICA_MAX_LAG_SECONDS": _float("REPLICA_MAX_LAG_SECONDS", 2.0),
        "REPLICA_CHECK_SECONDS": _float("REPLICA_CHECK_SECONDS", 1.0),
        "REPLICA_READ_YOUR_WRITES_SECONDS": _int("REPLICA_READ_YOUR_WRITES_SECONDS", 30),
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
        # an author with this many followers or more has their posts pulled into their
        # followers' cached feed pages (a mark checked on each read), not each page dropped
        "FEED_PULL_THRESHOLD": _int("FEED_PULL_THRESHOLD", 10_000),
        # a reader following this many accounts or more has feed pages found by walking
        # everyone's newest posts, at most FEED_WALK_SCAN of them a page (posts/service.py)
        "FEED_WALK_MIN_FOLLOWING": _int("FEED_WALK_MIN_FOLLOWING", 1_000),
        "FEED_WALK_SCAN": _int("FEED_WALK_SCAN", 10_000),
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
        # -- uploads and jobs with bounded cost
        # queued or running imports one user may have; the next upload gets 429
        "IMPORT_MAX_UNFINISHED_PER_USER": _int("IMPORT_MAX_UNFINISHED_PER_USER", 2),
        # uploads one web host reads at a time, counted in Redis across its processes (in
        # each process while Redis is down); the next gets 503 before its body is read.
        # Keep it below the host's web workers (WEB_CONCURRENCY), so others serve reads.
        "UPLOADS_IN_FLIGHT_MAX": _int("UPLOADS_IN_FLIGHT_MAX", 2),
        # a slot held by a process that died frees itself after this (above the longest upload)
        "UPLOADS_IN_FLIGHT_TTL_SECONDS": _int("UPLOADS_IN_FLIGHT_TTL_SECONDS", 120),
        # a job's result file (an export) is deleted this long after the job finished
        "JOB_RESULT_RETENTION_DAYS": _int("JOB_RESULT_RETENTION_DAYS", 7),
        # the most JSON a job's result (its report, shown on every poll) may hold
        "JOB_RESULT_MAX_BYTES": _int("JOB_RESULT_MAX_BYTES", 64 * 1024),
        "RATELIMIT_EXPORT_PER_USER": os.environ.get("RATELIMIT_EXPORT_PER_USER", "5 per hour"),
        # -- end of uploads and jobs
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
        # -- mail: on when MAIL_URL is set (smtp:// with STARTTLS, smtps:// with TLS,
        # smtp+plain:// without TLS for a local server only: production refuses it)
        "MAIL_URL": os.environ.get("MAIL_URL", ""),
        "MAIL_FROM": os.environ.get("MAIL_FROM", "Postboard <no-reply@localhost>"),
        "MAIL_TIMEOUT_SECONDS": _float("MAIL_TIMEOUT_SECONDS", 10.0),
        # the links mailed; {token} is replaced by the token (also mailed as plain text)
        "PASSWORD_RESET_URL": os.environ.get(
            "PASSWORD_RESET_URL", "http://127.0.0.1:5000/reset-password?token={token}"
        ),
        "EMAIL_VERIFY_URL": os.environ.get("EMAIL_VERIFY_URL", "http://127.0.0.1:5000/verify-email?token={token}"),
        "PASSWORD_RESET_TOKEN_MINUTES": _int("PASSWORD_RESET_TOKEN_MINUTES", 30),
        "EMAIL_VERIFY_TOKEN_HOURS": _int("EMAIL_VERIFY_TOKEN_HOURS", 48),
        # posting needs a verified email (only while mail is on: else nobody could verify)
        "REQUIRE_VERIFIED_EMAIL_TO_POST": _bool("REQUIRE_VERIFIED_EMAIL_TO_POST", False),
        "RATELIMIT_PASSWORD_RESET_PER_IP": os.environ.get("RATELIMIT_PASSWORD_RESET_PER_IP", "10 per hour"),
        "RATELIMIT_PASSWORD_RESET_PER_ADDRESS": os.environ.get("RATELIMIT_PASSWORD_RESET_PER_ADDRESS", "3 per hour"),
        "RATELIMIT_VERIFY_RESEND_PER_USER": os.environ.get("RATELIMIT_VERIFY_RESEND_PER_USER", "3 per hour"),
        # tries of mailed tokens (reset confirm, verify) per client address
        "RATELIMIT_ACCOUNT_TOKEN_PER_IP": os.environ.get("RATELIMIT_ACCOUNT_TOKEN_PER_IP", "30 per hour"),
        # rows per statement (and transaction) of an account deletion job
        "ACCOUNT_DELETE_BATCH": _int("ACCOUNT_DELETE_BATCH", 5000),
        "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", redis_url),
        # none by default: nothing reads task results (a job's outcome is its row), and a
        # result backend that is down would stall every task a request queues
        "CELERY_RESULT_BACKEND": os.environ.get("CELERY_RESULT_BACKEND") or None,
        # JWT: algorithm pinned, header only, short access tokens
        "JWT_SECRET_KEY": os.environ.get("JWT_SECRET_KEY", ""),
        "JWT_ALGORITHM": "HS256",
        "JWT_DECODE_ALGORITHMS": ["HS256"],
        "JWT_TOKEN_LOCATION": ["headers"],
        # header tokens only: no CSRF claim (it serves cookies), no `nbf` (it equals `iat`);
        # a shorter token is also faster to check (PyJWT validates it character by character)
        "JWT_COOKIE_CSRF_PROTECT": False,
        "JWT_ENCODE_NBF": False,
        # production refuses more than MAX_ACCESS_TOKEN_MINUTES
        "JWT_ACCESS_TOKEN_EXPIRES": timedelta(minutes=_int("JWT_ACCESS_TOKEN_MINUTES", 15)),
        "JWT_REFRESH_TOKEN_EXPIRES": timedelta(days=_int("JWT_REFRESH_TOKEN_DAYS", 30)),
        "JWT_ERROR_MESSAGE_KEY": "detail",
        # how long a process trusts its memo that an account is active (no PostgreSQL round
        # trip per request); an account changed through the API or the CLI is refused at
        # once, one changed by hand in SQL within this many seconds
        "ACCOUNT_RECHECK_SECONDS": _int("ACCOUNT_RECHECK_SECONDS", 60),
        # argon2id cost: OWASP's recommended row (19 MiB, 2 passes, 1 lane) by default;
        # production refuses less than every row of OWASP's table (OWASP_ARGON2). A hash
        # made with other parameters is made again at the next login.
        "ARGON2_TIME_COST": _int("ARGON2_TIME_COST", 2),
        "ARGON2_MEMORY_COST": _int("ARGON2_MEMORY_COST", 19456),
        "ARGON2_PARALLELISM": _int("ARGON2_PARALLELISM", 1),
        # password hashes (login, registration, password change) one web process runs at
        # once; up to PASSWORD_HASH_WAITERS_PER_PROCESS more wait, each up to
        # PASSWORD_HASH_WAIT_SECONDS, and the rest get 503 with Retry-After. Keep the two
        # together below the process's threads (WEB_THREADS): the others serve the rest.
        "PASSWORD_HASHES_PER_PROCESS": _int("PASSWORD_HASHES_PER_PROCESS", 1),
        "PASSWORD_HASH_WAITERS_PER_PROCESS": _int("PASSWORD_HASH_WAITERS_PER_PROCESS", 5),
        "PASSWORD_HASH_WAIT_SECONDS": _float("PASSWORD_HASH_WAIT_SECONDS", 5.0),
        # the niceness of the threads that hash (Linux; 0 keeps the process's priority)
        "PASSWORD_HASH_NICE": _int("PASSWORD_HASH_NICE", 10),
        "MAX_CONTENT_LENGTH": _int("MAX_CONTENT_LENGTH", 1024 * 1024),
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
        # flask-smorest / OpenAPI
        "API_TITLE": "Postboard API",
        "API_VERSION": "v1",
        "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/",
        "OPENAPI_JSON_PATH": "openapi.json",
        "OPENAPI_SWAGGER_UI_PATH": "/docs",
        # by default the app serves the assets itself, from the flask-swagger-ui package
        # (app/openapi.py), so /docs needs no CDN
        "OPENAPI_SWAGGER_UI_URL": os.environ.get("SWAGGER_UI_URL") or "/docs/assets/",
    }
    if env == "test":
        # cheap hashing keeps the suite fast; the production cost is set above
        cfg.update(ARGON2_TIME_COST=1, ARGON2_MEMORY_COST=8, ARGON2_PARALLELISM=1)
    cfg.update(overrides or {})
    if problems := replica_problems(cfg):
        raise ConfigError("; ".join(problems))
    if env == "production":
        check_production(cfg)
    elif not all(cfg[name] for name in SECRET_NAMES):
        made = local_secrets(instance_dir())
        cfg.update({name: cfg[name] or made[name] for name in SECRET_NAMES})
    return cfg


def check_production(cfg: dict) -> None:
    """Refuse to run production on weak secrets or other unsafe settings, naming them all."""
    problems = [problem for name in SECRET_NAMES for problem in _secret_problems(name, cfg.get(name) or "")]
    if cfg.get("SECRET_KEY") and cfg["SECRET_KEY"] == cfg.get("JWT_SECRET_KEY"):
        problems.append("SECRET_KEY and JWT_SECRET_KEY must differ")
    if "*" in cfg["CORS_ORIGINS"]:
        problems.append("CORS_ORIGINS must name the allowed origins, not *")
    lifetime, longest = cfg["JWT_ACCESS_TOKEN_EXPIRES"], timedelta(minutes=MAX_ACCESS_TOKEN_MINUTES)
    if not (isinstance(lifetime, timedelta) and timedelta(0) < lifetime <= longest):
        problems.append(f"JWT_ACCESS_TOKEN_MINUTES must be between 1 and {MAX_ACCESS_TOKEN_MINUTES}")
    memory, passes, lanes = cfg["ARGON2_MEMORY_COST"], cfg["ARGON2_TIME_COST"], cfg["ARGON2_PARALLELISM"]
    if lanes < 1 or not any(memory >= m and passes >= t for m, t in OWASP_ARGON2):
        problems.append(
            f"ARGON2_MEMORY_COST={memory} ARGON2_TIME_COST={passes} ARGON2_PARALLELISM={lanes} is below"
            " OWASP's minimum (19456 KiB, 2 passes, 1 lane, or an equivalent row)"
        )
    problems += [f"{name} must be set" for name in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(name)]
    problems += _mail_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems) + " (APP_ENV=production, the default profile)")


# how long a deleted cache entry refuses to be filled again (app/cache.py)
CACHE_TOMBSTONE_SECONDS = 5


def replica_problems(cfg: dict) -> list[str]:
    """A replica may serve a cache fill only while the tombstone of a write outlasts how
    stale it can be: its lag limit plus one check interval."""
    if not cfg["DATABASE_REPLICA_URLS"]:
        return []
    if cfg["REPLICA_MAX_LAG_SECONDS"] + cfg["REPLICA_CHECK_SECONDS"] >= CACHE_TOMBSTONE_SECONDS:
        return [
            f"REPLICA_MAX_LAG_SECONDS + REPLICA_CHECK_SECONDS must stay under {CACHE_TOMBSTONE_SECONDS}"
            " (a replica further behind could put a deleted cache entry back)"
        ]
    return []


def _mail_problems(cfg: dict) -> list[str]:
    """Mail settings production refuses: mail in clear text, links without a token or https."""
    if not cfg["MAIL_URL"]:
        return []
    problems = []
    scheme = cfg["MAIL_URL"].split("://", 1)[0] if "://" in cfg["MAIL_URL"] else ""
    if scheme not in ("smtp", "smtps"):
        problems.append("MAIL_URL must start with smtp:// (STARTTLS) or smtps:// (TLS)")
    for name in ("PASSWORD_RESET_URL", "EMAIL_VERIFY_URL"):
        if not cfg[name].startswith("https://") or "{token}" not in cfg[name]:
            problems.append(f"{name} must be an https:// URL containing {{token}}")
    if not os.environ.get("MAIL_FROM"):
        problems.append("MAIL_FROM must be set when MAIL_URL is")
    return problems


def _secret_problems(name: str, value: str) -> list[str]:
    if not value:
        return [f"{name} must be set"]
    if PUBLISHED_SECRET_PREFIX in value:
        return [f"{name} contains the development secret published in this repository"]
    if len(value) < 32 or len(set(value)) < 10:
        return [f"{name} must be a random value of at least 32 characters, 10 of them different"]
    return []
