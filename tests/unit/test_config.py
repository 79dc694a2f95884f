"""Settings from the environment; production (the default profile) refuses unsafe ones;
development and test make their own secrets once per instance folder."""

from __future__ import annotations

import json
import secrets
import stat
import threading
from pathlib import Path

import pytest

from app import config
from app.config import ConfigError
from app.factory import create_app

# the development secret in this repository's history: anyone can sign tokens with it
PUBLISHED_DEV_SECRET = "dev-only-insecure-secret-change-me-0000000000"
STRONG_A = secrets.token_urlsafe(40)
STRONG_B = secrets.token_urlsafe(40)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def production_env(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    for name in (
        "CORS_ORIGINS",
        "JWT_ACCESS_TOKEN_MINUTES",
        "ARGON2_MEMORY_COST",
        "ARGON2_TIME_COST",
        "ARGON2_PARALLELISM",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRET_KEY", STRONG_A)
    monkeypatch.setenv("JWT_SECRET_KEY", STRONG_B)
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db.internal:5432/app")
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6379/0")


def test_production_with_strong_settings_loads(production_env):
    cfg = config.load()
    assert cfg["APP_ENV"] == "production"
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u:p@db.internal:5432/app"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SECRET_KEY", PUBLISHED_DEV_SECRET),
        ("JWT_SECRET_KEY", PUBLISHED_DEV_SECRET),
        ("SECRET_KEY", "short"),
        ("JWT_SECRET_KEY", STRONG_A),
    ],
)
def test_production_refuses_weak_or_shared_secrets(production_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError):
        config.load()


@pytest.mark.parametrize("missing", ["SECRET_KEY", "JWT_SECRET_KEY", "DATABASE_URL", "REDIS_URL"])
def test_production_refuses_missing_settings(production_env, monkeypatch, missing):
    monkeypatch.delenv(missing)
    with pytest.raises(ConfigError):
        config.load()


@pytest.fixture
def production_mail(production_env, monkeypatch):
    """Production with mail set up safely."""
    monkeypatch.setenv("MAIL_URL", "smtps://postboard:secret@smtp.example.com")
    monkeypatch.setenv("MAIL_FROM", "Postboard <no-reply@example.com>")
    monkeypatch.setenv("PASSWORD_RESET_URL", "https://app.example.com/reset?token={token}")
    monkeypatch.setenv("EMAIL_VERIFY_URL", "https://app.example.com/verify?token={token}")


def test_production_loads_with_safe_mail_settings(production_mail):
    assert config.load()["MAIL_URL"].startswith("smtps://")


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("MAIL_URL", "smtp+plain://smtp.example.com:25", "MAIL_URL"),
        ("MAIL_URL", "http://smtp.example.com", "MAIL_URL"),
        ("MAIL_FROM", "", "MAIL_FROM"),
        ("PASSWORD_RESET_URL", "http://app.example.com/reset?token={token}", "PASSWORD_RESET_URL"),
        ("EMAIL_VERIFY_URL", "https://app.example.com/verify", "EMAIL_VERIFY_URL"),
    ],
)
def test_production_refuses_unsafe_mail_settings(production_mail, monkeypatch, name, value, named):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        config.load()


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DB_POOL_SIZE", "3")
    monkeypatch.setenv("DB_POOL_TIMEOUT", "2")
    monkeypatch.setenv("DB_POOL_PRE_PING", "true")
    monkeypatch.setenv("REDIS_SOCKET_TIMEOUT", "0.25")
    monkeypatch.setenv("JWT_ACCESS_TOKEN_MINUTES", "5")
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "2048")
    cfg = config.load({"APP_ENV": "development"})
    assert cfg["SQLALCHEMY_ENGINE_OPTIONS"]["pool_size"] == 3
    assert cfg["SQLALCHEMY_ENGINE_OPTIONS"]["pool_timeout"] == 2
    assert cfg["SQLALCHEMY_ENGINE_OPTIONS"]["pool_pre_ping"] is True
    assert cfg["REDIS_SOCKET_TIMEOUT"] == 0.25
    assert cfg["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds() == 300
    assert cfg["MAX_CONTENT_LENGTH"] == 2048


@pytest.mark.parametrize(("name", "value"), [("DB_POOL_SIZE", "ten"), ("REDIS_SOCKET_TIMEOUT", "fast")])
def test_malformed_numbers_are_refused_by_name(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        config.load()


def test_unknown_profile_is_refused(monkeypatch):
    monkeypatch.setenv("APP_ENV", "staging")
    with pytest.raises(ConfigError):
        config.load()


# -- production is the default, and refuses ------------------------------------------


def test_production_is_the_profile_when_app_env_is_unset(production_env, monkeypatch):
    monkeypatch.delenv("APP_ENV")
    assert config.load()["APP_ENV"] == "production"
    monkeypatch.setenv("APP_ENV", "")
    assert config.load()["APP_ENV"] == "production"


def test_with_app_env_unset_and_no_secrets_the_app_refuses_to_start(production_env, monkeypatch):
    for name in ("APP_ENV", "SECRET_KEY", "JWT_SECRET_KEY"):
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="SECRET_KEY must be set; JWT_SECRET_KEY must be set"):
        create_app()


@pytest.mark.parametrize(
    "value",
    [
        PUBLISHED_DEV_SECRET + "-and-more-" + STRONG_A,
        STRONG_A + PUBLISHED_DEV_SECRET,
        "x" + PUBLISHED_DEV_SECRET + "x",
    ],
    ids=["padded after", "padded before", "wrapped"],
)
def test_production_refuses_any_secret_containing_the_published_one(production_env, monkeypatch, value):
    monkeypatch.setenv("JWT_SECRET_KEY", value)
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY contains the development secret"):
        config.load()


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("Ab3$" * 7 + "Zq9", True),  # 31 characters
        ("ab" * 20, True),  # 2 different characters
        ("abcdefghi" * 4, True),  # 9 different characters
        ("abcdefghij" * 4, False),  # 10 different, 40 long
        (secrets.token_urlsafe(24), False),  # 32 characters
    ],
)
def test_production_needs_32_characters_10_of_them_different(production_env, monkeypatch, value, refused):
    monkeypatch.setenv("SECRET_KEY", value)
    if refused:
        with pytest.raises(ConfigError, match="SECRET_KEY must be a random value of at least 32 characters"):
            config.load()
    else:
        assert config.load()["SECRET_KEY"] == value


