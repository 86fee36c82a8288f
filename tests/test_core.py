"""The inference core on both supported architectures, and its command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from chestxray import PneumoniaClassifier
from chestxray.__main__ import main as cli_main
from chestxray.explain import grad_cam, overlay
from conftest import synthetic_xray, tiny_training_args, xray_as_dicom
from train.pipeline import main as train_main

TINY_VIT = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64})


@pytest.fixture(scope="module")
def trained_vit(tiny_image_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("vit") / "tiny-vit"
    args = tiny_training_args(tiny_image_folder, output_dir)
    args[args.index("--config_overrides") + 1] = TINY_VIT
    args[args.index("--model_type") + 1] = "vit"
    assert train_main([*args, "--model_size", "tiny"]) == 0
    return output_dir


@pytest.fixture(scope="module", params=["convnext", "vit"])
def classifier(request, trained_model, trained_vit):
    return PneumoniaClassifier.from_pretrained(trained_model if request.param == "convnext" else trained_vit)


def test_one_pass_gives_the_same_logits_as_the_model(classifier):
    pixel_values = classifier.pixel_values([synthetic_xray(1, 3), synthetic_xray(0, 4)])
    with torch.inference_mode():
        logits, features = classifier.logits_and_features(pixel_values)
        reference = classifier.model(pixel_values=pixel_values).logits
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)  # ONNX Runtime or PyTorch kernels
    assert features.shape[0] == 2 and classifier.ood_reference.mean.shape[0] == features.shape[1]


def test_ood_features_are_the_pooled_features_then_earlier_stages(classifier):
    """The head reads the pooled features first in the vector; the rest summarise states a quarter, half and three
    quarters through the network (ConvNeXt: stages 1-3 of 4; the 2-layer ViT: layers 1 and 2)."""
    config = classifier.config
    if config.model_type == "convnext":
        pooled, stages = config.hidden_sizes[-1], config.hidden_sizes[:3]
    else:
        pooled, stages = config.hidden_size, [config.hidden_size] * 2
    pixel_values = classifier.pixel_values([synthetic_xray(1, 3), synthetic_xray(0, 4)])
    with torch.inference_mode():
        logits, features = classifier.logits_and_features(pixel_values)
        head = classifier.model.classifier(features[:, :pooled])
    assert features.shape[1] == pooled + 2 * sum(stages)
    torch.testing.assert_close(head, logits, atol=1e-4, rtol=1e-4)
    with torch.inference_mode():
        states = classifier.model.base_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    picked = [1, 2, 3] if config.model_type == "convnext" else [1, 2]
    positions = [(2, 3) if states[i].ndim == 4 else (1,) for i in picked]
    expected = torch.cat([f(states[i], p) for i, p in zip(picked, positions)
                          for f in (lambda x, p: x.mean(p), lambda x, p: x.std(p, correction=0))], dim=1)
    torch.testing.assert_close(features[:, pooled:], expected, atol=1e-4, rtol=1e-4)


def test_ood_features_stay_finite_when_a_stage_is_a_single_position():
    from chestxray.classifier import stage_statistics

    states = [torch.zeros(2, 3, 4, 4), torch.randn(2, 5, 1, 1), torch.randn(2, 6, 1, 1), torch.randn(2, 7, 1, 1), torch.randn(2, 8, 1, 1)]
    statistics = torch.cat(stage_statistics(states), dim=1)
    assert statistics.shape == (2, 2 * (5 + 6 + 7)) and torch.all(statistics.isfinite())


def test_grad_cam_covers_the_image_and_overlays_at_its_size(classifier):
    image = synthetic_xray(1, 8, size=96).resize((120, 90))
    heatmap = grad_cam(classifier, image)
    assert heatmap.shape == (classifier.image_size, classifier.image_size)
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    picture = overlay(image, heatmap)
    assert picture.shape == (90, 120, 3) and picture.dtype == np.uint8


def _textbook_grad_cam(classifier, image) -> np.ndarray:
    """Grad-CAM as Selvaraju et al. compute it: a full backward pass, gradients read off the activations."""
    from chestxray.explain import _as_grid, _target_module

    model, captured = classifier.model, {}

    def keep(_module, _inputs, output):
        captured["activations"] = output[0] if isinstance(output, tuple) else output
        captured["activations"].retain_grad()

    model.requires_grad_(True)
    handle = _target_module(model).register_forward_hook(keep)
    try:
        model(pixel_values=classifier.pixel_values([image])).logits[0, classifier.positive_index].backward()
    finally:
        handle.remove()
        model.requires_grad_(False)
        model.zero_grad(set_to_none=True)
    grid, gradients = _as_grid(captured["activations"].detach(), model), _as_grid(captured["activations"].grad, model)
    cam = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * grid).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(classifier.image_size,) * 2, mode="bilinear", align_corners=False)[0, 0].numpy()
    return (cam - cam.min()) / (cam.max() - cam.min()) if cam.max() > cam.min() else np.zeros_like(cam)


def test_grad_cam_equals_the_textbook_full_backward_pass(classifier):
    """The fast map (gradient through the head only) must be exactly the textbook one."""
    from pathlib import Path

    bundled = PneumoniaClassifier.from_pretrained(Path(__file__).resolve().parent.parent / "model")
    non_flat = 0
    for model in (classifier, bundled):
        for index in range(6):
            image = synthetic_xray(index % 2, 70 + index)
            expected = _textbook_grad_cam(model, image)
            np.testing.assert_allclose(grad_cam(model, image), expected, atol=1e-5)
            non_flat += int(expected.max() == 1.0)
    assert non_flat >= 3  # real maps were compared, not only all-zero ones


def test_model_type_is_recorded_in_the_card(trained_vit):
    assert "ViT-tiny" in (trained_vit / "README.md").read_text()


def test_cli_predicts_folders_and_files_and_writes_csv(trained_model, tmp_path, capsys):
    folder = tmp_path / "scans"
    (folder / "nested").mkdir(parents=True)
    synthetic_xray(0, 1).save(folder / "a.png")
    synthetic_xray(1, 2).save(folder / "nested" / "b.jpeg")
    xray_as_dicom(folder / "nested" / "IMG0003")
    code = cli_main(["predict", str(folder), "--model", str(trained_model), "--csv", str(tmp_path / "out.csv")])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert sorted(r["file"].rsplit("/", 1)[-1] for r in rows) == ["IMG0003", "a.png", "b.jpeg"]
    assert all(r["decision"] in ("NORMAL", "PNEUMONIA") and r["error"] == "" for r in rows)
    assert "P(pneumonia)" in capsys.readouterr().out


def test_a_batch_holds_reduced_copies_and_answers_as_a_single_upload_does(trained_model, tmp_path):
    """16 full-size uploads at once held 2.4 GB: a batch now reduces each image as it reads it, and the single path
    judges the same reduced pixels, so both give one answer."""
    from chestxray.batch import predict_files

    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    synthetic_xray(1, 5, size=1000).resize((1000, 800)).save(tmp_path / "big.png")
    held = []
    predict = classifier.predict
    classifier.predict = lambda images, batch_size=16: held.extend(image.size for image in images) or predict(images, batch_size)
    (row,) = predict_files(classifier, [("big.png", tmp_path / "big.png")])
    assert held and max(held[0]) < 4 * classifier.image_size  # not the 1000x800 upload
    single = predict([classifier.read(tmp_path / "big.png")])[0]
    assert row.pneumonia_probability == round(single.pneumonia_probability, 4) and row.decision == single.decision


def test_cli_reports_unreadable_files_and_exits_1(trained_model, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    synthetic_xray(0, 1).save(good)
    bad.write_bytes(b"nope")
    assert cli_main(["predict", str(good), str(bad), "--model", str(trained_model)]) == 1
    captured = capsys.readouterr()
    assert "is not an image" in captured.out and "1 of 2 files could not be read" in captured.err


def test_a_model_without_a_learned_gate_says_so_where_it_serves(trained_model, tmp_path, capsys):
    """A folder trained without --ood_dir answers hands and lateral views: the CLI and the app must say so."""
    import httpx

    import app
    from conftest import free_port

    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    assert classifier.gate is None and "python -m train.ood" in classifier.missing_gate_warning()
    synthetic_xray(0, 1).save(tmp_path / "a.png")
    assert cli_main(["predict", str(tmp_path / "a.png"), "--model", str(trained_model)]) == 0
    assert "has no usable learned out-of-distribution gate" in capsys.readouterr().err
    demo = app.build_demo(classifier, "tiny-test-model")
    port = free_port()
    app.serve(demo, "127.0.0.1", port, quiet=True)
    try:
        assert "no learned check for images it must not answer" in httpx.get(f"http://127.0.0.1:{port}/config", timeout=30).text
    finally:
        demo.close()


def test_the_bundled_model_carries_its_gate_so_no_such_warning():
    from pathlib import Path

    bundled = PneumoniaClassifier.from_pretrained(Path(__file__).resolve().parents[1] / "model")
    assert bundled.gate is not None and bundled.missing_gate_warning() is None


def test_cli_with_a_missing_model_is_one_line(tmp_path, capsys):
    synthetic_xray(0, 1).save(tmp_path / "a.png")
    assert cli_main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_a_folder_without_safetensors_is_refused(trained_model, tmp_path):
    import shutil
    from chestxray import ModelLoadError

    copy = tmp_path / "pickled"
    shutil.copytree(trained_model, copy, ignore=shutil.ignore_patterns("checkpoint-*", "model.safetensors"))
    (copy / "pytorch_model.bin").write_bytes(b"a pickle would be here")
    with pytest.raises(ModelLoadError, match="only safetensors"):
        PneumoniaClassifier.from_pretrained(copy)


def test_own_preprocessing_equals_the_saved_transformers_processor(trained_model):
    """The core reads preprocessor_config.json itself (no transformers import at start-up): same pixels."""
    from transformers import AutoImageProcessor

    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    reference = AutoImageProcessor.from_pretrained(trained_model, backend="pil")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L") for h, w in [(40, 30), (32, 32), (77, 200)]]
    images.append(synthetic_xray(1, 5).convert("RGB"))
    expected = reference(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(classifier.processor(images), expected, atol=1e-6, rtol=0)


def test_training_feeds_the_network_the_pixels_the_app_serves(trained_model):
    """One preprocessing code path: a film the Trainer evaluates gets exactly the pixel values the app computes."""
    import io

    from transformers import AutoImageProcessor

    from train.augment import XRayAugmentation
    from train.pipeline import make_transforms

    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    films = [synthetic_xray(1, 9, size=96).resize((110, 90)), synthetic_xray(0, 10).convert("RGB")]
    cells = []
    for film in films:
        buffer = io.BytesIO()
        film.save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": None})
    _, eval_transform = make_transforms(AutoImageProcessor.from_pretrained(trained_model), classifier.image_size, XRayAugmentation())
    trained_on = eval_transform({"image": cells, "label": [1, 0]})["pixel_values"]
    assert all(torch.equal(seen, served) for seen, served in zip(trained_on, classifier.pixel_values(films)))


def test_large_uploads_are_shrunk_first_without_changing_the_answer(trained_model):
    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    large = synthetic_xray(1, 31, size=96).resize((2000, 1600), Image.Resampling.BICUBIC)
    target = 2 * classifier.image_size
    assert all(target <= side < 2 * target for side in classifier.shrink(large).size)
    direct = classifier.processor([large])
    shrunk = classifier.pixel_values([large])
    assert shrunk.shape == direct.shape
    assert (shrunk - direct).abs().mean().item() < 0.05  # normalised units; the pictures are the same
    with torch.inference_mode():
        p_direct = classifier.calibrated_probabilities(classifier.model(pixel_values=direct).logits)
        p_shrunk = classifier.calibrated_probabilities(classifier.model(pixel_values=shrunk).logits)
    assert abs(float(p_direct[0]) - float(p_shrunk[0])) < 0.02


def test_training_exports_onnx_and_predictions_run_on_it_unchanged(classifier):
    assert classifier.runtime == "onnxruntime"
    reference = PneumoniaClassifier.from_pretrained(classifier.source, runtime="pytorch")
    assert reference.runtime == "pytorch"
    images = [synthetic_xray(label, 40 + i) for i, label in enumerate([0, 1, 1, 0, 1])]
    for batch_size in (1, 5):
        fast, slow = classifier.predict(images, batch_size), reference.predict(images, batch_size)
        assert [p.decision for p in fast] == [p.decision for p in slow]
        assert [p.warning for p in fast] == [p.warning for p in slow]
        np.testing.assert_allclose([p.pneumonia_probability for p in fast], [p.pneumonia_probability for p in slow], atol=1e-5)


def _copy_model(source, target):
    import shutil

    return shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint-*"))


def test_a_stale_or_damaged_onnx_export_falls_back_to_pytorch(trained_model, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    from chestxray.classifier import ModelLoadError
    from chestxray.runtime import ONNX_FILE

    stale = _copy_model(trained_model, tmp_path / "stale")
    weights = load_file(stale / "model.safetensors")
    weights = {name: tensor * 1.5 if tensor.dim() > 1 else tensor for name, tensor in weights.items()}  # "retrained"
    save_file(weights, stale / "model.safetensors", metadata={"format": "pt"})
    with caplog.at_level("WARNING"):
        assert PneumoniaClassifier.from_pretrained(stale).runtime == "pytorch"
    assert "stale export" in caplog.text
    with pytest.raises(ModelLoadError, match="ONNX runtime was required"):
        PneumoniaClassifier.from_pretrained(stale, runtime="onnx")

    damaged = _copy_model(trained_model, tmp_path / "damaged")
    (damaged / ONNX_FILE).write_bytes(b"\x08\x07 not a protobuf graph")
    caplog.clear()
    with caplog.at_level("WARNING"):
        classifier = PneumoniaClassifier.from_pretrained(damaged)
    assert classifier.runtime == "pytorch" and "Ignoring" in caplog.text
    assert classifier.predict([synthetic_xray(1, 9)])[0].decision in ("NORMAL", "PNEUMONIA")


def _rewrite_onnx_metadata(folder, change) -> None:
    """Replace the export's metadata with `change(old metadata)`, as another version would have written it."""
    import onnx

    from chestxray.runtime import ONNX_FILE

    graph = onnx.load(str(folder / ONNX_FILE))
    props = change({p.key: p.value for p in graph.metadata_props})
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(folder / ONNX_FILE))


