"""What `make run-prod` prepares on one machine: the database, a secret key, a TLS certificate.

python -m newsletter.trial database URL       create the PostgreSQL database when missing
python -m newsletter.trial secret-key PATH    print the key kept in PATH, made once (0600)
python -m newsletter.trial certificate DIR    a self-signed certificate for localhost in DIR
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import sys
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url


def ensure_database(url: str) -> bool:
    """Create the database a PostgreSQL URL names when the server does not have it yet."""
    parts = make_url(url)
    name = parts.database
    if not parts.drivername.startswith("postgresql") or not name:
        return False
    conninfo = {
        "host": parts.host or "127.0.0.1",
        "port": parts.port or 5432,
        "user": parts.username,
        "password": parts.password,
        "dbname": "postgres",
        "connect_timeout": 5,
    }
    with psycopg.connect(**{k: v for k, v in conninfo.items() if v}, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return True


def secret_key(path: Path) -> str:
    """The key kept in `path`, generated on first use, readable by its owner only."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made once; (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = folder / "tls-cert.pem", folder / "tls-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def main(argv: list[str]) -> int:
    """The three steps, one per call, for the Makefile."""
    if len(argv) != 2 or argv[0] not in ("database", "secret-key", "certificate"):
        print(__doc__, file=sys.stderr)
        return 2
    what, arg = argv
    if what == "database":
        if ensure_database(arg):
            print(f"Created the database {make_url(arg).database}.", file=sys.stderr)
    elif what == "secret-key":
        print(secret_key(Path(arg)))
    else:
        cert, key = certificate(Path(arg))
        print(f"{cert} {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
