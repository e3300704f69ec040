"""Who a request comes from: access keys to accounts, in the two auth modes.

- ``dev``: signatures are not checked. An access key id of exactly 12 digits is that
  account; any other acts as the default account. Tests and users get as many accounts
  as they like this way.
- ``strict``: access keys come from a credentials file; the SigV4 signature is verified.
"""

from __future__ import annotations

import configparser
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ebscrypt.context import Caller
from ebscrypt.errors import AuthError
from ebscrypt.wire import sigv4
from ebscrypt.wire.http import HttpRequest

_ACCOUNT_RE = re.compile(r"^\d{12}$")
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class Credential:
    access_key: str
    secret_key: str
    account: str
    user_name: str | None = None

    @property
    def arn(self) -> str:
        if self.user_name:
            return f"arn:aws:iam::{self.account}:user/{self.user_name}"
        return f"arn:aws:iam::{self.account}:root"


def load_credentials(path: Path) -> dict[str, Credential]:
    """Read a credentials file: TOML or INI, one section per access key.

    Each section has ``aws_access_key_id``, ``aws_secret_access_key``, ``account_id``
    and optionally ``user_name`` — the shape of ``~/.aws/credentials`` plus the account.
    """
    text = path.read_text()
    sections: dict[str, dict[str, str]]
    try:
        sections = {k: v for k, v in tomllib.loads(text).items() if isinstance(v, dict)}
    except tomllib.TOMLDecodeError:
        parser = configparser.ConfigParser()
        parser.read_string(text)
        sections = {name: dict(parser[name]) for name in parser.sections()}
    creds: dict[str, Credential] = {}
    for name, section in sections.items():
        try:
            cred = Credential(
                access_key=str(section["aws_access_key_id"]),
                secret_key=str(section["aws_secret_access_key"]),
                account=str(section["account_id"]),
                user_name=section.get("user_name"),
            )
        except KeyError as missing:
            raise ValueError(f"credentials section [{name}] lacks {missing}") from None
        if not _ACCOUNT_RE.match(cred.account):
            raise ValueError(f"credentials section [{name}]: account_id must be 12 digits")
        creds[cred.access_key] = cred
    if not creds:
        raise ValueError(f"no credentials in {path}")
    return creds


class Authenticator:
    """Turns a request into a :class:`Caller`, or raises :class:`AuthError`."""

    def __init__(self, mode: str, default_account: str, credentials: dict[str, Credential] | None = None) -> None:
        if mode not in ("dev", "strict"):
            raise ValueError(f"unknown auth mode {mode!r}")
        if mode == "strict" and not credentials:
            raise ValueError("strict auth needs a credentials file")
        self.mode = mode
        self.default_account = default_account
        self.credentials = credentials or {}

    def authenticate(self, request: HttpRequest, scope: sigv4.Scope | None, now: datetime) -> Caller:
        if self.mode == "dev":
            if scope is None:
                return Caller(account=self.default_account, region=DEFAULT_REGION)
            account = scope.access_key if _ACCOUNT_RE.match(scope.access_key) else self.default_account
            return Caller(account=account, region=scope.region, access_key=scope.access_key)
        if scope is None:
            raise AuthError("Request is missing Authentication Token", kind="missing")
        cred = self.credentials.get(scope.access_key)
        if cred is None:
            raise AuthError("The security token included in the request is invalid.", kind="unknown_key")
        sigv4.verify(request, scope, cred.secret_key, now)
        return Caller(
            account=cred.account,
            region=scope.region,
            access_key=cred.access_key,
            arn=cred.arn,
            user_id=cred.access_key if cred.user_name else cred.account,
        )
