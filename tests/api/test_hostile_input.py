"""No 5xx from anything a client sends.

Every operation that takes a JSON body, a query string or form fields is found in the
app's own OpenAPI document (test_api9 in tests/api/test_owasp_api_top10.py checks that
it lists every served route), so a new endpoint is covered without touching this file.
Each gets every hostile shape, without a token (401 where one is needed, before the
body is looked at) and with one (400 for a body that cannot be parsed, 422 naming the
field for a bad value), and nothing may be written.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from sqlalchemy import func, select

from app.db import db
from app.factory import create_app
from app.logs import configure_logging
from tests.support.factories import PASSWORD, AdminFactory, PostFactory, UserFactory

SURROGATE = "\ud800"
SURROGATE_KEY = "\\ud800"  # how the error body names a field whose name holds one
JSON_TYPES = {"application/json"}
FORM_TYPES = {"multipart/form-data", "application/x-www-form-urlencoded"}
# a part every upload operation takes beside its documented form fields
UPLOAD = ("file", "posts.jsonl", b'{"external_id": "x1", "title": "t", "body": "b"}\n')


def _spec() -> dict:
    return create_app({"APP_ENV": "test"}).test_client().get("/openapi.json").get_json()


SPEC = _spec()


def _resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _operations():
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            body = op.get("requestBody", {}).get("content", {})
            (media, content), *_ = body.items() if body else [(None, {})]
            query = {
                p["name"]: p["schema"]
                for p in [*item.get("parameters", []), *op.get("parameters", [])]
                if p["in"] == "query"
            }
            yield {
                "id": f"{method.upper()} {path}",
                "method": method.upper(),
                "path": path,
                "secured": bool(op.get("security")),
                "media": media,
                "fields": _resolve(content.get("schema", {})).get("properties", {}),
                "query": query,
            }


OPERATIONS = list(_operations())
JSON_OPS = [op for op in OPERATIONS if op["media"] in JSON_TYPES]
FORM_OPS = [op for op in OPERATIONS if op["media"] in FORM_TYPES]
QUERY_OPS = [op for op in OPERATIONS if op["query"]]
SECURED = [op for op in OPERATIONS if op["secured"] and (op["media"] or op["query"])]


def _ids(ops):
    return [op["id"] for op in ops]


def _string_fields(op) -> list[str]:
    names = [name for name, f in op["fields"].items() if f.get("type") == "string" and f.get("format") != "binary"]
    assert names, f"{op['id']} documents no string field"
    return names


# values each field accepts, so a body with one hostile value is otherwise writable
VALID = {
    "username": "newcomer",
    "email": "newcomer@example.com",
    "password": "a far less common passphrase",
    "new_password": "a far less common passphrase",
    "current_password": PASSWORD,
    "role": "user",
    "format": "jsonl",
}


def _valid_value(name: str, field: dict):
    if name in VALID:
        return VALID[name]
    if field.get("enum"):
        return field["enum"][0]
    return {"boolean": True, "integer": 1}.get(field.get("type"), "plain text")


def _valid_body(op) -> dict:
    return {name: _valid_value(name, field) for name, field in op["fields"].items() if field.get("format") != "binary"}


@pytest.fixture
def world(app, login, monkeypatch):
    """An admin (who owns a post) and a user to act on; the token is the admin's. Rate
    limits are lifted: these tests send many requests, and a 429 would hide the answer."""
    for key, value in list(app.config.items()):
        if key.startswith("RATELIMIT_") and isinstance(value, str) and " per " in value:
            monkeypatch.setitem(app.config, key, "100000 per second")
    admin = AdminFactory(username="boss", email="boss@example.com")
    other = UserFactory()
    post = PostFactory(author=admin)
    return {
        "headers": login(admin),
        "params": {"user_id": other.id, "post_id": post.id},
    }


def _url(op, world) -> str:
    return re.sub(r"{(\w+)}", lambda m: str(world["params"][m.group(1)]), op["path"])


def _row_counts() -> dict[str, int]:
    db.session.expire_all()
    return {t.name: db.session.scalar(select(func.count()).select_from(t)) for t in db.metadata.sorted_tables}


def _send_json(client, op, world, raw: str | bytes, headers=None):
    return client.open(
        _url(op, world),
        method=op["method"],
        data=raw,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


def _multipart(fields: dict[str, bytes], upload=UPLOAD) -> tuple[bytes, str]:
    boundary = "hostile-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in fields.items()
    ]
    if upload:
        name, filename, content = upload
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _assert_problem(response, status: int, field=None, says: str | None = None):
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    if field is not None:
        where = problem["errors"]
        for step in field if isinstance(field, tuple) else (field,):
            where = where[step]
        if says:
            assert any(says in message for message in where), where
    return problem


# -- the operations found --------------------------------------------------------------


def test_the_document_yields_operations_of_every_kind():
    """The enumeration below finds what it must (lists a test loops over are never empty)."""
    assert {"POST /api/v1/posts", "POST /api/v1/auth/login", "PATCH /api/v1/admin/users/{user_id}"} <= set(
        _ids(JSON_OPS)
    )
    assert "POST /api/v1/posts/import" in _ids(FORM_OPS)
    assert {"GET /api/v1/posts", "GET /api/v1/feed"} <= set(_ids(QUERY_OPS))
    assert all(_string_fields(op) for op in JSON_OPS)


# -- JSON bodies -----------------------------------------------------------------------

# bodies that are not JSON this API can read: 400, whatever the operation
UNPARSEABLE = {
    "nested 50,000 deep": "[" * 50_000 + "]" * 50_000,
    "nested 1,000 deep": '{"a": ' + "[" * 1_000 + "]" * 1_000 + "}",
    "object nested 1,000 deep": '{"a": ' * 1_000 + "1" + "}" * 1_000,
    "a 5,000-digit integer": '{"a": ' + "9" * 5_000 + "}",
    "NaN": '{"a": NaN}',
    "Infinity": '{"a": Infinity}',
    "-Infinity": '{"a": -Infinity}',
    "a surrogate encoded in UTF-8": b'{"a": "\xed\xa0\x80"}',
    "not UTF-8": b'{"a": "\xff"}',
    "truncated": '{"a": ',
}
UNPARSEABLE_REASON = {
    "nested 50,000 deep": "nested too deeply",
    "nested 1,000 deep": "nested too deeply",
    "object nested 1,000 deep": "nested too deeply",
    "a 5,000-digit integer": "too many digits",
    "NaN": "NaN is not a JSON value",
    "Infinity": "Infinity is not a JSON value",
    "-Infinity": "Infinity is not a JSON value",
    "a surrogate encoded in UTF-8": "not UTF-8",
    "not UTF-8": "not UTF-8",
    "truncated": "Expecting value",
}
# numbers that parse (to float infinity) but fit no field: 422 naming it
HUGE_NUMBERS = {"1e400": "1e400", "a 5,000-digit decimal": "9" * 5_000 + ".5", "-1e400": "-1e400"}


@pytest.mark.parametrize("op", JSON_OPS, ids=_ids(JSON_OPS))
def test_json_bodies_that_cannot_be_parsed_are_400(client, world, op):
    before = _row_counts()
    for name, raw in UNPARSEABLE.items():
        response = _send_json(client, op, world, raw, world["headers"])
        problem = _assert_problem(response, 400)
        assert UNPARSEABLE_REASON[name] in problem["detail"], (name, problem)
    assert _row_counts() == before


@pytest.mark.parametrize("op", JSON_OPS, ids=_ids(JSON_OPS))
def test_huge_numbers_in_any_field_are_422_naming_it(client, world, op):
    before = _row_counts()
    assert op["fields"]
    for field in op["fields"]:
        for literal in HUGE_NUMBERS.values():
            body = json.dumps({**_valid_body(op), field: "PLACEHOLDER"}).replace('"PLACEHOLDER"', literal)
            _assert_problem(_send_json(client, op, world, body, world["headers"]), 422, field)
    assert _row_counts() == before


@pytest.mark.parametrize("op", JSON_OPS, ids=_ids(JSON_OPS))
def test_a_lone_surrogate_in_any_string_field_is_422_naming_it(client, world, op):
    before = _row_counts()
    for field in _string_fields(op):
        for bad in (SURROGATE, f"ok{SURROGATE}ok", "\udfff", "\ud83d"):
            body = json.dumps({**_valid_body(op), field: bad})  # ensure_ascii: sent as "\ud800"
            assert "\\ud" in body
            _assert_problem(_send_json(client, op, world, body, world["headers"]), 422, field, "surrogate")
    assert _row_counts() == before


@pytest.mark.parametrize("op", JSON_OPS, ids=_ids(JSON_OPS))
def test_a_lone_surrogate_as_a_key_at_any_depth_is_422_naming_it(client, world, op):
    before = _row_counts()
    field = _string_fields(op)[0]
    top = json.dumps({**_valid_body(op), SURROGATE: "x"})
    _assert_problem(_send_json(client, op, world, top, world["headers"]), 422, SURROGATE_KEY, "surrogate")
    nested = json.dumps({**_valid_body(op), field: [{"ok": [1, {SURROGATE: "x"}]}]})
    _assert_problem(
        _send_json(client, op, world, nested, world["headers"]),
        422,
        (field, "0", "ok", "1", SURROGATE_KEY),
        "surrogate",
    )
    assert _row_counts() == before


@pytest.mark.parametrize("op", JSON_OPS, ids=_ids(JSON_OPS))
def test_nul_characters_in_any_string_field_are_422_naming_it(client, world, op):
    before = _row_counts()
    for field in _string_fields(op):
        body = json.dumps({**_valid_body(op), field: "a\x00b"})
        _assert_problem(_send_json(client, op, world, body, world["headers"]), 422, field, "NUL")
    assert _row_counts() == before


def test_a_surrogate_pair_is_a_character_and_welcome(client, world):
    response = client.post(
        "/api/v1/posts",
        data='{"title": "smile \\ud83d\\ude00", "body": "b"}',
        headers=world["headers"],
        content_type="application/json",
    )
    assert response.status_code == 201
    assert response.get_json()["title"] == "smile \U0001f600"


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/v1/auth/login", {"login": "boss", "password": f"long enough {SURROGATE} pass"}),
        ("/api/v1/auth/register", {"username": "n1", "email": "n@example.com", "password": f"long {SURROGATE} enough"}),
        ("/api/v1/auth/password", {"current_password": f"{SURROGATE}{PASSWORD}", "new_password": "a fine new one"}),
    ],
)
def test_a_surrogate_password_never_reaches_argon2(client, world, monkeypatch, url, body):
    import argon2

    calls = []
    for name in ("hash", "verify"):
        real = getattr(argon2.PasswordHasher, name)
        monkeypatch.setattr(argon2.PasswordHasher, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    response = client.post(url, data=json.dumps(body), content_type="application/json", headers=world["headers"])
    (field,) = [name for name, value in body.items() if SURROGATE in value]
    _assert_problem(response, 422, field, "surrogate")
    assert calls == []


# -- without a token: 401 before the body is looked at ----------------------------------

WRONG_BODIES = [
    ("text/plain", b"hello"),
    ("application/x-www-form-urlencoded", b"title=x&body=y"),
    ("application/json", b"[" * 50_000 + b"]" * 50_000),
    ("application/json", b'{"a": ' + b"9" * 5_000 + b"}"),
    ("application/json", b'{"a": "\\ud800", "\\ud800": NaN}'),
    ("application/json", b"{not json"),
    ("multipart/form-data; boundary=x", b"--x\r\nbroken"),
    ("multipart/form-data", b"no boundary"),
]


@pytest.mark.parametrize("op", SECURED, ids=_ids(SECURED))
def test_without_a_token_every_secured_operation_is_401_whatever_the_body(client, world, op):
    before = _row_counts()
    query = {name: SURROGATE.encode("utf-8", "surrogatepass") for name in op["query"]}
    for content_type, body in WRONG_BODIES:
        response = client.open(
            _url(op, world), method=op["method"], data=body, query_string=query, content_type=content_type
        )
        _assert_problem(response, 401)
    assert _row_counts() == before


def test_an_unauthenticated_oversized_import_is_401_and_an_authenticated_one_413(client, app, world, monkeypatch):
    monkeypatch.setitem(app.config, "IMPORT_MAX_BYTES", 100)
    body, content_type = _multipart({}, upload=("file", "p.jsonl", b"x" * 500))
    assert client.post("/api/v1/posts/import", data=body, content_type=content_type).status_code == 401
    response = client.post("/api/v1/posts/import", data=body, content_type=content_type, headers=world["headers"])
    _assert_problem(response, 413)


def test_with_a_token_a_body_of_the_wrong_media_type_is_415(client, world):
    headers = world["headers"]
    assert client.post("/api/v1/posts", data="title=x", headers=headers, content_type="text/plain").status_code == 415
    body, content_type = _multipart({"format": b"jsonl"})
    assert client.post("/api/v1/posts", data=body, headers=headers, content_type=content_type).status_code == 415
    response = client.post("/api/v1/posts/import", json={"file": "x"}, headers=headers)
    assert response.status_code == 415
    response = client.post(
        "/api/v1/posts/import", data=b"format=jsonl", headers=headers, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415


# -- query strings ---------------------------------------------------------------------


def test_what_reaches_the_app_from_a_query_string(app):
    """werkzeug keeps a percent-escape that is not UTF-8 as it came; a lone surrogate
    cannot get through a URL."""
    with app.test_request_context("/api/v1/posts?q=%ED%A0%80&cursor=%FF&author=%00"):
        from flask import request

        assert request.args.to_dict() == {"q": "%ED%A0%80", "cursor": "%FF", "author": "\x00"}


@pytest.mark.parametrize("op", QUERY_OPS, ids=_ids(QUERY_OPS))
def test_hostile_query_strings_are_4xx_naming_the_field(client, world, op):
    before = _row_counts()
    headers = world["headers"] if op["secured"] else {}
    for name, schema in op["query"].items():
        for value in ("a\x00b", "9" * 5_000):
            response = client.open(_url(op, world), method=op["method"], query_string={name: value}, headers=headers)
            _assert_problem(response, 422, name)
        if schema.get("type") == "integer":
            for value in ("NaN", "Infinity", "1e400", "-" + "9" * 5_000, "1.5"):
                response = client.open(
                    _url(op, world), method=op["method"], query_string={name: value}, headers=headers
                )
                _assert_problem(response, 422, name)
        # percent-escapes of a surrogate (and of a byte that is not UTF-8) reach the app as text
        for raw in ("%ED%A0%80", "%FF", "%C0%AF"):
            response = client.open(f"{_url(op, world)}?{name}={raw}", method=op["method"], headers=headers)
            assert response.status_code < 500, response.get_data(as_text=True)
        # raw bytes beyond ASCII (gunicorn refuses them; another server may pass them on)
        response = client.open(
            _url(op, world),
            method=op["method"],
            headers=headers,
            environ_overrides={"QUERY_STRING": f"{name}=\xff\xed\xa0\x80"},
        )
        problem = _assert_problem(response, 400)
        assert "UTF-8" in problem["detail"]
    assert _row_counts() == before


# -- form fields -----------------------------------------------------------------------


@pytest.mark.parametrize("op", FORM_OPS, ids=_ids(FORM_OPS))
def test_hostile_form_fields_are_4xx_naming_the_field(client, world, op):
    before = _row_counts()
    url, headers = _url(op, world), world["headers"]
    valid = {name: str(value).encode() for name, value in _valid_body(op).items()}
    for field in _string_fields(op):
        # a surrogate encoded in UTF-8 arrives as U+FFFD (werkzeug decodes form fields with "replace")
        for value, says in ((b"a\x00b", "NUL"), (b"\xed\xa0\x80", None), (b"\xff", None), (b"9" * 5_000, None)):
            body, content_type = _multipart({**valid, field: value})
            response = client.open(url, method=op["method"], data=body, content_type=content_type, headers=headers)
            _assert_problem(response, 422, field, says)
    for broken in (b"--hostile-boundary\r\nbroken", b"", b"--hostile-boundary--\r\n"):
        response = client.open(
            url,
            method=op["method"],
            data=broken,
            headers=headers,
            content_type="multipart/form-data; boundary=hostile-boundary",
        )
        assert 400 <= response.status_code < 500
    assert _row_counts() == before


# -- logs --------------------------------------------------------------------------------

FORGED = "/api/v1/x%0a2026-01-01 INFO app.request [forged] GET /admin 200%0d%1b[2J"


@pytest.fixture
def log_format():
    """configure_logging(level, format) for one test; the handlers in place come back after."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield lambda fmt: configure_logging("INFO", fmt)
    root.handlers[:] = saved
    root.setLevel(level)


