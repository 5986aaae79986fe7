"""Starting moto and the Lambda emulator from Python (the infra tests and the black-box suite)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

INFRA = Path(__file__).resolve().parent
REPO = INFRA.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30, every: float = 0.2) -> Any:
    """Polls `check` until it returns something truthy; fails with `what` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Moto:
    def __init__(self, workdir: Path) -> None:
        self.port = int(os.environ.get("MOTO_PORT") or free_port())
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "moto.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(INFRA / "moto_serial_server.py"), "127.0.0.1", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            assert self.proc.poll() is None, f"moto exited; see {workdir / 'moto.log'}"
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2).read()
                return True
            except OSError:
                return False

        wait_for("moto to answer", up)

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


class Emulator:
    def __init__(self, moto: Moto, workdir: Path, template: Path, bin_dir: Path, extra: list[str]) -> None:
        self.workdir = workdir
        self.ready_file = workdir / "ready.json"
        self.out = open(workdir / "emulator.log", "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(INFRA / "lambda_emulator.py"),
                "--template", str(template),
                "--endpoint", moto.endpoint,
                "--bin-dir", str(bin_dir),
                "--log-dir", str(workdir / "logs"),
                "--ready-file", str(self.ready_file),
                *extra,
            ],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the emulator exited: {(workdir / 'emulator.log').read_text()}")
            return self.ready_file.exists()

        wait_for("the emulator to be ready", ready, timeout=120)
        self.info = json.loads(self.ready_file.read_text())

    def admin(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(self.info["admin_url"] + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()
        return self.proc.returncode
