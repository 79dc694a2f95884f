"""The database layer: SQLAlchemy's `db`, the model base every table derives from, the
session that reads without a transaction, the reads sent straight to psycopg (with a
timeout of their own for a search), the write committed in its own round trip, and the
listeners on the engine (the pool's checkout poll, noting writes). Models import this
module and nothing else of the app."""

from __future__ import annotations

import contextlib
import functools
import select

import psycopg
from flask import current_app, has_request_context, request
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSQLAlchemySession
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy import ARRAY, ClauseElement, MetaData, SelectBase, event
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.engine import Compiled, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import NullPool

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


# every point in time is stored with its zone (timestamptz)
TZ = TIMESTAMP(timezone=True)


READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
INTRANS = TransactionStatus.INTRANS  # in a transaction, no statement failed
WROTE = "wrote_in_transaction"  # in Connection.info: a statement other than SELECT ran since BEGIN
BEGUN = "transaction_begun_on"  # in Session.info: the transaction and the connection it began on
READ_ENGINE_CHOOSER = "read_engine_chooser"  # in app.extensions: app/replicas.py, when replicas are set


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
            choose = current_app.extensions.get(READ_ENGINE_CHOOSER)
            return _autocommit(choose(engine) if choose else engine)
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


def commit_statement(statement: ClauseElement, params: dict):
    """Run one writing statement and commit it, in one round trip: its first row (a named
    tuple), or None.

    A write that changes a counter holds its row's lock from its statement to its
    COMMIT, and every other write to that row (the same author's posts, a follow of the
    same account) queues behind it. In autocommit the statement is its own transaction:
    PostgreSQL commits it as it ends, in the same round trip, with no Python in between
    and no BEGIN before it. It goes to psycopg on the extended protocol, so psycopg
    prepares it once it has run a few times on a connection (prepare_threshold), and
    PostgreSQL no longer parses and plans it each time (docs/performance.md). A
    statement is compiled once: module-level or cached ones, with no expanding IN lists;
    its parameters go to psycopg as they are.

    The engine's cursor events still see it (the write flag, query counters), and errors
    are SQLAlchemy's. When the session is in no transaction (a write request's first
    statement), it goes on a pooled connection borrowed for it alone (`_borrowed`); on
    the session's connection otherwise, where it runs in the session's transaction if
    one is open (a test's, or a request's that locked a row first), which the session's
    commit then ends.
    """
    session = db.session()
    engine = _engine_to_borrow_from(session)
    if engine is not None:
        with _borrowed(engine) as connection:
            return _commit_on(connection, statement, params)
    row = _commit_on(session.connection(), statement, params)
    session.commit()  # ends the session's transaction (its connection's is over, or ends here)
    return row


def _commit_on(connection, statement: ClauseElement, params: dict):
    raw = connection.connection.dbapi_connection
    cursor = raw.cursor(row_factory=namedtuple_row)
    sent = [_sql_and_params(_compiled(statement, connection.dialect), params)]
    with _in_autocommit(raw), _sent_to_the_driver(connection, cursor, sent, context=None):
        cursor.execute(*sent[0])
        return cursor.fetchone() if cursor.description else None


def select_rows(statement: SelectBase, params: dict, *, timeout_ms: int | None = None) -> list:
    """The rows (named tuples) of one SELECT, built once (module-level or cached), sent
    straight to psycopg: on the session's connection when it is in a transaction (and
    then in it), or else, with a pool of our own, on a pooled connection borrowed for
    this statement alone, in autocommit (a GET request's reads; a write request's reads
    before its first write or after its commit, which see what a new transaction's first
    statement would). On the session's connection too, a read that would be the first
    statement of its transaction runs in autocommit (behind PgBouncer, where nothing is
    borrowed): no BEGIN round trip before it, and no COMMIT to send after it.

    The hot reads use it (a cache miss, a page of ids, the followers to notify), where
    SQLAlchemy's execute and its result objects are a good part of the CPU a request
    takes, and so is the session's connection when a request reads nothing else: its
    Connection and transaction objects, and the autocommit set and reset through them
    (docs/performance.md). A borrowed connection comes from the same pool and engine
    (the replica chosen for the request, the pool's limits and checkout check) and goes
    back before this returns, so a request never holds two.

    What comes back is psycopg's own values, so every column must be of a type that
    SQLAlchemy passes through unconverted (numbers, text, times, arrays of those);
    `_plain_columns` refuses any other, and a locking read (FOR UPDATE / SHARE), whose
    lock would end with its statement on a borrowed connection. The engine's cursor
    events still see the statement (as a SELECT), and errors are SQLAlchemy's.

    `timeout_ms`, for a query whose cost depends on what a client asked (a search):
    the statement stops after that long (QueryCanceled, SQLSTATE 57014) and is planned
    for its own parameters (`_bounded_select`).
    """
    session = db.session()
    engine = _engine_to_borrow_from(session)
    if engine is not None:
        with _borrowed(engine) as connection:
            return _select_on(connection, statement, params, timeout_ms)
    return _select_on(session.connection(), statement, params, timeout_ms)