@pytest.mark.parametrize("origins", ["*", "https://a.example, *", "https://a.example,*,https://b.example"])
def test_production_refuses_cors_for_every_origin(production_env, monkeypatch, origins):
    monkeypatch.setenv("CORS_ORIGINS", origins)
    with pytest.raises(ConfigError, match=r"CORS_ORIGINS must name the allowed origins, not \*"):
        config.load()


def test_production_accepts_named_cors_origins(production_env, monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    assert config.load()["CORS_ORIGINS"] == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(
    ("minutes", "refused"), [("61", True), ("1440", True), ("0", True), ("60", False), ("1", False)]
)
def test_production_refuses_access_tokens_over_an_hour(production_env, monkeypatch, minutes, refused):
    monkeypatch.setenv("JWT_ACCESS_TOKEN_MINUTES", minutes)
    if refused:
        with pytest.raises(ConfigError, match="JWT_ACCESS_TOKEN_MINUTES must be between 1 and 60"):
            config.load()
    else:
        assert config.load()["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds() == int(minutes) * 60


def _argon2(monkeypatch, memory: int, passes: int, lanes: int) -> None:
    monkeypatch.setenv("ARGON2_MEMORY_COST", str(memory))
    monkeypatch.setenv("ARGON2_TIME_COST", str(passes))
    monkeypatch.setenv("ARGON2_PARALLELISM", str(lanes))


@pytest.mark.parametrize(
    ("memory", "passes", "lanes"),
    [
        (19455, 2, 1),
        (19456, 1, 1),
        (47103, 1, 1),
        (12287, 3, 1),
        (9215, 4, 1),
        (7168, 4, 1),
        (7167, 9, 1),
        (65536, 3, 0),
    ],
)
def test_production_refuses_argon2_below_owasp(production_env, monkeypatch, memory, passes, lanes):
    _argon2(monkeypatch, memory, passes, lanes)
    with pytest.raises(ConfigError, match="below OWASP's minimum"):
        config.load()


@pytest.mark.parametrize(
    ("memory", "passes", "lanes"),
    [(47104, 1, 1), (19456, 2, 1), (12288, 3, 1), (9216, 4, 1), (7168, 5, 1), (65536, 3, 2), (20000, 2, 4)],
)
def test_production_accepts_argon2_at_or_above_an_owasp_row(production_env, monkeypatch, memory, passes, lanes):
    _argon2(monkeypatch, memory, passes, lanes)
    cfg = config.load()
    assert (cfg["ARGON2_MEMORY_COST"], cfg["ARGON2_TIME_COST"], cfg["ARGON2_PARALLELISM"]) == (memory, passes, lanes)


def test_production_names_every_refused_setting_on_one_line(production_env, monkeypatch):
    monkeypatch.delenv("SECRET_KEY")
    monkeypatch.setenv("CORS_ORIGINS", "*")
    monkeypatch.setenv("JWT_ACCESS_TOKEN_MINUTES", "120")
    monkeypatch.delenv("REDIS_URL")
    with pytest.raises(ConfigError) as refused:
        config.load()
    message = str(refused.value)
    for name in ("SECRET_KEY must be set", "CORS_ORIGINS", "JWT_ACCESS_TOKEN_MINUTES", "REDIS_URL must be set"):
        assert name in message
    assert "\n" not in message


def test_no_code_holds_the_published_secret():
    sources = [*ROOT.joinpath("app").rglob("*.py"), *ROOT.joinpath("worker").rglob("*.py")]
    sources += [ROOT / "wsgi.py", ROOT / "gunicorn.conf.py"]
    assert len(sources) > 10
    assert [path for path in sources if PUBLISHED_DEV_SECRET in path.read_text()] == []


# -- development and test make their secrets once per instance folder ---------------


@pytest.fixture
def no_secrets(monkeypatch):
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)


def _secrets_in(monkeypatch, folder: Path, profile: str = "development") -> tuple[str, str]:
    monkeypatch.setenv("INSTANCE_DIR", str(folder))
    cfg = config.load({"APP_ENV": profile})
    return cfg["SECRET_KEY"], cfg["JWT_SECRET_KEY"]


def test_development_secrets_are_random_kept_per_instance_and_owner_only(no_secrets, monkeypatch, tmp_path):
    first = _secrets_in(monkeypatch, tmp_path / "one")
    assert _secrets_in(monkeypatch, tmp_path / "one") == first  # stable across loads
    assert _secrets_in(monkeypatch, tmp_path / "one", "test") == first  # and profiles of one checkout
    other = _secrets_in(monkeypatch, tmp_path / "two")
    assert set(other).isdisjoint(first)  # another instance folder, other secrets
    for secret_key, jwt_key in (first, other):
        assert secret_key != jwt_key
        assert len(secret_key) >= 32 and len(set(jwt_key)) >= 10
        assert config.PUBLISHED_SECRET_PREFIX not in secret_key + jwt_key
    stored = tmp_path / "one" / config.LOCAL_SECRETS_FILE
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert tuple(json.loads(stored.read_text()).values()) == first
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [config.LOCAL_SECRETS_FILE]


def test_the_app_keeps_its_development_secrets_in_its_instance_folder(no_secrets, monkeypatch, tmp_path):
    monkeypatch.setenv("INSTANCE_DIR", str(tmp_path))
    monkeypatch.delenv("APP_ENV", raising=False)
    app = create_app({"APP_ENV": "development"})
    assert app.instance_path == str(tmp_path)
    stored = json.loads((tmp_path / config.LOCAL_SECRETS_FILE).read_text())
    assert app.config["JWT_SECRET_KEY"] == stored["JWT_SECRET_KEY"]
    assert app.config["SECRET_KEY"] == stored["SECRET_KEY"]


def test_secrets_from_the_environment_win_over_the_instance_ones(no_secrets, monkeypatch, tmp_path):
    made = _secrets_in(monkeypatch, tmp_path)
    monkeypatch.setenv("JWT_SECRET_KEY", STRONG_B)
    assert _secrets_in(monkeypatch, tmp_path) == (made[0], STRONG_B)


def test_processes_starting_together_agree_on_one_set_of_secrets(tmp_path):
    start = threading.Barrier(8)
    seen = []

    def load():
        start.wait()
        seen.append(config.local_secrets(tmp_path))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8
    assert all(secrets_ == seen[0] for secrets_ in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == [config.LOCAL_SECRETS_FILE]


def test_an_unreadable_secrets_file_is_refused_by_name(tmp_path):
    (tmp_path / config.LOCAL_SECRETS_FILE).write_text('{"SECRET_KEY": "only one"}')
    with pytest.raises(ConfigError, match="does not hold both secrets"):
        config.local_secrets(tmp_path)
    (tmp_path / config.LOCAL_SECRETS_FILE).write_text("not json")
    with pytest.raises(ConfigError, match=config.LOCAL_SECRETS_FILE):
        config.local_secrets(tmp_path)


def test_replica_urls_are_read_and_a_lag_limit_the_cache_cannot_cover_is_refused(monkeypatch):
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgres://r1.internal/app, postgresql://r2.internal/app")
    cfg = config.load({"APP_ENV": "development"})
    assert cfg["DATABASE_REPLICA_URLS"] == [
        "postgresql+psycopg://r1.internal/app",
        "postgresql+psycopg://r2.internal/app",
    ]
    monkeypatch.setenv("REPLICA_MAX_LAG_SECONDS", "4.5")
    with pytest.raises(config.ConfigError, match="REPLICA_MAX_LAG_SECONDS"):
        config.load({"APP_ENV": "development"})
    monkeypatch.delenv("DATABASE_REPLICA_URLS")
    assert config.load({"APP_ENV": "development"})["REPLICA_MAX_LAG_SECONDS"] == 4.5  # no replica: no limit
