"""Asymmetric KMS keys (RSA, ECC NIST curves): generation, RSA-OAEP, signatures.

Private keys are serialized (PKCS#8 DER) only to be wrapped by the key store; public
keys are DER SubjectPublicKeyInfo as GetPublicKey returns them.
"""

from __future__ import annotations

import hmac
import os
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
ECC_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
    "ECC_SECG_P256K1": ec.SECP256K1,
}
HMAC_BYTES = {"HMAC_224": 28, "HMAC_256": 32, "HMAC_384": 48, "HMAC_512": 64}
SUPPORTED_SPECS = ("SYMMETRIC_DEFAULT", *RSA_BITS, *ECC_CURVES, *HMAC_BYTES)
USAGES = {
    "SYMMETRIC_DEFAULT": ("ENCRYPT_DECRYPT",),
    **{s: ("GENERATE_VERIFY_MAC",) for s in HMAC_BYTES},
    **{s: ("ENCRYPT_DECRYPT", "SIGN_VERIFY") for s in RSA_BITS},
    **{s: ("SIGN_VERIFY",) for s in ECC_CURVES},
}
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384, "SHA_512": hashes.SHA512, "SHA_1": hashes.SHA1}
_ECC_ALG = {
    "ECC_NIST_P256": "ECDSA_SHA_256",
    "ECC_NIST_P384": "ECDSA_SHA_384",
    "ECC_NIST_P521": "ECDSA_SHA_512",
    "ECC_SECG_P256K1": "ECDSA_SHA_256",
}
_RSA_SIGNING = tuple(
    f"{scheme}_{h}" for scheme in ("RSASSA_PSS", "RSASSA_PKCS1_V1_5") for h in ("SHA_256", "SHA_384", "SHA_512")
)


def generate(key_spec: str) -> tuple[bytes, bytes | None]:
    """(private key PKCS#8 DER, public key SPKI DER); HMAC keys: (random key, None)."""
    if key_spec in HMAC_BYTES:
        return os.urandom(HMAC_BYTES[key_spec]), None
    priv: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if key_spec in RSA_BITS:
        priv = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS[key_spec])
    elif key_spec in ECC_CURVES:
        priv = ec.generate_private_key(ECC_CURVES[key_spec]())
    else:
        raise ValueError(key_spec)
    der = priv.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der, pub


def encryption_algorithms(key_spec: str, key_usage: str) -> tuple[str, ...]:
    if key_usage != "ENCRYPT_DECRYPT":
        return ()
    if key_spec == "SYMMETRIC_DEFAULT":
        return ("SYMMETRIC_DEFAULT",)
    if key_spec in RSA_BITS:
        return ("RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256")
    return ()


def signing_algorithms(key_spec: str) -> tuple[str, ...]:
    if key_spec in RSA_BITS:
        return _RSA_SIGNING
    if key_spec in ECC_CURVES:
        return (_ECC_ALG[key_spec],)
    return ()


def _hash_of(alg: str) -> hashes.HashAlgorithm:
    name = "SHA_1" if alg.endswith("SHA_1") else alg[-7:]
    return _HASHES[name]()


def digest_size(alg: str) -> int:
    return _hash_of(alg).digest_size


def max_plaintext(key_spec: str, alg: str) -> int:
    """RSA-OAEP: k - 2*hLen - 2 bytes."""
    return RSA_BITS[key_spec] // 8 - 2 * _hash_of(alg).digest_size - 2


def _oaep(alg: str) -> padding.OAEP:
    h = _hash_of(alg)
    return padding.OAEP(mgf=padding.MGF1(algorithm=h), algorithm=h, label=None)


def rsa_encrypt(public_der: bytes, plaintext: bytes, alg: str) -> bytes:
    pub = serialization.load_der_public_key(public_der)
    assert isinstance(pub, rsa.RSAPublicKey)
    return pub.encrypt(plaintext, _oaep(alg))


def rsa_decrypt(private_der: bytes, ciphertext: bytes, alg: str) -> bytes:
    priv = serialization.load_der_private_key(private_der, password=None)
    assert isinstance(priv, rsa.RSAPrivateKey)
    return priv.decrypt(ciphertext, _oaep(alg))  # ValueError on failure


def _sig_args(alg: str, digest: bool) -> tuple[object, hashes.HashAlgorithm | utils.Prehashed]:
    h = _hash_of(alg)
    algo: hashes.HashAlgorithm | utils.Prehashed = utils.Prehashed(h) if digest else h
    if alg.startswith("RSASSA_PSS"):
        return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), algo
    if alg.startswith("RSASSA_PKCS1"):
        return padding.PKCS1v15(), algo
    return ec.ECDSA(algo), algo


def sign(private_der: bytes, message: bytes, alg: str, *, digest: bool) -> bytes:
    priv = serialization.load_der_private_key(private_der, password=None)
    pad, algo = _sig_args(alg, digest)
    if isinstance(priv, rsa.RSAPrivateKey):
        return priv.sign(message, pad, algo)  # type: ignore[arg-type]
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    return priv.sign(message, pad)  # type: ignore[arg-type]


def verify(public_der: bytes, message: bytes, signature: bytes, alg: str, *, digest: bool) -> bool:
    pub = serialization.load_der_public_key(public_der)
    pad, algo = _sig_args(alg, digest)
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(signature, message, pad, algo)  # type: ignore[arg-type]
        else:
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            pub.verify(signature, message, pad)  # type: ignore[arg-type]
    except (InvalidSignature, ValueError):
        return False
    return True


# --------------------------------------------------------------------------- HMAC


def mac_algorithms(key_spec: str) -> tuple[str, ...]:
    return (f"HMAC_SHA_{key_spec[5:]}",) if key_spec in HMAC_BYTES else ()


def generate_mac(key: bytes, message: bytes, alg: str) -> bytes:
    return hmac.new(key, message, f"sha{alg.rsplit('_', 1)[1]}").digest()


def verify_mac(key: bytes, message: bytes, mac: bytes, alg: str) -> bool:
    return hmac.compare_digest(generate_mac(key, message, alg), mac)


# ------------------------------------------------------------------ data key pairs

KEY_PAIR_SPECS = (*RSA_BITS, "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1")
