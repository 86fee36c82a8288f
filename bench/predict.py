"""Prediction speed, side by side with the ViT-base every Hub peer ships.

    python bench/predict.py [--model model] [--repeats 100]

Prints p50/p95 latency at batch 1 and throughput at batch 16 for: (a) the bundled model through the
inference core, from file bytes to the decision; (b) the app's /predict round trip with gradio_client
against a launched server; (c) the Grad-CAM heatmap; (d) a ViT-base (random weights: same cost as the
peers' models) at the same input size through the same core. Each case runs in its own process so its
peak memory (RSS) is its own. The upload is a 2000x1600 JPEG, the size of a real radiograph.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, free_port, peak_rss_mb, percentiles, process_peak_rss_mb, sample_upload, start_app, time_calls, wait_until_up


def core_case(model: str, repeats: int, vit_base: bool = False) -> dict:
    import torch

    from chestxray import PneumoniaClassifier, read_image

    torch.set_num_threads(2)
    classifier = PneumoniaClassifier.from_pretrained(model)
    if vit_base:
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(image_size=classifier.image_size, patch_size=16, num_labels=2, id2label=classifier.model.config.id2label,
                           label2id=classifier.model.config.label2id)
        classifier = PneumoniaClassifier(ViTForImageClassification(config), classifier.processor, source="")
    upload = sample_upload()
    single = time_calls(lambda: classifier.predict([read_image(upload, name="x.jpeg")]), repeats)
    batch = time_calls(lambda: classifier.predict([read_image(upload, name="x.jpeg") for _ in range(16)], batch_size=16), max(5, repeats // 10), warmup=1)
    parameters = sum(p.numel() for p in classifier.model.parameters())
    return {"p50": percentiles(single)[0], "p95": percentiles(single)[1], "throughput": 16 / (sum(batch) / len(batch)),
            "rss": peak_rss_mb(), "parameters": parameters}


def heatmap_case(model: str, repeats: int) -> dict:
    import torch

    from chestxray import PneumoniaClassifier, read_image
    from chestxray.explain import grad_cam, overlay

    torch.set_num_threads(2)
    classifier = PneumoniaClassifier.from_pretrained(model)
    upload = sample_upload()

    def explain():
        image = read_image(upload, name="x.jpeg")
        overlay(image, grad_cam(classifier, image))

    times = time_calls(explain, max(10, repeats // 4))
    return {"p50": percentiles(times)[0], "p95": percentiles(times)[1], "throughput": None, "rss": peak_rss_mb()}


def api_case(model: str, repeats: int) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    server = start_app(model, port)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", server)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "upload.jpeg"
            path.write_bytes(sample_upload())
            times = time_calls(lambda: client.predict(handle_file(str(path)), api_name="/predict"), repeats)
            batch = time_calls(lambda: client.predict([handle_file(str(path))] * 16, api_name="/predict_batch"), max(5, repeats // 10), warmup=1)
        rss = process_peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"p50": percentiles(times)[0], "p95": percentiles(times)[1], "throughput": 16 / (sum(batch) / len(batch)), "rss": rss}


CASES = {"core": core_case, "api": api_case, "heatmap": heatmap_case, "vit_base": lambda m, r: core_case(m, r, vit_base=True)}
LABELS = {"core": "(a) bundled model, core, bytes -> decision", "api": "(b) app /predict round trip (gradio_client)",
          "heatmap": "(c) Grad-CAM heatmap + overlay", "vit_base": "(d) ViT-base, same input size, same core"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "model"))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--case", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(CASES[args.case](args.model, args.repeats)))
        return
    results = {}
    for case in CASES:
        output = subprocess.run([sys.executable, __file__, "--model", args.model, "--repeats", str(args.repeats), "--case", case],
                                capture_output=True, text=True, check=True).stdout
        results[case] = json.loads(output.strip().splitlines()[-1])
    print("| case | p50 ms | p95 ms | batch-16 images/s | peak RSS MB |\n|---|---|---|---|---|")
    for case, r in results.items():
        throughput = f"{r['throughput']:.1f}" if r["throughput"] else "–"
        print(f"| {LABELS[case]} | {r['p50']:.1f} | {r['p95']:.1f} | {throughput} | {r['rss']:.0f} |")
    a, b, d = results["core"]["p50"], results["api"]["p50"], results["vit_base"]["p50"]
    print(f"\nViT-base / ours (p50, batch 1): {d / a:.1f}x   app round trip / core: {b / a:.1f}x")
    print(f"parameters: ours {results['core']['parameters'] / 1e6:.2f} M, ViT-base {results['vit_base']['parameters'] / 1e6:.1f} M")


if __name__ == "__main__":
    main()
