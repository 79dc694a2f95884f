"""The OpenAPI document serves generated clients and Swagger UI: every operation named
and described, the headers and tokens each takes, bodies with examples, and /docs whose
assets come from the app itself."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def spec(app):
    return app.test_client().get("/openapi.json").get_json()


def operations(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if "responses" in operation:
                yield f"{method.upper()} {path}", operation


def test_every_operation_has_a_unique_operation_id_a_plain_summary_and_a_description(spec):
    ids = []
    for name, operation in operations(spec):
        assert operation.get("operationId"), name
        assert operation.get("summary") and "`" not in operation["summary"], name
        assert operation.get("description"), name
        ids.append(operation["operationId"])
    assert len(ids) == len(set(ids)) > 30


def test_if_match_is_a_header_parameter_wherever_412_is_documented(spec):
    checked = 0
    for name, operation in operations(spec):
        headers = {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}
        assert ("If-Match" in headers) == ("412" in operation["responses"]), name
        checked += "If-Match" in headers
    assert checked >= 3  # PATCH /users/me, PATCH and DELETE /posts/{post_id}


def test_the_refresh_endpoint_takes_its_own_security_scheme(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["refreshAuth"]["scheme"] == schemes["bearerAuth"]["scheme"] == "bearer"
    assert spec["paths"]["/api/v1/auth/refresh"]["post"]["security"] == [{"refreshAuth": []}]
    assert spec["paths"]["/api/v1/auth/logout"]["post"]["security"] == [{"bearerAuth": []}]


def test_schemas_state_their_rules_and_examples(spec):
    schemas = spec["components"]["schemas"]
    register = schemas["Register"]["properties"]
    assert (register["username"]["minLength"], register["username"]["maxLength"]) == (3, 30)
    assert register["username"]["pattern"]
    assert (register["password"]["minLength"], register["password"]["maxLength"]) == (10, 128)
    assert register["email"]["maxLength"] == 254
    for schema in ("Register", "Login", "TokenPair", "PostCreate", "Post", "PublicUser"):
        assert any("example" in field for field in schemas[schema]["properties"].values()), schema
    errors = schemas["Problem"]["properties"]["errors"]
    assert errors["type"] == "object" and "oneOf" in errors["additionalProperties"]
    feed = spec["paths"]["/api/v1/feed"]["get"]["parameters"]
    assert all(p.get("description") for p in feed if p["name"] in ("limit", "cursor"))


def test_docs_load_swagger_ui_from_the_app_and_keep_the_token(client):
    page = client.get("/docs").get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in page
    assert "//cdn" not in page
    assert '"persistAuthorization": true' in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        response = client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and len(response.get_data()) > 1000, asset
    assert client.get("/docs/assets/../../setup.cfg").status_code == 404
