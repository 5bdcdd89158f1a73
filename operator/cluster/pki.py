"""Certificates and keys for the local control plane, generated fresh for every `up`.

The apiserver only speaks TLS and RBAC decides by certificate subject, so each client gets its own
certificate: the admin (`system:masters`), the controller-manager and the scheduler under the user
names their bootstrap RBAC roles are bound to, and kwok. EC P-256 keys keep generation instant.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The first address of the service range (see controlplane.SERVICE_CIDR): the `kubernetes` Service.
KUBERNETES_SERVICE_IP = "10.96.0.1"
VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Client:
    """One client identity: the certificate subject RBAC sees and the file stem it is written to."""

    stem: str
    user: str
    groups: tuple[str, ...] = ()


ADMIN = Client("admin", "mlplane-admin", ("system:masters",))
CONTROLLER_MANAGER = Client("controller-manager", "system:kube-controller-manager")
SCHEDULER = Client("scheduler", "system:kube-scheduler")
# kwok patches node and pod status and node leases cluster-wide; a dev cluster grants it all.
KWOK = Client("kwok", "kwok", ("system:masters",))
CLIENTS = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK)


@dataclass(frozen=True)
class Pki:
    """Paths of everything generated; see `generate`."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA that signs every certificate below; also the client CA of the apiserver."""
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """Kept so the controller-manager can sign CSRs."""
        return self.directory / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        """Serving certificate, valid for 127.0.0.1, localhost and the in-cluster service names."""
        return self.directory / "apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        """Key of `apiserver_cert`."""
        return self.directory / "apiserver.key"

    @property
    def service_account_key(self) -> Path:
        """Signs service-account tokens (controller-manager and apiserver)."""
        return self.directory / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        """Verifies service-account tokens (apiserver)."""
        return self.directory / "sa.pub"

    def client_cert(self, client: Client) -> Path:
        """Certificate of one client identity."""
        return self.directory / f"{client.stem}.crt"

    def client_key(self, client: Client) -> Path:
        """Key of one client identity."""
        return self.directory / f"{client.stem}.key"


def generate(directory: Path) -> Pki:
    """Write a new CA, the apiserver's serving pair, service-account keys and all client pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlplane-local-ca")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(pki.ca_cert, pki.ca_key, ca_cert, ca_key)

    names = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    addresses = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address(KUBERNETES_SERVICE_IP)]
    sans = x509.SubjectAlternativeName(
        [x509.DNSName(name) for name in names] + [x509.IPAddress(ip) for ip in addresses]
    )
    _issue(
        pki.apiserver_cert,
        pki.apiserver_key,
        "kube-apiserver",
        (),
        ca_cert,
        ca_key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
    )
    for client in CLIENTS:
        _issue(
            pki.client_cert(client),
            pki.client_key(client),
            client.user,
            client.groups,
            ca_cert,
            ca_key,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            None,
        )

    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki.service_account_key, sa_key)
    pki.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    # Backdated a little so a clock that is a few seconds behind does not reject a new certificate.
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
    )


def _issue(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    organizations: tuple[str, ...],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    sans: x509.SubjectAlternativeName | None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )
    builder = (
        _builder(subject, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans is not None:
        builder = builder.add_extension(sans, critical=False)
    _write_pair(cert_path, key_path, builder.sign(ca_key, hashes.SHA256()), key)


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
