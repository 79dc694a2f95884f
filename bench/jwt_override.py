"""Whether RememberingJWTManager's overrides (app/jwt_manager.py) still pay, in-process.

On the data and Redis database `make bench` uses, with production settings, it times
a protected GET (the cached first feed page, and /users/me) through Flask's test
client, and decode_token() alone, A with the overrides (the decode and the header
read) and B with flask-jwt-extended's own, alternating A and B in each of ROUNDS
rounds, and prints the median and range of microseconds per call of each and what the
overrides save. Run it as `make profile` runs bench/profile.py:
`.venv/bin/python bench/jwt_override.py` with DATABASE_URL and REDIS_URL set.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import bench_in_this_process  # noqa: E402

PATHS = ("/api/v1/feed?limit=20", "/api/v1/users/me")
REQUESTS = 2000  # per path, side and round
DECODES = 10_000  # per side and round
ROUNDS = 7


def main() -> int:
    password = bench_in_this_process()

    from flask_jwt_extended import JWTManager, decode_token, get_unverified_jwt_headers, view_decorators

    from app.auth import revocation
    from app.factory import create_app
    from app.jwt_manager import RememberingJWTManager, remembered_header

    override = RememberingJWTManager._decode_jwt_from_config
    # (the decode, the header read after it) of each side
    sides = {
        "A": (override, remembered_header),
        "B": (JWTManager._decode_jwt_from_config, get_unverified_jwt_headers),
    }
    app = create_app()
    with app.app_context():
        revocation.rebuild_mirror()  # as a worker would: the checks then answer from Redis
    client = app.test_client()
    login = client.post("/api/v1/auth/login", json={"login": "user2", "password": password})
    token = login.get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for path in PATHS:  # warm up: pools, caches, local copies
        for _ in range(300):
            assert client.get(path, headers=headers).status_code == 200, path

    names = (*PATHS, "decode_token")
    timings: dict[tuple[str, str], list[float]] = {(name, side): [] for name in names for side in sides}
    try:
        for round_number in range(ROUNDS):
            for side in "AB" if round_number % 2 == 0 else "BA":
                RememberingJWTManager._decode_jwt_from_config, view_decorators.get_unverified_jwt_headers = sides[side]
                for path in PATHS:
                    started = time.perf_counter()
                    for _ in range(REQUESTS):
                        client.get(path, headers=headers)
                    timings[(path, side)].append((time.perf_counter() - started) / REQUESTS * 1e6)
                with app.test_request_context():
                    decode_token(token)
                    started = time.perf_counter()
                    for _ in range(DECODES):
                        decode_token(token)
                    timings[("decode_token", side)].append((time.perf_counter() - started) / DECODES * 1e6)
    finally:
        RememberingJWTManager._decode_jwt_from_config, view_decorators.get_unverified_jwt_headers = sides["A"]

    print(f"A: the overrides; B: flask-jwt-extended's own. µs per call, median (range) of {ROUNDS} rounds")
    for name in names:
        a, b = timings[(name, "A")], timings[(name, "B")]
        saved = statistics.median(b) - statistics.median(a)
        print(
            f"{name:<24} A {statistics.median(a):7.1f} ({min(a):.1f}-{max(a):.1f})  "
            f"B {statistics.median(b):7.1f} ({min(b):.1f}-{max(b):.1f})  saved {saved:6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
