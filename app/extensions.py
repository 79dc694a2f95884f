"""The shared extension instances, bound to the app in create_app()."""

from __future__ import annotations

import contextlib
import functools
import select
import threading
import time

import redis
from cachetools import LRUCache
from flask import current_app, has_request_context, request
from flask_jwt_extended import JWTManager
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSQLAlchemySession
from psycopg.pq import TransactionStatus
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import MetaData, event, text
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so migrations and error mapping can refer to them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
INTRANS = TransactionStatus.INTRANS  # in a transaction, no statement failed
WROTE = "wrote_in_transaction"  # in Connection.info: a statement other than SELECT ran since BEGIN
BEGUN = "transaction_begun_on"  # in Session.info: the transaction and the connection it began on


class ReadsWithoutTransaction(FlaskSQLAlchemySession):
    """The session of a GET / HEAD / OPTIONS request runs each query on its own, in
    autocommit: no route changes anything on those methods, and a transaction would
    cost a BEGIN and a ROLLBACK round trip on every read request, and throw away
    psycopg's prepared statements (it drops them all at each ROLLBACK).

    Lists already take each query's snapshot as it comes (a post deleted between the
    ids and the posts is left out). Every other method keeps its one transaction.
    """

    def get_bind(self, mapper=None, clause=None, bind=None, **kwargs):
        engine = super().get_bind(mapper, clause, bind, **kwargs)
        if bind is None and has_request_context() and request.method in READ_ONLY_METHODS:
            return _autocommit(engine)
        return engine

    def close(self) -> None:
        """End a transaction that only read with COMMIT rather than ROLLBACK.

        A write request reads after its commit (the followers to notify, the row to
        answer with), and the teardown's ROLLBACK of that read-only transaction made
        psycopg drop every prepared statement of the connection (and send DEALLOCATE
        ALL): the next requests on it planned their queries afresh. For a transaction
        that wrote nothing the two are the same; anything else still rolls back.
        """
        if self._only_read():
            keep, self.expire_on_commit = self.expire_on_commit, False  # as close() leaves them
            try:
                with contextlib.suppress(SQLAlchemyError):  # then the ROLLBACK below, as before
                    self.commit()
            finally:
                self.expire_on_commit = keep
        super().close()

    def _only_read(self) -> bool:
        if has_request_context() and request.method in READ_ONLY_METHODS:
            return False  # in autocommit: no transaction to end
        if not self.in_transaction() or self.new or self.dirty or self.deleted:
            return False
        begun = self.info.get(BEGUN)  # (transaction, connection), set by after_begin
        if begun is None or begun[0] is not self.get_transaction():
            return False  # no connection taken yet (or the pool had none to give)
        connection = begun[1]
        if connection.closed or connection.info.get(WROTE, True):
            return False
        return connection.connection.dbapi_connection.info.transaction_status == INTRANS


@contextlib.contextmanager
def statement_timeout(milliseconds: int):
    """Stop each statement in this block after `milliseconds` (QueryCanceled, SQLSTATE
    57014), on the session's connection.

    SET LOCAL lasts one transaction, and a GET request's session has none (autocommit):
    the block is a short transaction of its own, which PgBouncer in transaction mode
    keeps on one server connection. Inside a transaction already (a test's), it is a
    savepoint, and the transaction's own timeout is set back after it.
    """
    connection = db.session.connection()
    raw = connection.connection.dbapi_connection
    nested = raw.info.transaction_status != TransactionStatus.IDLE
    with raw.transaction():
        connection.execute(_SET_TIMEOUT, {"value": f"{milliseconds}ms"})
        yield
        if nested:  # a released savepoint keeps its SET LOCAL
            connection.execute(_DEFAULT_TIMEOUT)


_SET_TIMEOUT = text("SELECT set_config('statement_timeout', :value, true)")
_DEFAULT_TIMEOUT = text("SET LOCAL statement_timeout TO DEFAULT")


@functools.cache
def _autocommit(engine):
    """The engine as an autocommit view sharing its pool (built once per engine)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


db = SQLAlchemy(model_class=Base, session_options={"class_": ReadsWithoutTransaction})


@event.listens_for(ReadsWithoutTransaction, "after_begin")
def _remember_connection(session, _transaction, connection) -> None:
    session.info[BEGUN] = (session.get_transaction(), connection)


def note_writes(engine) -> None:
    """Keep WROTE on each connection for ReadsWithoutTransaction.close(): anything but a
    SELECT counts as a write (SAVEPOINT included), so only a plain read is committed."""
    event.listen(engine, "begin", _transaction_begun)
    event.listen(engine, "before_cursor_execute", _statement_sent)


def _transaction_begun(connection) -> None:
    connection.info[WROTE] = False


def _statement_sent(connection, _cursor, statement, _parameters, _context, _executemany) -> None:
    if statement.lstrip()[:6].upper() != "SELECT":
        connection.info[WROTE] = True


def hand_out_live_connections(engine) -> None:
    """Check each pooled connection as a request takes it, without a round trip.

    An idle PostgreSQL connection has nothing to read. Data waiting on it means the
    server ended it (a restart, a failover or pg_terminate_backend sends its FATAL
    notice and closes the socket): the checkout then raises DisconnectionError, and the
    pool drops that connection and opens another (SQLAlchemy's pessimistic checkout
    pattern), so a restarted server costs no request an error. SQLAlchemy's
    pool_pre_ping (DB_POOL_PRE_PING) finds the same with a round trip on every checkout;
    it is still there for networks that drop idle connections without a word.
    """
    event.listen(engine, "checkout", _refuse_ended_connection)


def _refuse_ended_connection(dbapi_connection, _record, _proxy) -> None:
    if dbapi_connection.closed or dbapi_connection.broken:
        raise DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the server ended the connection")


migrate = Migrate()


class RememberingJWTManager(JWTManager):
    """flask-jwt-extended's manager, remembering the tokens this process has verified.

    Decoding costs PyJWT three parses of the token (two unverified, for the key
    callback, then the verified one, each checking the base64 character by character):
    ~100-170 µs, paid on every request although a client sends the same access token
    for its whole life. So the claims of a token that verified are kept, keyed by the
    whole token (signature included), and a token seen again has only its expiry
    checked. Revocation and the account check still run on every request. Per app (each
    has its own key) and bounded (least recently used out first).
    """

    MAX_TOKENS = 10_000

    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict:
        if csrf_value is not None or allow_expired:
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        remembered = current_app.extensions.get("jwt_verified")
        if remembered is None:
            remembered = current_app.extensions["jwt_verified"] = (LRUCache(self.MAX_TOKENS), threading.Lock())
        verified, lock = remembered
        with lock:
            claims = verified.get(encoded_token)
        if claims is None or claims.get("exp", float("inf")) <= time.time():
            claims = super()._decode_jwt_from_config(encoded_token)  # verifies; raises when expired
            with lock:
                verified[encoded_token] = claims
        return dict(claims)  # each request its own dict


jwt = RememberingJWTManager()


class ProblemApi(Api):
    """flask-smorest's Api, with every HTTP error answered and documented as problem+json.

    No catch-all `default` response: each operation lists the statuses it can return.
    """

    DEFAULT_ERROR_RESPONSE_NAME = None

    def handle_http_exception(self, error):
        from app.errors import problem_from_http_exception

        return problem_from_http_exception(error)

    def _register_responses(self):
        # flask-smorest's hook for the error response components it documents
        from app.api import register_problem_responses

        register_problem_responses(self)


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
