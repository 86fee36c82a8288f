"""Load test of the app on loopback: concurrent gradio_client users sending good and bad files.

    python bench/load.py [--model model] [--clients 50] [--requests 20]

Starts `python app.py` on a free 127.0.0.1 port, then each client sends --requests uploads (3 good X-rays
for every bad file). A warm-up round of the same load comes first (the allocator and caches grow once, to
their working size); then the measured rounds. Prints failures with their reasons (must be 0 for good
files), p50/p95 latency, throughput, and the server's resident memory after warm-up and after each
measured round (flat across them: no leak). Bounded: every request has a timeout and the run stops itself.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections import Counter
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


def one_client(url: str, good: list[Path], bad: list[Path], requests: int, seed: int) -> list[tuple[str, float, bool, str]]:
    """(kind, seconds, as expected, error message or "") per request."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    rng = np.random.default_rng(seed)
    outcomes = []
    for i in range(requests):
        is_good = i % 4 != 3
        path = good[rng.integers(len(good))] if is_good else bad[rng.integers(len(bad))]
        started, message = time.perf_counter(), ""
        try:
            answer = client.predict(handle_file(str(path)), api_name="/predict")
            ok = is_good and answer.get("decision") in ("NORMAL", "PNEUMONIA")
        except Exception as error:  # a bad file must be refused with a message; a good one must never fail
            message = f"{type(error).__name__}: {str(error).strip()[:200]}"
            ok = (not is_good) and bool(str(error))
        outcomes.append(("good" if is_good else "bad", time.perf_counter() - started, ok, message))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "model"))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="Measured rounds; flat memory across them = no leak.")
    parser.add_argument("--warmup_rounds", type=int, default=1,
                        help="Rounds of the same load before measuring: the allocator and caches settle in the first.")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = start_app(args.model, port)

    def load_round(round_number: int) -> list:
        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(one_client, url, good, bad, args.requests, seed + 1000 * round_number)
                       for seed in range(args.clients)]
            return [o for f in futures for o in f.result(timeout=1800)]

    try:
        wait_until_up(url, server)
        process = psutil.Process(server.pid)
        with tempfile.TemporaryDirectory() as folder:
            good, bad = test_files(Path(folder))
            memory = [resident_mb(process)]  # started and warmed up by its own start-up prediction
            outcomes = []
            for round_number in range(args.warmup_rounds):
                outcomes += load_round(args.rounds + round_number)  # seeds apart from the measured rounds
            memory.append(resident_mb(process))
            started = time.perf_counter()
            measured = []
            for round_number in range(args.rounds):
                measured += load_round(round_number)
                memory.append(resident_mb(process))
            elapsed = time.perf_counter() - started
            outcomes += measured
    finally:
        server.terminate()
        server.wait(timeout=30)
    good_latency = np.array([t for kind, t, _, _ in measured if kind == "good"]) * 1000
    good_failures = [message for kind, _, ok, message in outcomes if kind == "good" and not ok]
    bad_unexpected = sum(1 for kind, _, ok, _ in outcomes if kind == "bad" and not ok)
    print(f"{args.warmup_rounds} warm-up + {args.rounds} measured rounds of {args.clients} clients x {args.requests} requests "
          f"= {len(outcomes)} ({sum(o[0] == 'bad' for o in outcomes)} bad files)")
    print(f"good-file failures: {len(good_failures)}   bad files not refused with a message: {bad_unexpected}")
    for message, count in Counter(good_failures).most_common(5):
        print(f"  {count} x {message or 'wrong answer'}")
    print(f"latency under load (good files, measured rounds): p50 {np.percentile(good_latency, 50):.0f} ms, "
          f"p95 {np.percentile(good_latency, 95):.0f} ms")
    print(f"throughput: {len(measured) / elapsed:.1f} requests/s over {elapsed:.0f} s")
    print("server memory (RSS): started " + f"{memory[0]:.0f} MB, after warm-up {memory[1]:.0f} MB, after each measured round "
          + ", ".join(f"{mb:.0f} MB" for mb in memory[2:]))
    print(f"growth over the measured rounds: {memory[-1] - memory[1]:+.0f} MB "
          f"(per round: {', '.join(f'{after - before:+.0f}' for before, after in zip(memory[1:], memory[2:]))} MB)")
    sys.exit(1 if good_failures or bad_unexpected else 0)


if __name__ == "__main__":
    main()
