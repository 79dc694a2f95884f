"""The OpenAPI document's conventions, applied to every operation in one place, and
Swagger UI served from an installed package (so /docs works without a CDN)."""

from __future__ import annotations

import re
from importlib.resources import files

from apispec import BasePlugin
from flask import Blueprint, send_from_directory

# Swagger UI's assets as flask-swagger-ui ships them (the package's blueprint is not used)
SWAGGER_UI_DIST = files("flask_swagger_ui") / "dist"
SWAGGER_UI_ASSETS = "/docs/assets/"
# what /docs' Swagger UI does beyond its defaults: the token outlives a reload
SWAGGER_UI_CONFIG = {"persistAuthorization": True, "displayOperationId": True, "tryItOutEnabled": True}

BEARER = "bearerAuth"
REFRESH = "refreshAuth"
SECURITY_SCHEMES = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The access_token from POST /auth/login or /auth/refresh.",
    },
    REFRESH: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The refresh_token from POST /auth/login or /auth/refresh; only /auth/refresh takes it.",
    },
}
IF_MATCH = {
    "in": "header",
    "name": "If-Match",
    "required": False,
    "schema": {"type": "string", "example": '"v1"'},
    "description": "The ETag you read: the change is made only while the resource is still at that "
    "version (412 otherwise). Without it the change is made whatever the version.",
}
SECURITY_NOTES = {
    BEARER: "Send the access token: `Authorization: Bearer <access_token>`.",
    REFRESH: "Send the refresh token, not the access token: `Authorization: Bearer <refresh_token>`.",
}
_SENTENCE_END = re.compile(r"(?<=[.;:])\s")


def operation_id(endpoint: str) -> str:
    """A stable, unique operationId from the Flask endpoint (`posts.update_post` ->
    `posts_update_post`): generated clients name their methods after it."""
    return endpoint.replace(".", "_")


def short_summary(text: str) -> str:
    """The docstring's first sentence as plain text: Swagger UI shows a summary
    verbatim (Markdown is rendered only in descriptions)."""
    first = _SENTENCE_END.split(" ".join(text.split()), maxsplit=1)[0]
    return first.replace("`", "").rstrip(".;:")


class OperationConventions(BasePlugin):
    """Each operation gets an operationId, a plain summary, a description (the whole
    docstring, with how to authenticate), and the If-Match header wherever it may
    answer 412."""

    def operation_helper(self, path=None, operations=None, **kwargs):
        rule = kwargs.get("rule")
        for method, operation in (operations or {}).items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if rule is not None:
                operation.setdefault("operationId", operation_id(rule.endpoint))
            docstring = "\n\n".join(filter(None, (operation.get("summary"), operation.get("description"))))
            operation["summary"] = short_summary(docstring) or f"{method.upper()} {path}"
            notes = [SECURITY_NOTES[name] for req in operation.get("security", []) for name in req]
            operation["description"] = "\n\n".join([docstring or operation["summary"] + ".", *notes])
            if "412" in {str(status) for status in operation["responses"]}:
                parameters = operation.setdefault("parameters", [])
                if not any(p.get("in") == "header" and p.get("name") == "If-Match" for p in parameters):
                    parameters.append(dict(IF_MATCH))


def swagger_ui_assets() -> Blueprint:
    """Serves the Swagger UI files /docs loads (OPENAPI_SWAGGER_UI_URL points here)."""
    # named as a part of the docs (flask-smorest's own blueprint is "api-docs")
    blueprint = Blueprint("api-docs-assets", __name__)

    @blueprint.route(SWAGGER_UI_ASSETS + "<path:filename>")
    def asset(filename: str):
        # max_age: the files change only with the package's version
        return send_from_directory(str(SWAGGER_UI_DIST), filename, max_age=86400)

    return blueprint
