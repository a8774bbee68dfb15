"""TLS contexts from the configuration, for the DICOM listener, the DICOM client and
the STOW-RS client. TLS 1.2 at least; certificates are verified unless IT gave no CA
for a server that does not ask for client certificates."""

from __future__ import annotations

import ssl

from node.config import ClientTls, ServerTls


def server_context(tls: ServerTls) -> ssl.SSLContext:
    """The context a TLS service of the node presents; mutual when CAs are given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.certificate, tls.key)
    if tls.ca_certificates is not None:
        context.load_verify_locations(tls.ca_certificates)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """The context the node calls a TLS peer with: the peer's certificate verified."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_certificates)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.certificate is not None and tls.key is not None:
        context.load_cert_chain(tls.certificate, tls.key)
    return context