def test_a_folder_from_before_the_stage_features_keeps_its_checks_on_the_pooled_features(trained_model, tmp_path, caplog):
    """A folder exported and fitted when the OOD features were the pooled ones only: its export is not run (it gives
    fewer features), its reference and gate read the pooled features that lead the new ones, and a check of any other
    width is set aside with a warning."""
    from safetensors.torch import load_file, save_file

    from chestxray.classifier import pooled_width
    from chestxray.ood import NOT_FRONTAL_CHEST, REFERENCE_FILE, Gaussian, LinearHead, OodGate, image_descriptor, probe_pixels
    from chestxray.runtime import WEIGHTS_HASH_KEY

    older = _copy_model(trained_model, tmp_path / "older")
    _rewrite_onnx_metadata(older, lambda props: {WEIGHTS_HASH_KEY: props[WEIGHTS_HASH_KEY]})  # before `ood_features`
    current = PneumoniaClassifier.from_pretrained(trained_model, runtime="pytorch")
    pooled = pooled_width(current.config)
    reference = load_file(older / REFERENCE_FILE)
    covariance = torch.linalg.inv(reference["precision"])[:pooled, :pooled]  # the pooled features' own reference
    save_file({"mean": reference["mean"][:pooled].contiguous(), "precision": torch.linalg.inv(covariance).contiguous(),
               "threshold": reference["threshold"]}, older / REFERENCE_FILE)
    width = len(image_descriptor(synthetic_xray(1, 9))) + pooled  # an old gate that refuses every image it reads
    always = LinearHead(np.zeros(width), np.ones(width), np.zeros((1, width)), np.array([10.0]))
    near = Gaussian(np.zeros(width - pooled), np.zeros((width - pooled,) * 2))
    probe = current.logits_and_features(probe_pixels(current.image_size))[1].double().numpy()[:, :pooled]
    thresholds = {"density": 1.0, "adult_density": 1.0, "not_frontal": 0.0, "adult": 20.0}
    OodGate(near, near, always, always, always, ["other_body_part"], thresholds, probe, {}).save(older)
    with caplog.at_level("WARNING"):
        classifier = PneumoniaClassifier.from_pretrained(older)
    assert classifier.runtime == "pytorch" and "gives other out-of-distribution features" in caplog.text
    assert classifier.ood_reference.mean.shape[0] == pooled and classifier.gate is not None
    assert "Ignoring the out-of-distribution" not in caplog.text
    assert classifier.predict([synthetic_xray(1, 9)])[0].gate == NOT_FRONTAL_CHEST  # the old gate judged it
    classifier.gate = None  # the old reference alone: it reads the pooled features and accepts a training-like film
    assert classifier.predict([synthetic_xray(1, 9)])[0].warning is None

    save_file({"mean": reference["mean"][:8].contiguous(), "precision": reference["precision"][:8, :8].contiguous(),
               "threshold": reference["threshold"]}, older / REFERENCE_FILE)
    (older / "ood_gate.safetensors").unlink()
    caplog.clear()
    with caplog.at_level("WARNING"):
        classifier = PneumoniaClassifier.from_pretrained(older)
    assert classifier.ood_reference is None and "fitted on 8 features" in caplog.text
    assert classifier.predict([synthetic_xray(1, 9)])[0].decision in ("NORMAL", "PNEUMONIA")


