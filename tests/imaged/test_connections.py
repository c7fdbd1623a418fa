"""TLS contexts per registry host: the system CA store is loaded once, and only where it is needed.

Loading it takes tens of milliseconds of CPU with the GIL held; done per host on imaged's
event loop, it stalled every other imaged call at each host's first pull.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from services.imaged.connections import ConnectionPool
from tests.support.registry import make_tls_material


def test_hosts_without_certs_d_files_share_the_system_context(tmp_path: Path) -> None:
    pool = ConnectionPool(tmp_path / "certs.d")
    contexts = [pool.get(host, insecure=False).tls for host in ("a.example:5000", "b.example")]
    assert all(c is pool.system_context for c in contexts)
    assert pool.system_context.verify_mode == ssl.CERT_REQUIRED and pool.system_context.check_hostname


def test_a_certs_d_directory_gets_a_context_of_its_own_with_the_system_cas_and_its_own(tmp_path: Path) -> None:
    material = make_tls_material(tmp_path / "pki", with_client_cert=False)
    host_dir = tmp_path / "certs.d" / "reg.example:5000"
    host_dir.mkdir(parents=True)
    (host_dir / "ca.crt").write_bytes(material.ca_cert.read_bytes())
    pool = ConnectionPool(tmp_path / "certs.d")
    own = pool.get("reg.example:5000", insecure=False).tls
    assert own is not None and own is not pool.system_context
    assert own.cert_store_stats()["x509_ca"] == pool.system_context.cert_store_stats()["x509_ca"] + 1


def test_an_insecure_host_loads_no_ca_store(tmp_path: Path) -> None:
    pool = ConnectionPool(tmp_path / "certs.d")
    context = pool.get("insecure.example", insecure=True).tls
    assert context is not None and context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0
