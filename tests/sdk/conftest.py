"""Starts a real `tidegate serve --config config/demo.yaml` (on free loopback ports) for the
official-SDK tests, and stops it with SIGTERM, which must exit 0."""

import hashlib
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, data: int, admin: int):
        self.base = f"http://127.0.0.1:{data}"
        self.admin = f"http://127.0.0.1:{admin}"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, series: str) -> float:
        for line in self.metrics().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        return 0.0


def launch(extra: str = ""):
    """Starts `tidegate serve` on config/demo.yaml (plus `extra` YAML) on free ports; yields the
    gateway and stops it with SIGTERM, which must exit 0."""
    binary = os.environ.get("TIDEGATE_BIN", str(ROOT / "target" / "debug" / "tidegate"))
    data, admin = free_port(), free_port()
    text = (ROOT / "config" / "demo.yaml").read_text()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{data}").replace("127.0.0.1:9090", f"127.0.0.1:{admin}")
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(text + extra)
    cfg.close()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([binary, "serve", "--config", cfg.name], stdout=log, stderr=log)
    gw = Gateway(data, admin)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(gw.admin + "/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise RuntimeError("tidegate did not become ready:\n" + log.read().decode(errors="replace"))
        time.sleep(0.05)
    yield gw
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=40)
    os.unlink(cfg.name)
    assert code == 0, f"tidegate exited {code} on SIGTERM"


@pytest.fixture(scope="session")
def gateway():
    yield from launch()


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def auth_gateway():
    """The demo config with client auth on: `k-chat` may use the `chat` route only, `k-all`
    every route."""
    extra = (
        "auth:\n  keys:\n"
        f"    {sha256_hex('k-chat')}: {{name: chat-app, routes: [chat]}}\n"
        f"    {sha256_hex('k-all')}: {{name: ops}}\n"
    )
    yield from launch(extra)