def _select_on(connection, statement: SelectBase, params: dict, timeout_ms: int | None) -> list:
    raw = connection.connection.dbapi_connection
    form = _plain_columns(statement, connection.dialect)
    sql, values = _sql_and_params(form, params)
    with _in_autocommit(raw):
        if timeout_ms is not None:
            return _bounded_select(connection, form, sql, values, timeout_ms)
        cursor = raw.cursor(row_factory=namedtuple_row)
        with _sent_to_the_driver(connection, cursor, [(sql, values)], context=_SelectSent(form)):
            return cursor.execute(sql, values).fetchall()


_BOUND = "SET LOCAL statement_timeout = %d; SET LOCAL plan_cache_mode = force_custom_plan"
_UNBOUND = "SET LOCAL statement_timeout TO DEFAULT; SET LOCAL plan_cache_mode TO DEFAULT"


def _bounded_select(connection, form: Compiled, sql: str, values: dict, timeout_ms: int) -> list:
    """select_rows' statement with a timeout of its own, and planned for its parameters:
    psycopg prepares a statement sent five times on a connection, and PostgreSQL then
    tries one generic plan for every parameter; for a search that is a walk of the
    newest-first index, fine for a common word and a scan of most of the table for a
    rare one. `plan_cache_mode = force_custom_plan` keeps the plan per word.

    SET LOCAL lasts one transaction. In autocommit (a GET request's read) the settings
    and the statement go as one message on the simple protocol, with the parameters
    bound by psycopg (ClientCursor): PostgreSQL runs a message of several statements as
    one transaction, which the settings last and which ends with it, so the search takes
    one round trip, as any read, and PgBouncer in transaction mode keeps it on one
    server connection. Nothing is lost by not preparing it: each is planned anew anyway.
    Inside a transaction already (a test's), it is a savepoint, and the transaction's own
    settings are set back after it.
    """
    raw = connection.connection.dbapi_connection
    settings = _BOUND % int(timeout_ms)
    context = _SelectSent(form)
    if raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE:
        cursor = psycopg.ClientCursor(raw, row_factory=namedtuple_row)
        sent = [(f"{settings}; {sql}", values)]
        with _sent_to_the_driver(connection, cursor, sent, context=context):
            cursor.execute(*sent[0])
            while cursor.description is None and cursor.nextset():  # past the settings' results
                pass
            return cursor.fetchall()
    cursor = raw.cursor(row_factory=namedtuple_row)
    with raw.transaction():  # a savepoint: a statement stopped rolls back to it, settings and all
        raw.execute(settings)
        with _sent_to_the_driver(connection, cursor, [(sql, values)], context=context):
            rows = cursor.execute(sql, values).fetchall()
        raw.execute(_UNBOUND)  # a released savepoint keeps its SET LOCAL
    return rows


class _Borrowed:
    """A pooled connection taken past the session, with what the cursor events and
    `_sent_to_the_driver` use of a Connection: its engine, events, dialect, info (the
    pooled connection's, as a Connection's is) and invalidation."""

    __slots__ = ("connection", "engine")

    def __init__(self, engine, pooled):
        self.engine, self.connection = engine, pooled

    dispatch = property(lambda self: self.engine.dispatch)
    dialect = property(lambda self: self.engine.dialect)
    info = property(lambda self: self.connection.info)

    def invalidate(self, error: BaseException) -> None:
        self.connection.invalidate(error)


def _engine_to_borrow_from(session) -> Engine | None:
    """The engine the session would take its connection from, when the session is in no
    transaction (so holds no connection, and nothing to flush: adding or changing an
    object begins one): statements may then run on a connection borrowed past it. None
    otherwise; when the session is bound to a connection rather than an engine (the
    tests' harness binds it to one in a transaction of its own); and when the engine
    keeps no pool (behind PgBouncer each borrowing would open a connection, where the
    session opens one for the whole request)."""
    if session.in_transaction():
        return None
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) and not isinstance(bind.pool, NullPool) else None


@contextlib.contextmanager
def _borrowed(engine):
    """One of `engine`'s pooled connections in autocommit, given back to the pool as
    it was (no transaction, autocommit off) after the block."""
    try:
        pooled = engine.raw_connection()
    except psycopg.Error as error:  # no connection to be had: raised as SQLAlchemy's connect raises it
        dialect = engine.dialect
        invalidated = dialect.is_disconnect(error, None, None)
        raise _sqlalchemys(error, dialect, None, invalidated=invalidated) from error
    raw = pooled.dbapi_connection
    try:
        raw.autocommit = True
        yield _Borrowed(engine, pooled)
    finally:
        if not raw.closed:
            try:
                if raw.info.transaction_status != TransactionStatus.IDLE:
                    raw.rollback()  # a query that began a transaction and failed in it
                raw.autocommit = False
            except psycopg.Error as error:  # a connection that broke under the statement
                pooled.invalidate(error)
        pooled.close()


class _SelectSent:
    """What the cursor events get as the execution context of select_rows: its compiled
    statement (note_writes looks at it to tell a read from a write)."""

    __slots__ = ("compiled",)

    def __init__(self, compiled: Compiled):
        self.compiled = compiled


