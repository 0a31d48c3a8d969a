"""Run a private clickhouse-server (e.g. Debian's 18.16) on loopback, for tests and benchmarks.

The server gets a config written into its own directory (free ports on 127.0.0.1, every path
under ``root``, a users.xml with a password-less ``default`` user reachable from loopback only),
so it never touches /etc/clickhouse-server or /var/lib/clickhouse and needs no root or systemd.
The config lives in ``root/conf``: chdb reads ``./config.xml`` from the current directory, so a
server config must never sit in a directory a finsent process runs from.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from finsent.stream.broker import free_port

INSTALL_HINT = "clickhouse-server is not installed: run `apt-get install clickhouse-server` (Debian/Ubuntu)"

CONFIG_XML = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{root}/log/server.log</log><errorlog>{root}/log/error.log</errorlog>
    <size>10M</size><count>1</count><console>0</console></logger>
  <listen_host>127.0.0.1</listen_host>
  <tcp_port>{tcp_port}</tcp_port>
  <http_port>{http_port}</http_port>
  <path>{root}/data/</path>
  <tmp_path>{root}/tmp/</tmp_path>
  <user_files_path>{root}/user_files/</user_files_path>
  <format_schema_path>{root}/format_schemas/</format_schema_path>
  <users_config>{root}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>64</max_concurrent_queries>{tls}
</yandex>
"""

TLS_XML = """
  <tcp_port_secure>{tls_port}</tcp_port_secure>
  <openSSL><server><certificateFile>{cert}</certificateFile><privateKeyFile>{key}</privateKeyFile>
    <verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile>
    <cacheSessions>true</cacheSessions><disableProtocols>sslv2,sslv3</disableProtocols>
    <preferServerCiphers>true</preferServerCiphers></server></openSSL>"""

USERS_XML = """<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default>{extra_users}</users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


class ServerNotInstalled(FileNotFoundError):
    """No clickhouse-server binary on this machine."""


def server_command() -> list[str]:
    """How to run the server binary: ``clickhouse-server`` or ``clickhouse server``."""
    for name in ("clickhouse-server", "/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"):
        path = shutil.which(name)
        if path:
            return [path]
    for name in ("clickhouse", "/usr/bin/clickhouse"):
        path = shutil.which(name)
        if path:
            return [path, "server"]
    raise ServerNotInstalled(INSTALL_HINT)


class ClickHouseServer:
    """A clickhouse-server process on 127.0.0.1 with all its state under ``root``."""

    def __init__(
        self,
        root: Path,
        tcp_port: int | None = None,
        http_port: int | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        """With ``tls_cert``/``tls_key`` (PEM) the server also speaks TLS on ``self.tls_port``;
        ``users`` adds loopback-only users with these passwords (stored as SHA-256)."""
        self.root = Path(root)
        self.tcp_port = tcp_port or free_port()
        self.http_port = http_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        for sub in ("log", "data", "tmp", "user_files", "format_schemas", "conf"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # the config lives in conf/, never in a directory a test may chdir to: chdb reads ./config.xml
        self.config = self.root / "conf" / "config.xml"
        self.tls_port = free_port() if tls_cert else None
        tls = TLS_XML.format(tls_port=self.tls_port, cert=tls_cert, key=tls_key) if tls_cert else ""
        self.config.write_text(
            CONFIG_XML.format(root=self.root, tcp_port=self.tcp_port, http_port=self.http_port, tls=tls)
        )
        extra = "".join(
            f"\n    <{name}><password_sha256_hex>{hashlib.sha256(pw.encode()).hexdigest()}</password_sha256_hex>"
            f"<networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota>"
            f"</{name}>"
            for name, pw in (users or {}).items()
        )
        (self.root / "users.xml").write_text(USERS_XML.format(extra_users=extra))

    def url(self, database: str = "finsent_test") -> str:
        return f"clickhouse://default@127.0.0.1:{self.tcp_port}/{database}"

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ping", timeout=1) as resp:
                return resp.read().strip() == b"Ok."
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until it answers; returns the start-up time in seconds."""
        cmd = server_command() + [f"--config-file={self.config}"]
        t0 = time.monotonic()
        log = open(self.root / "log" / "stdout.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True)
        log.close()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clickhouse-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ping():
                self.startup_s = time.monotonic() - t0
                return self.startup_s
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"clickhouse-server did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0, kill: bool = False) -> None:
        """SIGTERM (graceful; 18.16 waits for open client connections, hence the short timeout
        before SIGKILL), or straight SIGKILL with ``kill=True`` (a crash, as in fault injection)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def log_tail(self, n: int = 30) -> str:
        out = []
        for name in ("stdout.log", "error.log"):
            p = self.root / "log" / name
            if p.exists():
                out += p.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(out)
