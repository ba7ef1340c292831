"""The server's own TLS for direct gRPC: certificate and key from files, re-read when they change.

gRPC asks `fetch` for the certificates on every new connection; it answers None (keep the
current ones) unless a file's inode, size or time changed, and then the files are read and
checked (the key matches the certificate) before they replace the current ones. A rotated
Secret is served to the next connection, without a restart; a half-written or mismatched
pair keeps the previous one (and says so in the log). With a client CA, every client must
present a certificate it signed (mTLS).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

_log = logging.getLogger(__name__)


class CertificateFiles:
    """A certificate chain, its key and (for mTLS) the client CA, as files."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self._files = [cert_file, key_file] + ([client_ca_file] if client_ca_file else [])
        self.mutual = client_ca_file is not None
        self._stamp = self._stamps()
        self.current = self._load()

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        stats = [os.stat(path) for path in self._files]  # follows a Secret volume's swapped symlink
        return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        """The files read and checked: ValueError (never their contents) if they do not fit together."""
        chain, key = self._files[0].read_bytes(), self._files[1].read_bytes()
        try:
            leaf = x509.load_pem_x509_certificates(chain)[0]
            private = serialization.load_pem_private_key(key, password=None)
        except (ValueError, TypeError, IndexError):
            raise ValueError("the certificate or key file is not PEM (or the key is encrypted)") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        if leaf.public_key().public_bytes(serialization.Encoding.DER, public) != private.public_key().public_bytes(
            serialization.Encoding.DER, public
        ):
            raise ValueError("the key does not belong to the certificate")
        roots = None
        if self.mutual:
            roots = self._files[2].read_bytes()
            try:
                x509.load_pem_x509_certificates(roots)
            except ValueError:
                raise ValueError("the client CA file is not PEM") from None
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=roots)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC for each new connection: new certificates if the files changed, else None."""
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            config = self._load()
        except (OSError, ValueError) as err:
            detail = str(err) if isinstance(err, ValueError) else type(err).__name__
            _log.error("TLS files: cannot reload (%s); keeping the previous certificate", detail)
            return None
        self._stamp, self.current = stamp, config
        _log.info("TLS files: reloaded the certificate")
        return config


def server_credentials(cert_file: str, key_file: str, client_ca_file: str) -> grpc.ServerCredentials:
    """TLS credentials from the files (mTLS with a client CA); a bad file stops the start."""
    try:
        files = CertificateFiles(Path(cert_file), Path(key_file), Path(client_ca_file) if client_ca_file else None)
    except (OSError, ValueError) as err:
        detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {getattr(err, 'filename', '')}"
        raise SystemExit(f"TLS: {detail}") from None
    fetch: Any = files.fetch  # grpc-stubs omit that None means "unchanged"
    return grpc.dynamic_ssl_server_credentials(files.current, fetch, require_client_authentication=files.mutual)