def test_runtime_onnx_with_an_export_of_other_features_is_refused_with_the_reason(trained_model, tmp_path, caplog):
    from chestxray.classifier import ModelLoadError
    from chestxray.runtime import FEATURES_KEY

    other = _copy_model(trained_model, tmp_path / "other")
    _rewrite_onnx_metadata(other, lambda props: {**props, FEATURES_KEY: "something else"})
    with caplog.at_level("WARNING"), pytest.raises(ModelLoadError, match="ONNX runtime was required"):
        PneumoniaClassifier.from_pretrained(other, runtime="onnx")
    assert "(something else)" in caplog.text and f"train.export_onnx --model_dir {other}" in caplog.text


def test_export_cli_rewrites_a_matching_onnx_file(trained_model, tmp_path, capsys):
    from chestxray.runtime import ONNX_FILE
    from train.export_onnx import main as export_main

    folder = _copy_model(trained_model, tmp_path / "model")
    (folder / ONNX_FILE).unlink()
    assert PneumoniaClassifier.from_pretrained(folder).runtime == "pytorch"
    assert export_main(["--model_dir", str(folder)]) == 0
    assert "onnx/model.onnx" in capsys.readouterr().out
    assert PneumoniaClassifier.from_pretrained(folder).runtime == "onnxruntime"


