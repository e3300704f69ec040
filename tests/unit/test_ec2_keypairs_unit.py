"""Key pair fingerprints and key material, against vectors computed by OpenSSL and OpenSSH.

The expected values were produced once with the reference tools (an independent
implementation), as the EC2 API reference defines each fingerprint:

    openssl pkcs8 -topk8 -nocrypt -in rsa.pem -outform DER | openssl sha1 -c   # RSA created
    openssl pkey -in rsa.pem -pubout -outform DER | openssl md5 -c            # RSA imported
    ssh-keygen -lf ed.pub                                                     # ED25519 (SHA256:...)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ebscrypt.engines.ec2 import keypairs as K
from ebscrypt.engines.ec2.ids import new_id
from ebscrypt.errors import ServiceError

RSA_PEM = """-----BEGIN RSA PRIVATE KEY-----
MIICXgIBAAKBgQDURBoKd++JNz5emJ3+zhKHO3YpZdG4YGA7g4euZkJzloDny+oN
3kmpi/OIbNEOY0ok2amqO3tusmeOB+FMSvuNl1y6tMJrOTjvWoRyygBgQCc+Rq8V
cAwaaOxIYgaDpbnV3b67+tLxGEwbOd7vDXzVa6N820ClFBgS3HCf+11srwIDAQAB
AoGBAL7dEZFSMNfwDavfjUmdoHlq1R/6Ru6D8mPxLCJ8HspyjSxgZe/cbd3/Upbc
ScqnKvchpPbGD4IE9yp2GXaRgcg2/tLv7bRhYe3VFsYyYIUDnFVDmsjIdFvsiJlj
iJgSL654ADh6iAdUuovSqHTXq8hCl0ayyys+gGmInSzKQAZ5AkEA7ibm+woL+eYW
dtpfZsJ3Ju/W73ZUrG00f/KGEKh6t3Azso8OdWKf/bvKrYhh2PdZdl/NXaBN+pHu
KFNUS4JUqwJBAOQsj6cbWEmdHE6aaMXAnPT613F+yeYjoSREebidwwdxElv8ccfe
Qr0POVlmqGHKK7td5JOhXYR9GB9kQsv9YA0CQQCNO8Dry++CSjO0VJkTReyHyOC8
rn5Uq4bhAiEDrAbq1r2x/Sjj8JNVVJNECoeMtlP14abXCYR1Pynv/EsXZLl1AkAb
W8R1su+pE+969USuwWOQdCs07pDiyU7e/F7j5famg8ZBxUkXP+0coiCsOYTjBMyt
kJqBoQ2Hf0BPM0RXFTBZAkEAhnXJjJk7JAI1L7eGJDTxlPJG0wtLKJHyFsSwN7Jj
XSRQUGa1+Iwb8GwurVa6+OvYkQbwdwqtfNglJFCvz/jecA==
-----END RSA PRIVATE KEY-----
"""
RSA_PUB = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDURBoKd++JNz5emJ3+zhKHO3YpZdG4YGA7g4euZkJzloDny+oN3kmpi/OIbNEOY0ok2amqO3tusmeOB+FMSvuNl1y6tMJrOTjvWoRyygBgQCc+Rq8VcAwaaOxIYgaDpbnV3b67+tLxGEwbOd7vDXzVa6N820ClFBgS3HCf+11srw=="
RSA_CREATED_FP = "7c:8b:b6:a1:35:07:dd:58:45:cc:16:5a:f6:66:be:1e:8f:cd:f0:7c"
RSA_IMPORTED_FP = "1e:03:e0:e1:b1:b6:5a:24:c2:be:5e:54:a7:ae:0c:8f"
ED_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILs9PyZ+/ONZeI2rTBX2XAbbRMI4jNnXKbYqmEfJ9UYa"
ED_FP = "CYXxJP3ImYnX2ntmTx53xR/P+p0Wa6/JLjty/vbLkgw="  # ssh-keygen prints it without the "=" padding


def test_rsa_created_fingerprint_is_sha1_of_pkcs8_der() -> None:
    key = serialization.load_pem_private_key(RSA_PEM.encode(), None)
    assert K.rsa_created_fingerprint(key) == RSA_CREATED_FP


def test_rsa_imported_fingerprint_is_md5_of_spki_der() -> None:
    assert K.parse_public_key(RSA_PUB.encode()).fingerprint == RSA_IMPORTED_FP
    # the same key with a comment, and the SPKI DER form, give the same fingerprint
    assert K.parse_public_key((RSA_PUB + " me@host\n").encode()).fingerprint == RSA_IMPORTED_FP
    key = serialization.load_pem_private_key(RSA_PEM.encode(), None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert K.parse_public_key(base64.b64encode(der)).fingerprint == RSA_IMPORTED_FP


def test_ed25519_fingerprint_is_base64_sha256_of_openssh_blob() -> None:
    k = K.parse_public_key(ED_PUB.encode())
    assert (k.key_type, k.fingerprint) == ("ed25519", ED_FP)
    assert k.public_key == ED_PUB.strip()


def test_rfc4716_ssh2_public_key_is_accepted() -> None:
    blob = RSA_PUB.split()[1]
    body = "\n".join(blob[i:i + 70] for i in range(0, len(blob), 70))
    text = f'---- BEGIN SSH2 PUBLIC KEY ----\nComment: "1024-bit RSA, \\\nconverted"\n{body}\n---- END SSH2 PUBLIC KEY ----\n'
    assert K.parse_public_key(text.encode()).fingerprint == RSA_IMPORTED_FP


@pytest.mark.parametrize("material", [
    b"", b"not a key", b"ssh-rsa", b"ssh-rsa AAAA!!!", "ssh-rsa ÄÖ".encode(),
    b"ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7",
])
def test_bad_public_keys_are_invalid_key_format(material: bytes) -> None:
    with pytest.raises(ServiceError) as e:
        K.parse_public_key(material)
    assert (e.value.code, e.value.message) == ("InvalidKey.Format", "Key is not in valid OpenSSH public key format")


def test_ecdsa_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    line = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with pytest.raises(ServiceError) as e:
        K.parse_public_key(line)
    assert e.value.code == "InvalidKey.Format"


def test_generated_rsa_is_2048_pkcs1_and_fingerprint_matches_material() -> None:
    k = K.generate("rsa", "pem")
    assert k.key_material.startswith("-----BEGIN RSA PRIVATE KEY-----")
    priv = serialization.load_pem_private_key(k.key_material.encode(), None)
    assert isinstance(priv, rsa.RSAPrivateKey) and priv.key_size == 2048
    der = priv.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    assert k.fingerprint == ":".join(f"{b:02x}" for b in hashlib.sha1(der).digest())
    assert k.public_key == K.openssh_line(priv.public_key())


def test_generated_ed25519_is_openssh_format() -> None:
    k = K.generate("ed25519", "pem")
    assert k.key_material.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    priv = serialization.load_ssh_private_key(k.key_material.encode(), None)
    assert isinstance(priv, ed25519.Ed25519PrivateKey)
    assert K.parse_public_key(k.public_key.encode()).fingerprint == k.fingerprint


def _ppk_fields(text: str) -> dict[str, str]:
    lines = text.splitlines()
    out, i = {}, 0
    while i < len(lines):
        key, _, value = lines[i].partition(": ")
        if key in ("Public-Lines", "Private-Lines"):
            n = int(value)
            out[key[:-6]] = "".join(lines[i + 1:i + 1 + n])
            i += n + 1
            continue
        out[key] = value
        i += 1
    return out


@pytest.mark.parametrize("key_type,algorithm", [("rsa", "ssh-rsa"), ("ed25519", "ssh-ed25519")])
def test_ppk_v2_mac_verifies(key_type: str, algorithm: str) -> None:
    k = K.generate(key_type, "ppk", comment="my-key")
    f = _ppk_fields(k.key_material)
    assert f["PuTTY-User-Key-File-2"] == algorithm and f["Encryption"] == "none" and f["Comment"] == "my-key"
    pub, priv = base64.b64decode(f["Public"]), base64.b64decode(f["Private"])
    assert base64.b64encode(pub).decode() == k.public_key.split()[1]

    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    mac_key = hashlib.sha1(b"putty-private-key-file-mac-key").digest()
    data = s(algorithm.encode()) + s(b"none") + s(b"my-key") + s(pub) + s(priv)
    assert hmac.new(mac_key, data, hashlib.sha1).hexdigest() == f["Private-MAC"]


def test_unknown_key_type() -> None:
    with pytest.raises(ServiceError) as e:
        K.generate("dsa")
    assert e.value.code == "InvalidParameterValue"


def test_key_pair_ids_look_like_aws() -> None:
    import re

    assert all(re.fullmatch(r"key-[0-9a-f]{17}", new_id("key")) for _ in range(50))