def _log_lines(client, capsys, log_format, fmt: str) -> list[str]:
    log_format(fmt)
    capsys.readouterr()
    client.get(FORGED)
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        logging.getLogger("app.test").exception("failed on %s", "a\nb\x1bc")
    return capsys.readouterr().out.splitlines()


def test_text_logs_escape_control_characters_but_keep_tracebacks_readable(client, capsys, log_format):
    lines = _log_lines(client, capsys, log_format, "text")
    (request_line,) = [line for line in lines if "app.request" in line]
    assert "GET /api/v1/x\\n2026-01-01 INFO app.request [forged] GET /admin 200\\r\\x1b[2J 404" in request_line
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in lines)
    (failed,) = [line for line in lines if "app.test" in line]
    assert failed.endswith("failed on a\\nb\\x1bc")
    # the traceback below it keeps its lines
    start = lines.index(failed)
    assert lines[start + 1] == "Traceback (most recent call last):"
    assert "ValueError: line one" in lines and "line two" in lines


def test_json_logs_escape_control_characters(client, capsys, log_format):
    lines = _log_lines(client, capsys, log_format, "json")
    entries = [json.loads(line) for line in lines]  # every line is one whole record
    (request,) = [e for e in entries if e["logger"] == "app.request"]
    assert request["path"] == "/api/v1/x\n2026-01-01 INFO app.request [forged] GET /admin 200\r\x1b[2J"
    (failed,) = [e for e in entries if e["logger"] == "app.test"]
    assert failed["message"] == "failed on a\nb\x1bc"
    assert "line two" in failed["exc_info"]


