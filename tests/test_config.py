"""Settings from the environment; production refuses unsafe ones."""

from __future__ import annotations

import pytest

from app import config
from app.config import DEV_SECRET, ConfigError

STRONG_A = "a" * 40
STRONG_B = "b" * 40


@pytest.fixture
def production_env(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
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
    [("SECRET_KEY", DEV_SECRET), ("JWT_SECRET_KEY", DEV_SECRET), ("SECRET_KEY", "short"), ("JWT_SECRET_KEY", STRONG_A)],
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
