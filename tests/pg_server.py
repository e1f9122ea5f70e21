"""A real PostgreSQL server for the fleet-store tests: Debian's binaries, started by the tests on
loopback in a temporary directory (as the `postgres` user when the tests run as root, since
initdb refuses root), with password (SCRAM) authentication and TLS, stopped at the end."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SUPERUSER, SUPERPASS = "tokbench_admin", "s3cret-admin-pw"


def bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    root: Path
    port: int
    bin: Path

    def url(self, user: str = SUPERUSER, password: str = SUPERPASS, database: str = "postgres") -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def ctl(self, *args: str) -> None:
        subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), *args),
                       check=True, capture_output=True, timeout=120)

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run SQL as the superuser with psql; its output."""
        env = {**os.environ, "PGPASSWORD": SUPERPASS}
        out = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                              SUPERUSER, "-d", database, "-v", "ON_ERROR_STOP=1", "-tAc", statement],
                             env=env, check=True, capture_output=True, text=True, timeout=60)
        return out.stdout.strip()


def start() -> PgServer:
    bin_ = bindir()
    if bin_ is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="tokbench-pg-"))
    os.chmod(root, 0o755)
    (root / "pwfile").write_text(SUPERPASS + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pwfile", "postgres")
    server = PgServer(root, _free_port(), bin_)
    subprocess.run(server._as_owner(str(bin_ / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER,
                                    "--pwfile", str(root / "pwfile"), "--auth=scram-sha-256",
                                    "-E", "UTF8", "--no-instructions"),
                   check=True, capture_output=True, timeout=120)
    # TLS with a self-signed certificate, so `sslmode` in a store URL is exercised for real
    subprocess.run(["openssl", "req", "-new", "-x509", "-days", "2", "-nodes", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(root / "server.key"), "-out", str(root / "server.crt")],
                   check=True, capture_output=True, timeout=60)
    os.chmod(root / "server.key", 0o600)
    if os.geteuid() == 0:
        for name in ("server.key", "server.crt"):
            shutil.chown(root / name, "postgres")
    options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} -c ssl=on "
               f"-c ssl_cert_file={root / 'server.crt'} -c ssl_key_file={root / 'server.key'}")
    server.ctl("-o", options, "-l", str(root / "log"), "-w", "start")
    return server


def stop(server: PgServer) -> None:
    try:
        server.ctl("-m", "immediate", "stop")
    finally:
        shutil.rmtree(server.root, ignore_errors=True)