@functools.lru_cache(maxsize=256)
def _plain_columns(statement: SelectBase, dialect) -> Compiled:
    """The statement compiled, once it is known that none of its columns needs
    SQLAlchemy's conversion of the driver's values, nor locks what it reads."""
    if getattr(statement, "_for_update_arg", None) is not None:
        raise TypeError("select_rows() does not lock: read the rows in the session's transaction")
    for column in statement.selected_columns:
        kind = column.type
        if isinstance(kind, ARRAY) and kind.dimensions in (None, 1):  # psycopg's is a list too
            kind = kind.item_type
        try:
            converts = kind.dialect_impl(dialect).result_processor(dialect, None) is not None
        except SQLAlchemyError:  # it cannot tell without the driver's type (a Numeric's)
            converts = True
        if converts:
            raise TypeError(f"select_rows() cannot return {column!r} ({column.type!r}) as psycopg reads it")
    return _compiled(statement, dialect)


def _sql_and_params(form: Compiled, params: dict) -> tuple[str, dict]:
    """A compiled statement's SQL and its parameters as psycopg takes them."""
    return form.string, form.construct_params(params)


@contextlib.contextmanager
def _sent_to_the_driver(connection, cursor, sent: list[tuple[str, dict]], *, context):
    """Statements sent to psycopg past SQLAlchemy's execute: the engine's cursor events
    before and after them (the write flag, query counters), and psycopg's errors raised
    as SQLAlchemy's (a lost connection invalidated, as SQLAlchemy would)."""
    events = connection.dispatch
    if events.before_cursor_execute:
        for sql, params in sent:
            events.before_cursor_execute(connection, cursor, sql, params, context, False)
    try:
        yield
    except psycopg.Error as error:
        raw, dialect = connection.connection.dbapi_connection, connection.dialect
        invalidated = dialect.is_disconnect(error, raw, cursor)
        if invalidated:
            connection.invalidate(error)
        statement = ";\n".join(sql for sql, _ in sent)  # as SQLAlchemy's errors, no values in it
        raise _sqlalchemys(error, dialect, statement, invalidated=invalidated) from error
    if events.after_cursor_execute:
        for sql, params in sent:
            events.after_cursor_execute(connection, cursor, sql, params, context, False)


def _sqlalchemys(error: psycopg.Error, dialect, statement: str | None, *, invalidated: bool) -> DBAPIError:
    """psycopg's error as SQLAlchemy's execute or connect would raise it."""
    return DBAPIError.instance(
        statement, None, error, psycopg.Error, connection_invalidated=invalidated, dialect=dialect
    )


@contextlib.contextmanager
def _in_autocommit(raw):
    """psycopg's own BEGIN left out: with autocommit off it sends one before any query."""
    if raw.autocommit or raw.info.transaction_status != TransactionStatus.IDLE:
        yield
        return
    raw.autocommit = True
    try:
        yield
    finally:
        if raw.info.transaction_status == TransactionStatus.INERROR:  # a statement failed
            with contextlib.suppress(psycopg.Error):
                raw.rollback()
        if not raw.closed:
            raw.autocommit = False


@functools.lru_cache(maxsize=256)
def _compiled(statement: ClauseElement, dialect) -> Compiled:
    """The statement compiled once (its SQL and its bound literals)."""
    return statement.compile(dialect=dialect)


@functools.cache
def _autocommit(engine):
    """The engine as an autocommit view sharing its pool (built once per engine)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


db = SQLAlchemy(model_class=Base, session_options={"class_": ReadsWithoutTransaction})


@event.listens_for(ReadsWithoutTransaction, "after_begin")
def _remember_connection(session, _transaction, connection) -> None:
    session.info[BEGUN] = (session.get_transaction(), connection)


def note_writes(engine) -> None:
    """Keep WROTE on each connection for ReadsWithoutTransaction.close(), from the
    statement SQLAlchemy compiled, not the SQL text: only a SELECT construct (select(),
    a union, text().columns()) is a read. Anything else counts as a write: ORM flushes,
    insert() / update() / delete(), a SAVEPOINT, a bare text() and a string sent with
    exec_driver_sql (no statement to look at). A SELECT calling a function that changes
    something is not seen: the app's only such call, pg_advisory_xact_lock, ends with
    the transaction whether it commits or rolls back."""
    event.listen(engine, "begin", _transaction_begun)
    event.listen(engine, "before_cursor_execute", _statement_sent)


def _transaction_begun(connection) -> None:
    connection.info[WROTE] = False


def _statement_sent(connection, _cursor, _statement, _parameters, context, _executemany) -> None:
    compiled = context.compiled if context is not None else None
    if compiled is None or not isinstance(compiled.statement, SelectBase):
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


def prepare_engine(engine) -> None:
    """The listeners above, on an engine of ours (the primary's, or a replica's)."""
    hand_out_live_connections(engine)
    note_writes(engine)


def init_db(app) -> None:
    """Bind `db` to the app and prepare its engine."""
    db.init_app(app)
    with app.app_context():
        prepare_engine(db.engine)
