"""Prediction speed, side by side with the ViT-base every Hub peer ships.

    python bench/predict.py [--model model] [--repeats 100]

Prints p50/p95 latency at batch 1 and throughput at batch 16 for:
  (a) the bundled model through the inference core, from file bytes to the decision (ONNX Runtime, the
      app's default), and the same on PyTorch (the reference runtime);
  (b) the app's /predict round trip with gradio_client against a launched server, the same client
      against a do-nothing endpoint (what gradio_client itself costs), and /predict and /analyse
      (the UI's button: decision + heatmap) over Gradio's HTTP protocol as the web page speaks it;
  (c) the Grad-CAM heatmap;
  (d) a ViT-base (random weights: same cost as the peers' models) through the same core, at our input
      size and at the 224 px the peers use.
Then where the time of (a) goes: decoding, preprocessing, the network on each runtime, the image checks.
Each case runs in its own process so its peak memory (RSS) is its own. The upload is a 2000x1600 JPEG,
the size of a real radiograph.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (REPO, BrowserProtocol, free_port, peak_rss_mb, percentiles, process_peak_rss_mb, sample_upload, start_app,
                    time_calls, wait_until_up)


def _summary(single: list[float], batch: list[float] | None, rss: float, **extra) -> dict:
    p50, p95 = percentiles(single)
    return {"p50": p50, "p95": p95, "throughput": 16 / (sum(batch) / len(batch)) if batch else None, "rss": rss, **extra}


def core_case(model: str, repeats: int, runtime: str = "auto", vit_base: bool = False, vit_base_size: int | None = None) -> dict:
    """`vit_base`: swap in a ViT-base at `vit_base_size` (default: our model's input size)."""
    import torch

    from chestxray import PneumoniaClassifier

    torch.set_num_threads(2)
    classifier = PneumoniaClassifier.from_pretrained(model, runtime=runtime)
    if vit_base:
        from transformers import ViTConfig, ViTForImageClassification

        vit_base_size = vit_base_size or classifier.image_size
        config = ViTConfig(image_size=vit_base_size, patch_size=16, num_labels=2, id2label=classifier.config.id2label,
                           label2id=classifier.config.label2id)
        processor = dataclasses.replace(classifier.processor, height=vit_base_size, width=vit_base_size)
        classifier = PneumoniaClassifier(ViTForImageClassification(config), processor, source="")
    upload = sample_upload()
    single = time_calls(lambda: classifier.predict([classifier.read(upload, name="x.jpeg")]), repeats)
    batch = time_calls(lambda: classifier.predict([classifier.read(upload, name="x.jpeg") for _ in range(16)], batch_size=16),
                       max(5, repeats // 10), warmup=1)
    parameters = sum(p.numel() for p in classifier.model.parameters())
    return _summary(single, batch, peak_rss_mb(), parameters=parameters, runtime=classifier.runtime)


def stage_times(model: str, repeats: int) -> dict:
    """p50 ms of each step of (a), and of the networks alone: where the time goes."""
    import torch

    from chestxray import PneumoniaClassifier
    from chestxray.classifier import LogitsAndFeatures
    from chestxray.ood import image_reasons

    torch.set_num_threads(2)
    classifier = PneumoniaClassifier.from_pretrained(model)
    upload = sample_upload()
    image = classifier.read(upload, name="x.jpeg")
    pixels = classifier.pixel_values([image])
    pytorch_network = LogitsAndFeatures(classifier.model)
    stages = {
        "decode": lambda: classifier.read(upload, name="x.jpeg"),
        "preprocess": lambda: classifier.pixel_values([image]),
        "network (ONNX Runtime)": lambda: classifier.onnx_network(pixels),
        "network (PyTorch)": lambda: torch.inference_mode()(pytorch_network)(pixels),
        "image checks (OOD)": lambda: image_reasons(image),
    }
    return {name: percentiles(time_calls(stage, repeats))[0] for name, stage in stages.items()}


def heatmap_case(model: str, repeats: int) -> dict:
    import torch

    from chestxray import PneumoniaClassifier
    from chestxray.explain import grad_cam, overlay

    torch.set_num_threads(2)
    classifier = PneumoniaClassifier.from_pretrained(model)
    upload = sample_upload()

    def explain():
        image = classifier.read(upload, name="x.jpeg")
        overlay(image, grad_cam(classifier, image))

    return _summary(time_calls(explain, max(10, repeats // 4)), None, peak_rss_mb())


def _with_app(model: str, measure) -> dict:
    port = free_port()
    server = start_app(model, port)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", server)
        result = measure(f"http://127.0.0.1:{port}/")
        result["rss"] = process_peak_rss_mb(server.pid)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


def api_case(model: str, repeats: int) -> dict:
    from gradio_client import Client, handle_file

    def measure(url: str) -> dict:
        client = Client(url, verbose=False)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "upload.jpeg"
            path.write_bytes(sample_upload())
            single = time_calls(lambda: client.predict(handle_file(str(path)), api_name="/predict"), repeats)
            batch = time_calls(lambda: client.predict([handle_file(str(path))] * 16, api_name="/predict_batch"),
                               max(5, repeats // 10), warmup=1)
        return _summary(single, batch, 0.0)

    return _with_app(model, measure)


def client_floor_case(model: str, repeats: int) -> dict:
    """gradio_client against an endpoint that does nothing with the same upload: the client's own cost."""
    import gradio as gr
    from gradio_client import Client, handle_file

    with gr.Blocks() as demo:
        upload, answer = gr.File(type="filepath"), gr.JSON()
        gr.Button().click(lambda path: {"decision": "NORMAL"}, upload, answer, api_name="predict")
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "upload.jpeg"
            path.write_bytes(sample_upload())
            single = time_calls(lambda: client.predict(handle_file(str(path)), api_name="/predict"), repeats)
    finally:
        demo.close()
    return _summary(single, None, peak_rss_mb())


def http_case(model: str, repeats: int, api_name: str = "predict") -> dict:
    def measure(url: str) -> dict:
        browser, upload = BrowserProtocol(url), sample_upload()
        return _summary(time_calls(lambda: browser.call(api_name, upload), repeats), None, 0.0)

    return _with_app(model, measure)


CASES = {
    "core": core_case,
    "core_pytorch": lambda m, r: core_case(m, r, runtime="pytorch"),
    "api": api_case,
    "client_floor": client_floor_case,
    "http_predict": http_case,
    "http_analyse": lambda m, r: http_case(m, max(10, r // 4), api_name="analyse"),
    "heatmap": heatmap_case,
    "vit_base": lambda m, r: core_case(m, max(10, r // 4), runtime="pytorch", vit_base=True),
    "vit_base_224": lambda m, r: core_case(m, max(10, r // 4), runtime="pytorch", vit_base=True, vit_base_size=224),
}
LABELS = {
    "core": "(a) bundled model, core, bytes -> decision (ONNX Runtime)",
    "core_pytorch": "(a') the same on PyTorch",
    "api": "(b) app /predict round trip (gradio_client)",
    "client_floor": "(b0) gradio_client on a do-nothing endpoint, same upload",
    "http_predict": "(b1) app /predict, Gradio's HTTP protocol as the web page speaks it",
    "http_analyse": "(b2) app /analyse (the UI's button: decision + heatmap), same protocol",
    "heatmap": "(c) Grad-CAM heatmap + overlay",
    "vit_base": "(d) ViT-base, our input size, same core (PyTorch)",
    "vit_base_224": "(d') ViT-base at 224 px, as the Hub peers ship it",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "model"))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--case", choices=[*CASES, "stages"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        measure = stage_times if args.case == "stages" else CASES[args.case]
        print(json.dumps(measure(args.model, args.repeats)))
        return

    def run_case(case: str) -> dict:  # each case in its own process: its peak memory is its own
        command = [sys.executable, __file__, "--model", args.model, "--repeats", str(args.repeats), "--case", case]
        return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])

    results = {case: run_case(case) for case in CASES}
    print("| case | p50 ms | p95 ms | batch-16 images/s | peak RSS MB |\n|---|---|---|---|---|")
    for case, r in results.items():
        throughput = f"{r['throughput']:.1f}" if r["throughput"] else "–"
        rss = f"{r['rss']:.0f}" if r["rss"] else "–"
        print(f"| {LABELS[case]} | {r['p50']:.1f} | {r['p95']:.1f} | {throughput} | {rss} |")
    print("\nwhere (a) goes, p50 ms: " + ", ".join(f"{name} {ms:.1f}" for name, ms in run_case("stages").items()))
    ours = results["core"]["p50"]
    print(f"\nViT-base / ours (p50, batch 1): {results['vit_base']['p50'] / ours:.1f}x at our input size, "
          f"{results['vit_base_224']['p50'] / ours:.1f}x at 224 px")
    print(f"app round trip / core: {results['api']['p50'] / ours:.1f}x with gradio_client "
          f"(of which the client itself: {results['client_floor']['p50']:.0f} ms), "
          f"{results['http_predict']['p50'] / ours:.1f}x over HTTP")
    print(f"parameters: ours {results['core']['parameters'] / 1e6:.2f} M, ViT-base {results['vit_base']['parameters'] / 1e6:.1f} M")


if __name__ == "__main__":
    main()
