"""Console sign-in: who the browser is, from an HttpOnly, SameSite=Strict cookie.

The same rules as the API (identity.py): in ``dev`` auth a person picks the account (a
12-digit id); in ``strict`` auth they sign in with an access key id and its secret from
the credentials file. The cookie is ``principal.expiry.mac``: the principal is the
account (dev) or the access key id (strict); the MAC is HMAC-SHA256 under the access
key's secret (strict: every server process that reads the same credentials file
accepts it, and rotating the secret ends the session) or under a per-process random key
(dev; with ``serve --workers N`` one random key the parent gives every worker, so a
browser whose connections reach several workers stays signed in). The cookie never holds
a secret; comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from ebscrypt.identity import Authenticator

COOKIE = "ebscrypt_console"
LIFETIME_SECONDS = 8 * 3600
_ACCOUNT_RE = re.compile(r"^\d{12}$")


@dataclass(frozen=True)
class Viewer:
    account: str
    principal: str  # the account (dev) or the access key id (strict)


class Sessions:
    def __init__(self, auth: Authenticator, dev_key: bytes | None = None) -> None:
        self.auth = auth
        self._dev_key = dev_key or secrets.token_bytes(32)

    def _mac_key(self, principal: str) -> bytes | None:
        if self.auth.mode == "dev":
            return self._dev_key if _ACCOUNT_RE.match(principal) else None
        cred = self.auth.credentials.get(principal)
        return cred.secret_key.encode() if cred else None

    def _mac(self, key: bytes, principal: str, expiry: int) -> str:
        return hmac.new(key, f"console|{principal}|{expiry}".encode(), hashlib.sha256).hexdigest()

    def sign_in(self, principal: str, secret: str | None) -> str | None:
        """A cookie value for a valid sign-in, else None (the reason is never told apart)."""
        principal = principal.strip()
        if self.auth.mode == "strict":
            cred = self.auth.credentials.get(principal)
            if cred is None or not hmac.compare_digest(cred.secret_key.encode(), (secret or "").encode()):
                return None
        elif not _ACCOUNT_RE.match(principal):
            return None
        key = self._mac_key(principal)
        if key is None:
            return None
        expiry = int(time.time()) + LIFETIME_SECONDS
        return f"{principal}.{expiry}.{self._mac(key, principal, expiry)}"

    def viewer(self, cookie: str | None) -> Viewer | None:
        if not cookie or cookie.count(".") != 2:
            return None
        principal, expiry_text, mac = cookie.split(".")
        if not expiry_text.isdigit() or int(expiry_text) < time.time():
            return None
        key = self._mac_key(principal)
        if key is None or not hmac.compare_digest(mac, self._mac(key, principal, int(expiry_text))):
            return None
        if self.auth.mode == "strict":
            return Viewer(self.auth.credentials[principal].account, principal)
        return Viewer(principal, principal)