def test_jpeg_uploads_are_decoded_at_reduced_scale_with_the_same_answer():
    """The bundled model, on a real X-ray when ../shared/data is here, blown up to a full-size upload."""
    import io
    from pathlib import Path

    from chestxray import read_image

    bundled = PneumoniaClassifier.from_pretrained(Path(__file__).resolve().parent.parent / "model")
    real = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray" / "train" / "PNEUMONIA").glob("*.jpeg"))[:3]
    pictures = [Image.open(path).convert("L") for path in real] or [synthetic_xray(label, 60 + label) for label in (0, 1)]
    for picture in pictures:
        buffer = io.BytesIO()
        picture.resize((2000, 1600), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=92)
        reduced, full = bundled.read(buffer.getvalue(), name="x.jpeg"), read_image(buffer.getvalue(), name="x.jpeg")
        assert full.size == (2000, 1600) and reduced.size == (500, 400)  # 1/4 scale keeps >= 2x the model's 160 px
        p_reduced, p_full = (bundled.predict([image])[0].pneumonia_probability for image in (reduced, full))
        assert abs(p_reduced - p_full) < 0.02


def test_onnx_predictions_need_no_pytorch_model_until_a_heatmap_is_asked_for(trained_model):
    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    assert classifier.runtime == "onnxruntime" and classifier._model is None
    assert classifier.predict([synthetic_xray(0, 3)])[0].decision in ("NORMAL", "PNEUMONIA")
    assert classifier._model is None  # answered without it
    assert grad_cam(classifier, synthetic_xray(1, 3)).shape == (classifier.image_size,) * 2
    assert classifier._model is not None and not any(p.requires_grad for p in classifier.model.parameters())