def test_a_lone_surrogate_in_a_text_log_is_escaped_not_dropped(capsys, log_format):
    log_format("text")
    capsys.readouterr()
    logging.getLogger("app.test").warning("odd %s", "\ud800")
    assert capsys.readouterr().out.rstrip().endswith("odd \\ud800")


# -- what gunicorn answers itself --------------------------------------------------------


def _raw_http(port: int, request: bytes) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request sent as raw bytes."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers.get("Content-Type", ""), body


@pytest.mark.system  # starts gunicorn
@pytest.mark.no_transaction  # a real gunicorn (the Procfile's web process) reads the data
def test_gunicorn_answers_long_request_lines_and_headers_itself_as_documented(app, test_db_url, tmp_path):
    from tests.support.processes import Web, service_env

    web = Web(service_env(app, test_db_url), tmp_path / "web.log").wait_ready()
    try:
        get = b"GET /api/v1/posts?q=%s HTTP/1.1\r\nHost: t\r\n%sConnection: close\r\n\r\n"
        just_fits = _raw_http(web.port, get % (b"a" * 4000, b""))
        too_long = _raw_http(web.port, get % (b"a" * 5000, b""))
        long_header = _raw_http(web.port, get % (b"a", b"X-Big: " + b"b" * 9000 + b"\r\n"))
        many_headers = _raw_http(web.port, get % (b"a", b"".join(b"X-%d: v\r\n" % i for i in range(101))))
        raw_byte = _raw_http(web.port, get % (b"\xff", b""))
    finally:
        web.stop()
    assert just_fits[:2] == (422, "application/problem+json")  # the app's answer: q is too long
    assert too_long[:2] == (414, "text/html") and b"URI Too Long" in too_long[2]
    assert long_header[:2] == (431, "text/html") and b"Request Header Fields Too Large" in long_header[2]
    assert many_headers[:2] == (431, "text/html")
    assert raw_byte[:2] == (400, "text/html")

    spec = app.test_client().get("/openapi.json").get_json()
    for status, name in ((414, "REQUEST_URI_TOO_LONG"), (431, "REQUEST_HEADER_FIELDS_TOO_LARGE")):
        component = spec["components"]["responses"][name]
        assert list(component["content"]) == ["text/html"]
        assert "gunicorn" in component["description"]
        operations = [op for item in spec["paths"].values() for op in item.values() if "responses" in op]
        assert len(operations) == len(OPERATIONS) > 0
        for op in operations:
            assert op["responses"][str(status)] == {"$ref": f"#/components/responses/{name}"}
