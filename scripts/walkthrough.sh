#!/bin/sh
# A first session with the API, step by step: register two accounts, log in, post,
# follow, read the feed, page through posts, edit with If-Match, log out; then the
# mailed flows: verify an email, reset a forgotten password, delete an account.
#
#   sh scripts/walkthrough.sh                        # against `make run` (on PORT, 5000 by default)
#   PORT=8000 sh scripts/walkthrough.sh              # `PORT=8000 make run`
#   API=https://postboard.example.com MAIL_DIR=... sh scripts/walkthrough.sh
#
# The mailed tokens are read from the .eml files `make run`'s SMTP server keeps in
# MAIL_DIR (instance/mail/). Needs only curl and python3 (to read a field of a JSON
# body, and a token from a mail). Every step checks its
# answer and the script stops at the first one that fails. Each run registers new
# accounts (a random suffix), so it can run again and again on the same server, up to
# the registration limit (RATELIMIT_REGISTER_PER_IP, 10 per hour; two per run).
set -eu

API=${API:-http://127.0.0.1:${PORT:-5000}}
V1="$API/api/v1"
RUN=$(python3 -c 'import secrets; print(secrets.token_hex(4))')
ALICE="alice_$RUN"
BOB="bob_$RUN"
PASSWORD="correct-horse-$RUN"
MAIL_DIR=${MAIL_DIR:-$(dirname "$0")/../instance/mail}

# field PATH: one field of the JSON body on stdin; PATH is dotted (items.0.id)
field() {
  python3 -c '
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split("."):
    value = value[int(key)] if isinstance(value, list) else value[key]
print(value)' "$1"
}
# mailed_token ADDRESS SUBJECT: the token in the newest mail to ADDRESS whose subject has
# SUBJECT, waiting up to 30 s for the worker to send it
mailed_token() {
  python3 -c '
import email, email.policy, pathlib, re, sys, time
folder, address, subject = pathlib.Path(sys.argv[1]), sys.argv[2].lower(), sys.argv[3]
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    for path in sorted(folder.glob("*.eml"), reverse=True):
        mail = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if str(mail["To"]).lower() == address and subject in str(mail["Subject"]):
            text = mail.get_body(preferencelist=("plain",)).get_content()
            print(re.search(r"^\s*([A-Za-z0-9_-]{43})\s*$", text, re.M).group(1))
            sys.exit(0)
    time.sleep(0.2)
sys.exit(f"no mail to {address} about {subject!r} in {folder}")' "$MAIL_DIR" "$1" "$2"
}
# expect WANTED GOT STEP: stop unless GOT is WANTED
expect() {
  [ "$2" = "$1" ] || { echo "FAILED: $3: expected $1, got $2" >&2; exit 1; }
}

echo "1. register $ALICE and $BOB (201, the public profile)"
curl -sS --fail-with-body -X POST "$V1/auth/register" -H 'Content-Type: application/json' \
  -d "{\"username\": \"$ALICE\", \"email\": \"$ALICE@example.com\", \"password\": \"$PASSWORD\"}"
BODY=$(curl -sS --fail-with-body -X POST "$V1/auth/register" -H 'Content-Type: application/json' \
  -d "{\"username\": \"$BOB\", \"email\": \"$BOB@example.com\", \"password\": \"$PASSWORD\"}")
BOB_ID=$(printf '%s' "$BODY" | field id)

echo "2. log in (username or email): an access and a refresh token"
BODY=$(curl -sS --fail-with-body -X POST "$V1/auth/login" -H 'Content-Type: application/json' \
  -d "{\"login\": \"$ALICE\", \"password\": \"$PASSWORD\"}")
ACCESS=$(printf '%s' "$BODY" | field access_token)
BODY=$(curl -sS --fail-with-body -X POST "$V1/auth/login" -H 'Content-Type: application/json' \
  -d "{\"login\": \"$BOB@example.com\", \"password\": \"$PASSWORD\"}")
BOB_ACCESS=$(printf '%s' "$BODY" | field access_token)

echo "3. each writes a post (201, with Location and ETag headers)"
curl -sS --fail-with-body -X POST "$V1/posts" -H "Authorization: Bearer $ACCESS" \
  -H 'Content-Type: application/json' -d '{"title": "Hi", "body": "Hello, postboard."}'
BODY=$(curl -sS --fail-with-body -X POST "$V1/posts" -H "Authorization: Bearer $BOB_ACCESS" \
  -H 'Content-Type: application/json' -d '{"title": "Hello", "body": "My first post."}')
POST_ID=$(printf '%s' "$BODY" | field id)

echo "4. $ALICE follows $BOB (204) and reads her feed: $BOB's post comes first"
curl -sS --fail-with-body -X PUT "$V1/users/$BOB_ID/follow" -H "Authorization: Bearer $ACCESS"
FEED=$(curl -sS --fail-with-body "$V1/feed?limit=10" -H "Authorization: Bearer $ACCESS")
echo "$FEED"
expect "$POST_ID" "$(printf '%s' "$FEED" | field items.0.id)" "the feed's first post"

echo "5. page through all posts, one a page: pass next_cursor back as ?cursor="
PAGE=$(curl -sS --fail-with-body "$V1/posts?limit=1")
CURSOR=$(printf '%s' "$PAGE" | field next_cursor)
PAGE=$(curl -sS --fail-with-body "$V1/posts?limit=1&cursor=$CURSOR")
SECOND=$(printf '%s' "$PAGE" | field items.0.id)
echo "   page 2: post $SECOND"

echo "6. $BOB edits his post with If-Match (200); the same, now stale, ETag again: 412"
ETAG=$(curl -sS --fail-with-body -o /dev/null -D - "$V1/posts/$POST_ID" \
  | sed -n 's/^[Ee][Tt][Aa][Gg]: *//p' | tr -d '\r')
expect '"v1"' "$ETAG" "the new post's ETag"
curl -sS --fail-with-body -o /dev/null -X PATCH "$V1/posts/$POST_ID" \
  -H "Authorization: Bearer $BOB_ACCESS" -H "If-Match: $ETAG" \
  -H 'Content-Type: application/json' -d '{"title": "Hello, edited"}'
STATUS=$(curl -sS -o /dev/null -w '%{http_code}' -X PATCH "$V1/posts/$POST_ID" \
  -H "Authorization: Bearer $BOB_ACCESS" -H "If-Match: $ETAG" \
  -H 'Content-Type: application/json' -d '{"title": "A lost update"}')
expect 412 "$STATUS" "a PATCH with a stale If-Match"

echo "7. $ALICE logs out (204); her token is refused from then on (401)"
curl -sS --fail-with-body -X POST "$V1/auth/logout" -H "Authorization: Bearer $ACCESS"
STATUS=$(curl -sS -o /dev/null -w '%{http_code}' "$V1/users/me" -H "Authorization: Bearer $ACCESS")
expect 401 "$STATUS" "a request with a logged-out token"

echo "8. the mail sent when $ALICE registered verifies her address (204); /users/me says so"
TOKEN=$(mailed_token "$ALICE@example.com" "Confirm your email")
curl -sS --fail-with-body -X POST "$V1/auth/verify-email" -H 'Content-Type: application/json' \
  -d "{\"token\": \"$TOKEN\"}"
BODY=$(curl -sS --fail-with-body -X POST "$V1/auth/login" -H 'Content-Type: application/json' \
  -d "{\"login\": \"$ALICE\", \"password\": \"$PASSWORD\"}")
ACCESS=$(printf '%s' "$BODY" | field access_token)
ME=$(curl -sS --fail-with-body "$V1/users/me" -H "Authorization: Bearer $ACCESS")
expect True "$(printf '%s' "$ME" | field email_verified)" "email_verified after verifying"

echo "9. $BOB forgot his password: a reset (202, the same for any address), the mailed token"
echo "   sets a new one (204); his old token is refused, the new password logs in"
curl -sS --fail-with-body -X POST "$V1/auth/password-reset" -H 'Content-Type: application/json' \
  -d "{\"email\": \"$BOB@example.com\"}"
TOKEN=$(mailed_token "$BOB@example.com" "Reset your")
curl -sS --fail-with-body -X POST "$V1/auth/password-reset/confirm" -H 'Content-Type: application/json' \
  -d "{\"token\": \"$TOKEN\", \"new_password\": \"new-$PASSWORD\"}"
STATUS=$(curl -sS -o /dev/null -w '%{http_code}' "$V1/users/me" -H "Authorization: Bearer $BOB_ACCESS")
expect 401 "$STATUS" "a token from before the reset"
STATUS=$(curl -sS -o /dev/null -w '%{http_code}' -X POST "$V1/auth/password-reset/confirm" \
  -H 'Content-Type: application/json' -d "{\"token\": \"$TOKEN\", \"new_password\": \"other-$PASSWORD\"}")
expect 422 "$STATUS" "the reset token used twice"
curl -sS --fail-with-body -o /dev/null -X POST "$V1/auth/login" -H 'Content-Type: application/json' \
  -d "{\"login\": \"$BOB\", \"password\": \"new-$PASSWORD\"}"

echo "10. $ALICE deletes her account with her fresh login's token (204): the token is refused"
echo "    and her profile is gone at once; a job removes the rest"
ALICE_ID=$(printf '%s' "$ME" | field id)
curl -sS --fail-with-body -X DELETE "$V1/users/me" -H "Authorization: Bearer $ACCESS"
STATUS=$(curl -sS -o /dev/null -w '%{http_code}' "$V1/users/me" -H "Authorization: Bearer $ACCESS")
expect 401 "$STATUS" "a token of a deleted account"
STATUS=$(curl -sS -o /dev/null -w '%{http_code}' "$V1/users/$ALICE_ID")
expect 404 "$STATUS" "the profile of a deleted account"

echo "walkthrough done"
