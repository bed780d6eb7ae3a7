"""Real servers for the test session: a throwaway PostgreSQL cluster and a moto S3 server (and
the gateway, ``gateway_process``, which the serving tests and ``bench/serve.py`` start).

Both listen on loopback only, on free ports, and are stopped when the session ends; no test
depends on a server someone started by hand.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    datadir: Path

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql+psycopg2://{self.user}:{pw}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server as Debian's `postgres` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def start_postgres() -> PostgresServer:
    initdb, pg_ctl = find_pg_bin("initdb"), find_pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: run `make test`, which installs them")
    root = Path(tempfile.mkdtemp(prefix="fashion-pg-"))
    datadir = root / "data"
    password = "pg-" + os.urandom(8).hex()  # a real password, so tests can check it never leaks
    (root / "pwfile").write_text(password + "\n")
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(root, pg.pw_uid, pg.pw_gid)
        os.chown(root / "pwfile", pg.pw_uid, pg.pw_gid)
    subprocess.run(
        _as_postgres_user([initdb, "-D", str(datadir), "-U", "postgres", "--pwfile", str(root / "pwfile"),
                           "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"]),
        check=True, capture_output=True,
    )
    port = free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
    subprocess.run(
        _as_postgres_user([pg_ctl, "-D", str(datadir), "-o", options, "-l", str(root / "server.log"), "-w", "start"]),
        check=True, capture_output=True,
    )
    return PostgresServer("127.0.0.1", port, "postgres", password, datadir)


def stop_postgres(server: PostgresServer) -> None:
    pg_ctl = find_pg_bin("pg_ctl")
    subprocess.run(_as_postgres_user([pg_ctl, "-D", str(server.datadir), "-m", "immediate", "stop"]), capture_output=True)
    shutil.rmtree(server.datadir.parent, ignore_errors=True)


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing-secret")


def start_moto() -> S3Server:
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"fashion-moto-{port}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=2)
            return S3Server(endpoint, process)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto server did not start; see {log.name}") from None
            time.sleep(0.2)


def stop_moto(server: S3Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@contextlib.contextmanager
def gateway_process(env: dict, log_path: Path, *args: str, cwd: Path | None = None, timeout_s: float = 180):
    """``fashion-assets serve`` as a real process on a free loopback port, until ``/healthz`` is 200:
    yields its base URL; stopped on exit (the tests and ``bench/serve.py``)."""
    import httpx

    port = free_port()
    with open(log_path, "wb") as log:
        # Its own process group: with --workers it has children, which a kill must not orphan.
        process = subprocess.Popen([sys.executable, "-m", "fashion_assets.cli", "serve", "--port", str(port), *args],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not become healthy:\n{Path(log_path).read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, timeout_s: float = 20) -> None:
    """SIGTERM to ``process`` (started with ``start_new_session``); after ``timeout_s``, SIGKILL to
    its whole process group, so no child outlives it."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
