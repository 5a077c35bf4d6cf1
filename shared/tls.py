"""The certificate authority `trainyard up --listen` makes in its data dir, and the server
certificate it signs for NATS and the gateway. A joining host pins the CA by its SHA-256 (the
`--ca-pin` of the join command), as kubeadm's discovery hash does, and trusts nothing else."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.paths import write_private

CA_FILE = "ca.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server.key"
PIN_PREFIX = "sha256:"


def tls_dir(data_dir: Path) -> Path:
    return data_dir / "tls"


def ca_pin(ca_pem: bytes) -> str:
    """`sha256:<hex>` of the CA certificate (DER): what a joining host compares."""
    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    return PIN_PREFIX + hashlib.sha256(der).hexdigest()


def local_names() -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) this machine answers to: its hostname, localhost, and the
    address of every interface."""
    addresses = {"127.0.0.1", "::1"}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                addresses.add(entry.address.split("%")[0])
    return sorted({socket.gethostname(), "localhost"}), sorted(addresses)


def ensure_certificates(data_dir: Path, extra_names: list[str] | None = None) -> Path:
    """The CA (made once) and a server certificate for this machine's names and addresses
    (made again when an address is new, e.g. `--advertise`). Returns the tls dir."""
    folder = tls_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key_path, ca_path = folder / "ca.key", folder / CA_FILE
    if not ca_path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"trainyard CA {socket.gethostname()}")])
        cert = (_builder(ca_name, ca_name, key.public_key(), days=3650)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        write_private(ca_key_path, _key_pem(key))
        write_private(ca_path, cert.public_bytes(serialization.Encoding.PEM))
    dns, ips = local_names()
    for name in extra_names or []:
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    _server_certificate(folder, sorted(set(dns)), sorted(set(ips)))
    return folder


def _server_certificate(folder: Path, dns: list[str], ips: list[str]) -> None:
    cert_path = folder / CERT_FILE
    wanted = {*(x509.DNSName(n) for n in dns), *(x509.IPAddress(ipaddress.ip_address(a)) for a in ips)}
    if cert_path.exists():
        have = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = set(have.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        if wanted <= names:
            return
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((folder / CA_FILE).read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"trainyard {socket.gethostname()}")])
    cert = (_builder(subject, ca.subject, key.public_key(), days=825)
            .add_extension(x509.SubjectAlternativeName(sorted(wanted, key=str)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(folder / KEY_FILE, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def client_context(ca_file: str | Path) -> ssl.SSLContext:
    """Trust only this CA (host names checked)."""
    return ssl.create_default_context(cafile=str(ca_file))
