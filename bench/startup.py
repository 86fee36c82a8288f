"""Seconds from `python app.py` to the first answered /predict request.

    python bench/startup.py [--model model] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import REPO, free_port, sample_upload, start_app, wait_until_up


def one_start(model: str) -> tuple[float, float]:
    from gradio_client import Client, handle_file

    port = free_port()
    started = time.perf_counter()
    server = start_app(model, port)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", server)
        serving = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "upload.jpeg"
            path.write_bytes(sample_upload())
            Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(str(path)), api_name="/predict")
        return serving, time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(REPO / "model"))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = [one_start(args.model) for _ in range(args.runs)]
    for i, (serving, answered) in enumerate(runs, 1):
        print(f"run {i}: page served after {serving:.1f} s, first /predict answered after {answered:.1f} s")
    print(f"median time to first answer: {sorted(a for _, a in runs)[len(runs) // 2]:.1f} s")


if __name__ == "__main__":
    main()
