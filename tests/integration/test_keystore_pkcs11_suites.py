"""A selection of the KMS and EBS integration tests, run again against a server whose root of
trust is a PKCS#11 token (SoftHSM2, a token of this module's own): ``--key-store pkcs11:…``.
The test functions are the ones of test_kms_api.py / test_ebs.py (imported, so collected
here too); this module's ``server``/``endpoint``/``aws`` fixtures replace the session
server. Without SoftHSM2 they skip with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ServerProcess, client_factory
from tests.hsm_support import ebscrypt, make_token, missing_reason
from tests.integration.test_ebs import (  # noqa: F401 - fixtures and tests collected here
    account,
    ebs,
    ec2,
    test_customer_key,
    test_data_dir_holds_no_plaintext,
    test_parent_under_another_key_is_reencrypted,
    test_random_data_round_trip_encrypted,
    test_snapshot_copies_volumes_and_snapshots_of_volumes_read_back,
)
from tests.integration.test_kms_api import (  # noqa: F401 - fixtures and tests collected here
    kms_a,
    kms_b,
    test_aws_managed_ebs_key,
    test_data_key_pairs,
    test_disable_enable_and_schedule_cancel,
    test_encrypt_decrypt_with_and_without_key_id,
    test_generate_data_key_variants,
    test_grant_lets_another_account_use_a_key_and_revoke_ends_it,
    test_hmac_keys,
    test_on_demand_rotation_keeps_old_ciphertexts_readable,
    test_reencrypt,
    test_rsa_encrypt_decrypt_and_too_large_plaintext,
    test_sign_verify_ecc_and_rsa,
    test_tamper_and_wrong_context_are_refused,
)

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("pkcs11-suite")
    hsm = make_token(base / "hsm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", str(hsm.conf))
        data = base / "data"
        out = ebscrypt("keystore", "init", "--data-dir", str(data), "--key-store", hsm.uri(), env=hsm.env())
        assert out.returncode == 0, out.stderr
        srv = ServerProcess(data, ["--key-store", hsm.uri()]).start()
        yield srv
        srv.stop()
    assert not (data / "root.key").exists()


@pytest.fixture(scope="module")
def endpoint(server: ServerProcess) -> str:
    return server.url


@pytest.fixture(scope="module")
def aws(endpoint: str) -> Callable[..., Any]:
    return client_factory(endpoint)


def test_the_server_runs_on_the_token(server: ServerProcess) -> None:
    assert "--key-store" in server.extra_args and server.extra_args[1].startswith("pkcs11:")
    assert not Path(server.data_dir / "root.key").exists()
