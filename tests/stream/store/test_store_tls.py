"""TLS to a real clickhouse-server: the URL options ``secure``, ``verify`` and ``ca_certs`` end to end."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from finsent.bench.clickhouse_server import ClickHouseServer
from finsent.stream.store import StoreError, StoreUnavailable, open_store

pytestmark = pytest.mark.integration


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("openssl is not installed: run `apt-get install openssl`", pytrace=False)
    cert, key = tmp / "server.crt", tmp / "server.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_options(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = ClickHouseServer(tmp_path / "srv", tls_cert=cert, tls_key=key)
    server.start()
    base = f"clickhouse://default@127.0.0.1:{server.tls_port}/tls_db?secure=1"
    try:
        for url in (f"{base}&ca_certs={cert}", f"{base}&verify=0"):
            store = open_store(url)
            try:
                store.ensure_schema()
                assert store.count() == {"rows": 0, "unique_ids": 0}
                assert "secure=1" in store.url_redacted
            finally:
                store.close()
        store = open_store(base)  # verifying against the system CAs must refuse a self-signed cert
        try:
            with pytest.raises(StoreError, match="ca_certs") as info:
                store.count()
            assert not isinstance(info.value, StoreUnavailable)
        finally:
            store.close()
    finally:
        server.stop()
