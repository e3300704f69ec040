"""EC2 key pairs: real key material, AWS fingerprints, storage of the public half only.

Fingerprints, as the EC2 API reference (KeyPairInfo.keyFingerprint) defines them:

- RSA pair created by EC2: SHA-1 of the DER PKCS#8 private key, colon-separated hex
  (``openssl pkcs8 -topk8 -nocrypt -outform DER | openssl sha1 -c``).
- RSA pair imported: MD5 of the DER SubjectPublicKeyInfo, colon-separated hex
  (``openssl pkey -pubout -outform DER | openssl md5 -c``) — not ``ssh-keygen -l -E md5``.
- ED25519, created or imported: base64 SHA-256 of the OpenSSH public key blob, as
  ``ssh-keygen -l`` prints it after ``SHA256:`` (AWS keeps the ``=`` padding).

CreateKeyPair returns RSA private keys as PKCS#1 PEM (``BEGIN RSA PRIVATE KEY``) and
ED25519 ones in OpenSSH format; ``KeyFormat=ppk`` returns a PuTTY PPK v2 file.
The private key exists only in the response: nothing here stores it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from ebscrypt.context import RequestContext
from ebscrypt.engines.ec2.ids import new_id
from ebscrypt.engines.ec2 import tags as T
from ebscrypt.errors import Duplicate, InvalidKeyFormat, InvalidParameterValue, MissingParameter, NotFound
from ebscrypt.storage.tables.ec2_net import ec2_key_pairs

RSA_BITS = 2048
IMPORT_RSA_MIN_BITS = 1024
IMPORT_RSA_MAX_BITS = 16384

# --------------------------------------------------------------------------- errors


def not_found(name: str) -> NotFound:
    return NotFound("InvalidKeyPair", name)


def not_found_id(key_id: str) -> NotFound:
    return NotFound("InvalidKeyPair", key_id, f"The key pair ID '{key_id}' does not exist")


def duplicate(name: str) -> Duplicate:
    return Duplicate("InvalidKeyPair", f"The keypair '{name}' already exists.")


def bad_format() -> InvalidKeyFormat:
    return InvalidKeyFormat()


# --------------------------------------------------------------------------- fingerprints


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def rsa_created_fingerprint(private_key: rsa.RSAPrivateKey) -> str:
    der = private_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return colon_hex(hashlib.sha1(der).digest())


def rsa_imported_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return colon_hex(hashlib.md5(der).digest())


def ed25519_fingerprint(public_key: ed25519.Ed25519PublicKey) -> str:
    return base64.b64encode(hashlib.sha256(ssh_public_blob(public_key)).digest()).decode()


def ssh_public_blob(public_key: Any) -> bytes:
    """The SSH wire encoding of a public key (the base64 part of an OpenSSH line)."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def openssh_line(public_key: Any) -> str:
    line: bytes = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line.decode()


# --------------------------------------------------------------------------- creation


@dataclass(frozen=True)
class NewKey:
    key_type: str
    key_material: str  # the private key, returned once
    public_key: str  # OpenSSH line, stored
    fingerprint: str


def generate(key_type: str = "rsa", key_format: str = "pem", comment: str = "") -> NewKey:
    if key_type == "rsa":
        priv_rsa = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        fingerprint = rsa_created_fingerprint(priv_rsa)
        public = priv_rsa.public_key()
        if key_format == "ppk":
            material = _ppk_rsa(priv_rsa, comment)
        else:
            material = priv_rsa.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, as EC2 returns
                serialization.NoEncryption(),
            ).decode()
        return NewKey("rsa", material.rstrip("\n"), openssh_line(public), fingerprint)
    if key_type == "ed25519":
        priv_ed = ed25519.Ed25519PrivateKey.generate()
        public_ed = priv_ed.public_key()
        if key_format == "ppk":
            material = _ppk_ed25519(priv_ed, comment)
        else:
            material = priv_ed.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ).decode()
        return NewKey("ed25519", material.rstrip("\n"), openssh_line(public_ed), ed25519_fingerprint(public_ed))
    raise InvalidParameterValue(
        f"Value ({key_type}) for parameter keyType is invalid. Valid values are rsa, ed25519.",
    )


# PuTTY private key file, version 2, unencrypted (PuTTY's sshpubk.c format description).


