"""Helpers shared by the benchmarks: timing, sample uploads, launching app.py on loopback."""

from __future__ import annotations

import io
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
REAL_XRAYS = REPO.parent / "shared" / "data" / "chest_xray" / "train"
sys.path.insert(0, str(REPO))


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def time_calls(function, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_upload(size: tuple[int, int] = (2000, 1600)) -> bytes:
    """A real X-ray blown up to a typical full-size upload (the local copies are 224x224), as JPEG bytes."""
    files = sorted(REAL_XRAYS.rglob("*.jpeg"))[:1]
    base = Image.open(files[0]).convert("L") if files else Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (224, 224), dtype=np.uint8))
    buffer = io.BytesIO()
    base.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "MODEL_ID": model, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until_up(url: str, server: subprocess.Popen, limit_s: float = 180) -> None:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"app.py exited with code {server.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"app.py did not answer within {limit_s} s")


def process_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class BrowserProtocol:
    """Gradio's HTTP protocol as the web page speaks it: upload, join the queue, read the event stream.

    It measures what a person in the browser waits for, without gradio_client's polling (it checks its
    message queue every 50 ms) on top.
    """

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=120)
        dependencies = self.http.get(f"{self.url}/config").json()["dependencies"]
        self.endpoints = {d["api_name"]: d["id"] for d in dependencies if d.get("api_name")}

    def call(self, api_name: str, data: bytes, file_name: str = "upload.jpeg") -> list:
        return self.answer(api_name, self.upload(data, file_name))

    def upload(self, data: bytes, file_name: str = "upload.jpeg") -> str:
        """The path the server stored the file at."""
        return self.http.post(f"{self.url}/gradio_api/upload", files={"files": (file_name, data)}).json()[0]

    def answer(self, api_name: str, stored_path: str) -> list:
        """Join the queue for an uploaded file and read the event stream to its result."""
        import json
        import uuid

        session = uuid.uuid4().hex
        self.http.post(f"{self.url}/gradio_api/queue/join", json={
            "data": [{"path": stored_path, "meta": {"_type": "gradio.FileData"}}], "fn_index": self.endpoints[api_name],
            "session_hash": session, "event_data": None, "trigger_id": None}).raise_for_status()
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"{api_name} failed: {message.get('output')}")
                    return message["output"]["data"]
        raise RuntimeError(f"{api_name}: the event stream ended without a result")
