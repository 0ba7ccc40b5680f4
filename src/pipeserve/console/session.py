"""Signed cookies: the console's sign-in session and its CSRF tokens.

Both are HMAC-SHA256 under one secret kept in a file (`console_secret_file`, mode 0600), so that a restart keeps
people signed in and replicas that share the file accept each other's cookies. A session names the key it was
opened with, never the key itself: the key's project is looked up on every request, so a revoked key ends
its sessions at once.

CSRF is the signed double-submit pattern: a random nonce in an HttpOnly cookie, and in every form the HMAC of
that nonce, which a page of another site can neither read nor compute. The cookies are also SameSite=Strict.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

SESSION_COOKIE = "pipeserve_session"
CSRF_COOKIE = "pipeserve_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_SECRET_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(path: Path) -> bytes:
    """The secret in `path`, created (readable by this user only) when missing.

    Created with O_EXCL, so replicas starting together on a shared file agree on the one that won."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_hex(_SECRET_BYTES).encode())
    secret = path.read_bytes().strip()
    if len(secret) < 32:
        raise ValueError(
            f"the console's secret file {path} holds fewer than 32 bytes; delete it and pipeserve makes a new one"
        )
    return secret


@dataclass(frozen=True)
class Session:
    key_id: str
    expires: int  # Unix seconds


class Signer:
    def __init__(self, secret: bytes, lifetime_seconds: float) -> None:
        self._secret = secret
        self.lifetime = int(lifetime_seconds)

    def _mac(self, purpose: str, data: bytes) -> bytes:
        # The purpose keeps a CSRF token from ever passing for a session signature, or the reverse.
        return hmac.new(self._secret, purpose.encode() + b"\0" + data, hashlib.sha256).digest()

    # --- sessions -----------------------------------------------------------------------------------------

    def open_session(self, key_id: str) -> str:
        payload = orjson.dumps({"k": key_id, "e": int(time.time()) + self.lifetime})
        return f"{_b64(payload)}.{_b64(self._mac('session', payload))}"

    def read_session(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, or None for a missing, forged, altered or expired one."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(given, self._mac("session", payload)):
            return None
        try:
            data = orjson.loads(payload)
            session = Session(key_id=str(data["k"]), expires=int(data["e"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return session if session.expires > time.time() else None

    # --- CSRF ---------------------------------------------------------------------------------------------

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(24)

    def csrf_token(self, nonce: str) -> str:
        return _b64(self._mac("csrf", nonce.encode()))

    def check_csrf(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(nonce).encode())
