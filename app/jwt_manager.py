"""The JWT manager: flask-jwt-extended's, remembering the tokens this process verified.

Its callbacks (what a token must hold, revocation, every failure as a 401) are set in
app/auth/tokens.py."""

from __future__ import annotations

import threading
import time

from cachetools import LRUCache
from flask import current_app
from flask_jwt_extended import JWTManager, view_decorators
from flask_jwt_extended.utils import get_unverified_jwt_headers as _read_header


class RememberingJWTManager(JWTManager):
    """flask-jwt-extended's manager, remembering the tokens this process has verified.

    Decoding costs PyJWT three parses of the token (two unverified, for the key
    callback, then the verified one, each checking the base64 character by character),
    and flask-jwt-extended parses its header once more after; all paid on every request
    although a client sends the same access token for its whole life. So the claims and
    header of a token that verified are kept, keyed by the whole token (signature
    included), and a token seen again has only its expiry checked. Revocation and the
    account check still run on every request. Per app (each has its own key) and
    bounded (least recently used out first).
    """

    MAX_TOKENS = 10_000

    # Private override: flask-jwt-extended 4.7.4 (pinned exactly in setup.cfg). Every
    # token a request sends is decoded by decode_token(), which calls this method with
    # (encoded_token, csrf_value, allow_expired); the method runs the decode key loader
    # (app/auth/tokens.py checks the claims there) and PyJWT's verification. The
    # revocation and subject checks run after it, on every request, remembered or not.
    # It pays: a remembered token costs a dictionary lookup instead of PyJWT's three
    # parses, a large share of a cached protected GET's own time (bench/jwt_override.py
    # measures it). Guarded by tests/api/test_library_overrides.py.
    def _decode_jwt_from_config(self, encoded_token: str, csrf_value=None, allow_expired: bool = False) -> dict:
        if csrf_value is not None or allow_expired:
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        remembered = current_app.extensions.get(VERIFIED)
        if remembered is None:
            remembered = current_app.extensions[VERIFIED] = (LRUCache(self.MAX_TOKENS), threading.Lock())
        verified, lock = remembered
        with lock:
            entry = verified.get(encoded_token)
        if entry is None or entry[0].get("exp", float("inf")) <= time.time():
            claims = super()._decode_jwt_from_config(encoded_token)  # verifies; raises when expired
            entry = (claims, _read_header(encoded_token))
            with lock:
                verified[encoded_token] = entry
        return dict(entry[0])  # each request its own dict

    def init_app(self, app) -> None:
        super().init_app(app)
        # Module global override: flask-jwt-extended 4.7.4's _decode_jwt_from_request
        # calls view_decorators.get_unverified_jwt_headers (a PyJWT parse, ~25-50 µs
        # here) right after decode_token, on every request. Guarded by
        # tests/api/test_library_overrides.py.
        view_decorators.get_unverified_jwt_headers = remembered_header


VERIFIED = "jwt_verified"  # in app.extensions: (tokens verified -> (claims, header), lock)


def remembered_header(encoded_token: str) -> dict:
    """The header of a token this process verified (as PyJWT reads it), else PyJWT's."""
    remembered = current_app.extensions.get(VERIFIED)
    if remembered is not None:
        verified, lock = remembered
        with lock:
            entry = verified.get(encoded_token)
        if entry is not None:
            return dict(entry[1])
    return _read_header(encoded_token)


jwt = RememberingJWTManager()
