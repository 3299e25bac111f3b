"""A throwaway PostgreSQL cluster on a loopback port, for the tests and bench.collector: Debian's server
(`postgresql`; its initdb and pg_ctl live in /usr/lib/postgresql/<major>/bin, not on PATH), run as the
`postgres` user when started by root (the server refuses root), in a folder that user owns, with a password
(scram-sha-256) that clients get from PGPASSWORD, as a plant's collector would."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["Cluster", "pg_bin"]


def pg_bin() -> Path | None:
    """The newest installed server's bin folder, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    user = "qc"

    def __init__(self):
        self.bin = pg_bin()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL server installed (apt-get install postgresql)")
        self.password = secrets.token_hex(12)
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="qc-pg-"))
        self.data = self.root / "data"

    def _as_owner(self, *cmd: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)

    def start(self) -> Cluster:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(pwfile, "postgres")
        run = dict(check=True, capture_output=True, text=True)
        subprocess.run(self._as_owner(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user,
                                      "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"), **run)
        pwfile.unlink()
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
                "-c max_connections=40 -c shared_buffers=64MB")
        subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                                      str(self.root / "log"), "-w", "start"), **run)
        return self

    @property
    def url(self) -> str:
        """No password in it: it comes from `env`."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def psql(self, sql: str, url: str | None = None) -> str:
        """What Debian's psql prints for `sql` (unaligned, tuples only) in the database at `url` (default the
        cluster's own)."""
        out = subprocess.run(["psql", url or self.url, "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql], env=self.env,
                             capture_output=True, text=True, timeout=60)
        if out.returncode:
            raise RuntimeError(out.stderr.strip())
        return out.stdout.strip()

    def stop(self) -> None:
        subprocess.run(self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
                       capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
