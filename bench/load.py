"""Load test of the app on loopback: concurrent gradio_client users sending good and bad files.

    python bench/load.py [--model model] [--clients 50] [--requests 20]

Starts `python app.py` on a free 127.0.0.1 port, then each client sends --requests uploads (3 good X-rays
for every bad file). Prints failures (must be 0 for good files), p50/p95 latency, throughput, and the
server's resident memory before and after each round (flat across rounds: no leak). Bounded: every request has a timeout and the run stops itself.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from common import REAL_XRAYS, REPO, free_port, start_app, wait_until_up


def test_files(folder: Path) -> tuple[list[Path], list[Path]]:
    real = sorted(REAL_XRAYS.rglob("*.jpeg"))[:: max(1, len(list(REAL_XRAYS.rglob("*.jpeg"))) // 8)][:8] if REAL_XRAYS.is_dir() else []
    if not real:
        rng = np.random.default_rng(0)
        for i in range(4):
            path = folder / f"synthetic{i}.png"
            Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(path)
            real.append(path)
    bad = {"notes.png": b"plain text", "empty.png": b"", "cut.jpeg": real[0].read_bytes()[:300]}
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")
    bad["bomb.png"] = bomb.getvalue()
    bad_paths = []
    for name, data in bad.items():
        (folder / name).write_bytes(data)
        bad_paths.append(folder / name)
    return real, bad_paths


def resident_mb(process: psutil.Process) -> float:
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def one_client(url: str, good: list[Path], bad: list[Path], requests: int, seed: int) -> list[tuple[str, float, bool]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    rng = np.random.default_rng(seed)
    outcomes = []
    for i in range(requests):
        is_good = i % 4 != 3
        path = good[rng.integers(len(good))] if is_good else bad[rng.integers(len(bad))]
        started = time.perf_counter()
        try:
            answer = client.predict(handle_file(str(path)), api_name="/predict")
            ok = is_good and answer.get("decision") in ("NORMAL", "PNEUMONIA")
        except Exception as error:  # a bad file must be refused with a message; a good one must never fail
            ok = (not is_good) and bool(str(error))
        outcomes.append(("good" if is_good else "bad", time.perf_counter() - started, ok))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "model"))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="Repeat the load; flat memory across rounds = no leak.")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_app(args.model, port)
    try:
        wait_until_up(url, server)
        process = psutil.Process(server.pid)
        with tempfile.TemporaryDirectory() as folder:
            good, bad = test_files(Path(folder))
            one_client(url, good, bad, 8, seed=10_000)  # warm-up
            memory = [resident_mb(process)]
            outcomes = []
            started = time.perf_counter()
            for round_number in range(args.rounds):
                with ThreadPoolExecutor(args.clients) as pool:
                    futures = [pool.submit(one_client, url, good, bad, args.requests, seed + 1000 * round_number)
                               for seed in range(args.clients)]
                    outcomes += [o for f in futures for o in f.result(timeout=1800)]
                memory.append(resident_mb(process))
            elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    good_latency = np.array([t for kind, t, _ in outcomes if kind == "good"]) * 1000
    good_failures = sum(1 for kind, _, ok in outcomes if kind == "good" and not ok)
    bad_unexpected = sum(1 for kind, _, ok in outcomes if kind == "bad" and not ok)
    print(f"{args.rounds} rounds of {args.clients} clients x {args.requests} requests = {len(outcomes)} "
          f"({sum(k == 'bad' for k, _, _ in outcomes)} bad files)")
    print(f"good-file failures: {good_failures}   bad files not refused with a message: {bad_unexpected}")
    print(f"latency under load (good files): p50 {np.percentile(good_latency, 50):.0f} ms, p95 {np.percentile(good_latency, 95):.0f} ms")
    print(f"throughput: {len(outcomes) / elapsed:.1f} requests/s over {elapsed:.0f} s")
    print("server memory (RSS): " + ", ".join(f"{mb:.0f} MB" for mb in memory) + " (before, then after each round); "
          "growth per round: " + ", ".join(f"{after - before:+.0f} MB" for before, after in zip(memory, memory[1:])))
    sys.exit(1 if good_failures or bad_unexpected else 0)


if __name__ == "__main__":
    main()
