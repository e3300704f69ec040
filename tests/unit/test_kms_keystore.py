"""Key stores (engines/kms/keystore.py, pkcs11_store.py): the root of trust wraps and unwraps
KMS key material and gives no key bytes out (issue 14; SPEC R-KEY-1: material at rest only
wrapped). PKCS#11 tests run against a SoftHSM2 token of their own and skip without it."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from ebscrypt.engines.kms.keystore import (
    FileKeyStore,
    KeyStoreUnavailable,
    KeyWrapper,
    Mechanism,
    RootKeyError,
    open_key_store,
    split_header,
)
from tests.hsm_support import SoftHsm, make_token
from tests.helpers import kms_op

KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
MID = "00" * 16
MATERIAL = os.urandom(32)


# ------------------------------------------------------------------------ file store


def test_file_store_reads_rows_from_before_key_stores(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "root.key")
    legacy = KeyWrapper((tmp_path / "root.key").read_bytes()).wrap(KEY_ID, MID, MATERIAL)
    assert store.holds(None)
    assert store.unwrap(KEY_ID, MID, legacy, None) == MATERIAL
    ref, blob = store.wrap(KEY_ID, MID, MATERIAL)
    assert ref.startswith("file:kid=") and ref == store.current_ref()
    assert split_header(blob)[0] is Mechanism.FILE_AES_GCM
    assert store.unwrap(KEY_ID, MID, blob, ref) == MATERIAL
    with pytest.raises(RootKeyError):  # bound to its row
        store.unwrap(KEY_ID, "11" * 16, blob, ref)
    other = FileKeyStore(tmp_path / "other.key")
    assert not other.holds(ref)
    with pytest.raises(RootKeyError, match="wrapped by"):
        other.unwrap(KEY_ID, MID, blob, ref)


def test_file_store_refuses_a_readable_root_key_file(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    FileKeyStore(path)
    path.chmod(0o640)
    with pytest.raises(RootKeyError, match=r"mode 0640: group or others may read it; run: chmod 600"):
        FileKeyStore(path)
    path.chmod(0o600)
    FileKeyStore(path)


def test_passphrase_sealed_root_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBS_PASS", "correct horse battery staple")
    uri = f"file:{tmp_path / 'sealed.key'}?passphrase-env=EBS_PASS"
    store = open_key_store(uri, tmp_path)
    raw = (tmp_path / "sealed.key").read_bytes()
    assert raw[:4] == b"ERK1" and len(raw) == 83  # not the 32 raw bytes
    ref, blob = store.wrap(KEY_ID, MID, MATERIAL)
    # the same passphrase from a file opens it again
    pass_file = tmp_path / "pass"
    pass_file.write_text("correct horse battery staple\n")
    again = open_key_store(f"file:{tmp_path / 'sealed.key'}?passphrase-file={pass_file}", tmp_path)
    assert again.current_ref() == ref and again.unwrap(KEY_ID, MID, blob, ref) == MATERIAL
    monkeypatch.setenv("EBS_PASS", "wrong")
    with pytest.raises(RootKeyError, match="wrong passphrase"):
        open_key_store(uri, tmp_path)
    with pytest.raises(RootKeyError, match="sealed by a passphrase"):
        open_key_store(f"file:{tmp_path / 'sealed.key'}", tmp_path)
    monkeypatch.delenv("EBS_PASS")
    with pytest.raises(RootKeyError, match="EBS_PASS is not set"):
        open_key_store(uri, tmp_path)
    with pytest.raises(RootKeyError, match="unknown file key store option"):
        open_key_store(f"file:{tmp_path / 'x.key'}?passphrase=inline", tmp_path)
    with pytest.raises(RootKeyError, match="must be file:PATH or a pkcs11: URI"):
        open_key_store("vault:whatever", tmp_path)


# ----------------------------------------------------------------------- PKCS#11 store


@pytest.fixture
def hsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SoftHsm:
    token = make_token(tmp_path / "hsm")
    token.activate(monkeypatch)
    return token


def _store(hsm: SoftHsm, **extra: str):  # type: ignore[no-untyped-def]
    store = open_key_store(hsm.uri(**extra), Path("/nonexistent"))
    if not store.root_ids:  # type: ignore[attr-defined]
        store.create_root()  # type: ignore[attr-defined]
    return store


def test_pkcs11_root_key_is_made_in_the_token_and_wraps_with_aad(hsm: SoftHsm) -> None:
    store = _store(hsm)
    try:
        assert store.kind == "pkcs11" and store.mechanism is Mechanism.PKCS11_AES_GCM
        ref, blob = store.wrap(KEY_ID, MID, MATERIAL)
        assert re.fullmatch(rf"pkcs11:token=ebscrypt;serial=[0-9a-f]+;object=ebscrypt-root;id={'%00' * 7}%01", ref)
        assert split_header(blob)[0] is Mechanism.PKCS11_AES_GCM and MATERIAL not in blob
        assert store.unwrap(KEY_ID, MID, blob, ref) == MATERIAL
        with pytest.raises(RootKeyError, match="does not unwrap"):  # AAD: another row
            store.unwrap(KEY_ID, "11" * 16, blob, ref)
        attrs = store.describe_root(store.root_ids[0])
        assert attrs == {"sensitive": True, "extractable": False, "token": True}
        listing = hsm.list_objects()
        assert "sensitive" in listing and "never extractable" in listing
        # init is idempotent: the same object, no second one
        again = open_key_store(hsm.uri(), Path("/nonexistent"))
        assert again.root_ids == store.root_ids
        again.close()
    finally:
        store.close()


def test_pkcs11_key_wrap_pad_blobs_coexist_with_gcm(hsm: SoftHsm) -> None:
    gcm = _store(hsm)
    kwp = _store(hsm, **{"x-mechanism": "aes-key-wrap-pad"})
    try:
        assert kwp.mechanism is Mechanism.PKCS11_AES_KEY_WRAP_PAD
        rsa_like = os.urandom(1217)  # not a multiple of 8: RFC 5649 padding
        ref, blob = kwp.wrap(KEY_ID, MID, rsa_like)
        assert split_header(blob)[0] is Mechanism.PKCS11_AES_KEY_WRAP_PAD
        # the header says how: a GCM-configured store unwraps it, and the reverse
        assert gcm.unwrap(KEY_ID, MID, blob, ref) == rsa_like
        ref2, blob2 = gcm.wrap(KEY_ID, MID, MATERIAL)
        assert kwp.unwrap(KEY_ID, MID, blob2, ref2) == MATERIAL
        with pytest.raises(RootKeyError):  # the AAD digest inside binds it to its row
            kwp.unwrap("ffffffff-12ab-34cd-56ef-1234567890ab", MID, blob, ref)
    finally:
        gcm.close()
        kwp.close()


def test_pkcs11_wrong_pin_missing_token_or_root_is_a_clear_error(hsm: SoftHsm, tmp_path: Path) -> None:
    wrong = hsm.uri().split("?")[0] + f"?module-path={hsm.module}&pin-value=0000"
    with pytest.raises(RootKeyError, match="wrong PIN for PKCS#11 token 'ebscrypt'"):
        open_key_store(wrong, tmp_path)
    with pytest.raises(RootKeyError, match="no PKCS#11 token labelled 'elsewhere'"):
        open_key_store(hsm.uri().replace("token=ebscrypt", "token=elsewhere"), tmp_path)
    with pytest.raises(RootKeyError, match="module-path"):
        open_key_store("pkcs11:token=ebscrypt;object=x", tmp_path)
    store = open_key_store(hsm.uri(), tmp_path)
    try:
        with pytest.raises(RootKeyError, match="holds no root key 'ebscrypt-root'.*keystore init"):
            store.current_ref()
    finally:
        store.close()


def test_pkcs11_token_gone_at_run_time_is_retryable_then_recovers(hsm: SoftHsm) -> None:
    import time

    import pkcs11

    store = _store(hsm)
    try:
        ref, blob = store.wrap(KEY_ID, MID, MATERIAL)
        # a dropped connection (module finalized under the store): reconnects by itself
        pkcs11.lib(hsm.module).finalize()
        assert store.unwrap(KEY_ID, MID, blob, ref) == MATERIAL
        # the token pulled out (its files gone): retryable errors, no crash
        tokens, away = hsm.dir / "tokens", hsm.dir / "tokens-away"
        tokens.rename(away)
        tokens.mkdir()
        try:
            with pytest.raises(KeyStoreUnavailable, match="unavailable"):
                store.unwrap(KEY_ID, MID, blob, ref)
            with pytest.raises(KeyStoreUnavailable):
                store.wrap(KEY_ID, MID, MATERIAL)
        finally:
            tokens.rmdir()
            away.rename(tokens)
        time.sleep(0.25)  # the module is restarted at most every 0.2 s
        # put back: the next call reconnects and logs in again by itself
        assert store.unwrap(KEY_ID, MID, blob, ref) == MATERIAL
    finally:
        store.close()


def test_pkcs11_threads_share_the_store(hsm: SoftHsm) -> None:
    store = _store(hsm)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(30):
                mid = f"{n:02x}{i:030x}"
                material = os.urandom(32)
                ref, blob = store.wrap(KEY_ID, mid, material)
                assert store.unwrap(KEY_ID, mid, blob, ref) == material
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    assert not errors, errors


# ------------------------------------------------------------------ the material cache


def test_unwrapped_material_is_cached_only_while_the_key_is_usable(tmp_path: Path) -> None:
    from tests.unit.test_kms_engine import CA, cmk, make_engine

    engine = make_engine(tmp_path / "d")
    try:
        key_id = cmk(engine)["KeyId"]
        blob = kms_op(engine, "Encrypt", CA, {"KeyId": key_id, "Plaintext": b"p"})["CiphertextBlob"]
        cached = lambda: [k for k in engine.materials.held() if k[0] == key_id]  # noqa: E731
        assert len(cached()) == 1
        kms_op(engine, "DisableKey", CA, {"KeyId": key_id})
        assert cached() == []  # disabled: the plaintext material leaves memory
        kms_op(engine, "EnableKey", CA, {"KeyId": key_id})
        assert kms_op(engine, "Decrypt", CA, {"CiphertextBlob": blob})["Plaintext"] == b"p"  # unwrapped again
        assert len(cached()) == 1
        kms_op(engine, "ScheduleKeyDeletion", CA, {"KeyId": key_id, "PendingWindowInDays": 7})
        assert cached() == []
    finally:
        engine.close()
        engine.db.dispose()
