"""The JWT manager: flask-jwt-extended's, remembering the tokens this process verified.

Its callbacks (what a token must hold, revocation, every failure as a 401) are set in
app/auth/tokens.py."""

from __future__ import annotations

import threading
import time

from cachetools import LRUCache
from flask import current_app
from flask_jwt_extended import JWTManager


class RememberingJWTManager(JWTManager):
    """flask-jwt-extended's manager, remembering the tokens this process has verified.

    Decoding costs PyJWT three parses of the token (two unverified, for the key
    callback, then the verified one, each checking the base64 character by character),
    paid on every request although a client sends the same access token for its whole
    life. So the claims of a token that verified are kept, keyed by the
    whole token (signature included), and a token seen again has only its expiry
    checked. Revocation and the account check still run on every request. Per app (each
    has its own key) and bounded (least recently used out first).
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
