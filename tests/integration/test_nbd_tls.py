"""NBD over TLS (R-ATTACH-3's transport off loopback): with --nbd-tls-cert/--nbd-tls-key the
server requires STARTTLS before anything else; libnbd's nbds:// URIs with the CA read and
copy an attached volume; a client without TLS is refused."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ebscrypt.wire import nbd
from tests.helpers import new_account
from tests.integration.test_nbd_support import attach_new, launch, need, run


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certs(root: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost; returns (ca dir, cert, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ebscrypt test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_dir = root / "ca"
    ca_dir.mkdir()
    (ca_dir / "ca-cert.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "server-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "server-key.pem").write_bytes(_pem_key(key))
    (root / "server-key.pem").chmod(0o600)
    return ca_dir, root / "server-cert.pem", root / "server-key.pem"


def test_tls_required_and_served(server_factory: Any, tmp_path: Path) -> None:
    need("nbdinfo", "nbdcopy")
    ca_dir, cert, key = make_certs(tmp_path)
    srv = server_factory(["--nbd-tls-cert", str(cert), "--nbd-tls-key", str(key)])
    ec2 = srv.client("ec2", account=new_account())
    vol = attach_new(ec2, launch(ec2), "/dev/sdf", Encrypted=True)
    secure = f"nbds://127.0.0.1:{srv.nbd_port}/{vol}?tls-certificates={ca_dir}"
    out = run("nbdinfo", secure, timeout=60).stdout
    assert "with TLS" in out and "export-size: 1073741824" in out
    # without TLS: refused (libnbd's nbd:// does not ask for TLS)
    assert run("nbdinfo", f"nbd://127.0.0.1:{srv.nbd_port}/{vol}", timeout=30, check=False).returncode != 0
    raw = socket.create_connection(("127.0.0.1", srv.nbd_port), timeout=10)
    raw.recv(18)
    raw.sendall(struct.pack(">I", 3))
    name = vol.encode()
    raw.sendall(struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, 6 + len(name)) + struct.pack(">I", len(name))
                + name + b"\0\0")
    magic, _opt, kind, _length = struct.unpack(">QIII", raw.recv(20))
    assert magic == nbd.OPTION_REPLY_MAGIC and kind == nbd.REP_ERR_TLS_REQD
    raw.close()
    # data both ways through TLS
    image = tmp_path / "data.img"
    image.write_bytes(b"\x5c" * (2 * 1024 * 1024))
    run("nbdcopy", "--flush", str(image), secure, timeout=120)
    back = tmp_path / "back.img"
    run("nbdcopy", secure, str(back), timeout=300)
    assert back.read_bytes()[:2 * 1024 * 1024] == image.read_bytes()
    # structured replies and block status on the TLS (event-loop) transmission path too
    extents = run("nbdinfo", "--map", secure, timeout=60).stdout.splitlines()
    assert extents[0].split()[:3] == ["0", str(2 * 1024 * 1024), "0"], extents
    assert all(line.split()[2] == "3" for line in extents[1:]), extents



def test_non_loopback_nbd_needs_tls(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ebscrypt", "serve", "--data-dir", str(tmp_path / "d"),
                           "--port", "0", "--nbd-host", "0.0.0.0", "--nbd-port", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "requires TLS" in proc.stderr