def _ssh_string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _mpint(n: int) -> bytes:
    if n == 0:
        return _ssh_string(b"")
    raw = n.to_bytes((n.bit_length() + 8) // 8, "big")  # leading 0 keeps it positive
    return _ssh_string(raw)


def _b64_lines(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode()
    return [text[i:i + 64] for i in range(0, len(text), 64)]


def _ppk(algorithm: str, public_blob: bytes, private_blob: bytes, comment: str) -> str:
    mac_key = hashlib.sha1(b"putty-private-key-file-mac-key").digest()  # empty passphrase
    mac_data = b"".join(
        _ssh_string(x) for x in (algorithm.encode(), b"none", comment.encode(), public_blob, private_blob)
    )
    mac = hmac.new(mac_key, mac_data, hashlib.sha1).hexdigest()
    pub_lines, priv_lines = _b64_lines(public_blob), _b64_lines(private_blob)
    out = [
        f"PuTTY-User-Key-File-2: {algorithm}",
        "Encryption: none",
        f"Comment: {comment}",
        f"Public-Lines: {len(pub_lines)}",
        *pub_lines,
        f"Private-Lines: {len(priv_lines)}",
        *priv_lines,
        f"Private-MAC: {mac}",
    ]
    return "\n".join(out) + "\n"


def _ppk_rsa(key: rsa.RSAPrivateKey, comment: str) -> str:
    n = key.private_numbers()
    private_blob = _mpint(n.d) + _mpint(n.p) + _mpint(n.q) + _mpint(n.iqmp)
    return _ppk("ssh-rsa", ssh_public_blob(key.public_key()), private_blob, comment)


def _ppk_ed25519(key: ed25519.Ed25519PrivateKey, comment: str) -> str:
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    return _ppk("ssh-ed25519", ssh_public_blob(key.public_key()), _ssh_string(seed), comment)


# --------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportedKey:
    key_type: str
    public_key: str  # OpenSSH line (no comment)
    fingerprint: str


_SSH2_BEGIN = "---- BEGIN SSH2 PUBLIC KEY ----"
_SSH2_END = "---- END SSH2 PUBLIC KEY ----"


def parse_public_key(material: bytes) -> ImportedKey:
    """Accept what EC2 accepts: an OpenSSH public key line, an RFC 4716 (SSH2) public key
    file, or base64 DER (SubjectPublicKeyInfo); RSA (1024+ bits) or ED25519 only."""
    try:
        text = material.decode("ascii").strip()
    except UnicodeDecodeError:
        raise bad_format() from None
    if not text:
        raise bad_format()
    key: Any = None
    if text.startswith(_SSH2_BEGIN):
        key = _load_ssh2(text)
    elif text.split(None, 1)[0] in ("ssh-rsa", "ssh-ed25519"):
        parts = text.split()
        if len(parts) < 2:
            raise bad_format()
        try:
            key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        except (ValueError, TypeError, binascii.Error):
            raise bad_format() from None
    else:
        try:
            der = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
            key = serialization.load_der_public_key(der)
        except (ValueError, TypeError, binascii.Error):
            raise bad_format() from None
    if isinstance(key, rsa.RSAPublicKey):
        if not IMPORT_RSA_MIN_BITS <= key.key_size <= IMPORT_RSA_MAX_BITS:
            raise bad_format()
        return ImportedKey("rsa", openssh_line(key), rsa_imported_fingerprint(key))
    if isinstance(key, ed25519.Ed25519PublicKey):
        return ImportedKey("ed25519", openssh_line(key), ed25519_fingerprint(key))
    raise bad_format()


def _load_ssh2(text: str) -> Any:
    lines = [ln.strip() for ln in text.splitlines()]
    if _SSH2_END not in lines:
        raise bad_format()
    body: list[str] = []
    continuing = False
    for ln in lines[1:lines.index(_SSH2_END)]:
        if continuing or ":" in ln:  # header line (possibly continued with a backslash)
            continuing = ln.endswith("\\")
            continue
        body.append(ln)
    try:
        blob = base64.b64decode("".join(body), validate=True)
        (n,) = struct.unpack(">I", blob[:4])
        algorithm = blob[4:4 + n].decode()
        return serialization.load_ssh_public_key(f"{algorithm} {base64.b64encode(blob).decode()}".encode())
    except (ValueError, TypeError, struct.error, binascii.Error, UnicodeDecodeError):
        raise bad_format() from None


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class KeyPair:
    """A stored key pair: its public half only (the private key is never kept)."""

    id: str
    account: str
    region: str
    name: str
    key_type: str
    fingerprint: str
    public_key: str  # the OpenSSH public key line
    imported: bool
    create_time: datetime

    @classmethod
    def from_row(cls, row: Any) -> "KeyPair":
        values = dict(row)
        values["imported"] = bool(values["imported"])
        return cls(**values)


def _insert(conn: Connection, *, account: str, region: str, name: str, key_type: str,
            fingerprint: str, public_key: str, imported: bool, now: datetime) -> KeyPair:
    if conn.execute(
        select(ec2_key_pairs.c.id).where(
            ec2_key_pairs.c.account == account, ec2_key_pairs.c.region == region, ec2_key_pairs.c.name == name
        )
    ).first():
        raise duplicate(name)
    row = dict(id=new_id("key"), account=account, region=region, name=name, key_type=key_type,
               fingerprint=fingerprint, public_key=public_key, imported=imported, create_time=now)
    try:
        with conn.begin_nested():
            conn.execute(insert(ec2_key_pairs).values(**row))
    except IntegrityError:  # a concurrent create of the same name won the race
        raise duplicate(name) from None
    return KeyPair.from_row(row)


def validate_name(name: str | None) -> str:
    if name is None or name == "":
        raise MissingParameter("KeyName")
    if len(name) > 255:
        raise InvalidParameterValue(
            f"Value ({name}) for parameter keyName is invalid. Length exceeds maximum of 255 characters.",
        )
    if any(ord(c) > 127 for c in name):
        raise InvalidParameterValue(
            f"Value ({name}) for parameter keyName is invalid. Character sets beyond ASCII are not supported.",
        )
    return name


def create(conn: Connection, *, account: str, region: str, name: str | None, key_type: str, key_format: str,
           now: datetime) -> tuple[KeyPair, str]:
    """Store a new pair's public half; return (the pair, its private key material)."""
    name = validate_name(name)
    if key_format not in ("pem", "ppk"):
        raise InvalidParameterValue(
            f"Value ({key_format}) for parameter keyFormat is invalid. Valid values are pem, ppk.",
        )
    # Refuse a duplicate before spending time on key generation.
    if get_by_name(conn, account, region, name) is not None:
        raise duplicate(name)
    key = generate(key_type, key_format, comment=name)
    pair = _insert(conn, account=account, region=region, name=name, key_type=key.key_type,
                   fingerprint=key.fingerprint, public_key=key.public_key, imported=False, now=now)
    return pair, key.key_material


def import_(conn: Connection, *, account: str, region: str, name: str | None, material: bytes,
            now: datetime) -> KeyPair:
    name = validate_name(name)
    key = parse_public_key(material)
    return _insert(conn, account=account, region=region, name=name, key_type=key.key_type,
                   fingerprint=key.fingerprint, public_key=key.public_key, imported=True, now=now)


def get_by_name(conn: Connection, account: str, region: str, name: str) -> KeyPair | None:
    row = conn.execute(
        select(ec2_key_pairs).where(
            ec2_key_pairs.c.account == account, ec2_key_pairs.c.region == region, ec2_key_pairs.c.name == name
        )
    ).mappings().first()
    return KeyPair.from_row(row) if row else None


def key_pair_exists(conn: Connection, account: str, region: str, name: str) -> bool:
    """For RunInstances ``KeyName`` validation by other members."""
    return get_by_name(conn, account, region, name) is not None


def list_(conn: Connection, account: str, region: str) -> list[KeyPair]:
    rows = conn.execute(
        select(ec2_key_pairs)
        .where(ec2_key_pairs.c.account == account, ec2_key_pairs.c.region == region)
        .order_by(ec2_key_pairs.c.create_time, ec2_key_pairs.c.name)
    ).mappings()
    return [KeyPair.from_row(r) for r in rows]


def delete_(conn: Connection, account: str, region: str, *, name: str | None = None,
            key_id: str | None = None) -> str | None:
    """Delete by name or id; returns the deleted id (None when nothing matched)."""
    q = select(ec2_key_pairs.c.id).where(ec2_key_pairs.c.account == account, ec2_key_pairs.c.region == region)
    q = q.where(ec2_key_pairs.c.id == key_id) if key_id else q.where(ec2_key_pairs.c.name == name)
    row = conn.execute(q).first()
    if row is None:
        return None
    conn.execute(delete(ec2_key_pairs).where(ec2_key_pairs.c.id == row.id))
    return str(row.id)


# --------------------------------------------------------------------------- operations
# One transaction each, for services/ec2/keypairs.py.


def create_key_pair(ctx: RequestContext, *, name: str | None, key_type: str, key_format: str,
                    tags: list[dict[str, str]]) -> tuple[KeyPair, str]:
    """CreateKeyPair: the stored pair (tagged) and the private key material."""
    c = ctx.caller
    with ctx.runtime.db.begin() as conn:
        pair, material = create(conn, account=c.account, region=c.region, name=name,
                                key_type=key_type, key_format=key_format, now=ctx.runtime.clock.now())
        if tags:
            T.put_tags(conn, c.account, c.region, pair.id, tags)
    return pair, material


def import_key_pair(ctx: RequestContext, *, name: str | None, material: bytes,
                    tags: list[dict[str, str]]) -> KeyPair:
    c = ctx.caller
    with ctx.runtime.db.begin() as conn:
        pair = import_(conn, account=c.account, region=c.region, name=name,
                       material=material, now=ctx.runtime.clock.now())
        if tags:
            T.put_tags(conn, c.account, c.region, pair.id, tags)
    return pair


def key_pairs_of(ctx: RequestContext) -> tuple[list[KeyPair], dict[str, dict[str, str]]]:
    """The caller's pairs (by creation time) and their tags."""
    c = ctx.caller
    with ctx.runtime.db.read() as conn:
        rows = list_(conn, c.account, c.region)
        return rows, T.tag_maps_for(conn, c.account, [r.id for r in rows])


def delete_key_pair(ctx: RequestContext, *, name: str | None, key_id: str | None) -> str | None:
    """Delete by id (which must name one of the caller's pairs) or by name (a name that
    does not exist is no error, as on AWS): the deleted id, if any."""
    c = ctx.caller
    with ctx.runtime.db.begin() as conn:
        deleted = delete_(conn, c.account, c.region, name=name, key_id=key_id)
        if deleted:
            T.delete_tags_of(conn, deleted)
        elif key_id:
            raise not_found_id(key_id)
    return deleted
