"""Post-hoc score calibration: the fit, its storage in real ONNX / safetensors files, the runtime and
eval applying it, and `mobius calibrate` end to end on a generated split."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from perception_core.cli import main as mobius
from perception_core.runtime.score_calibration import (METADATA_KEY, ScoreCalibration, fit, read_calibration,
                                                       write_calibration)
from runtime_models import tiny_model


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------- the map and its fit

def test_fit_recovers_the_map_that_made_the_ious():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.7, 4000)
    ious = np.clip(_sigmoid(0.8 * np.log(raw / (1 - raw)) + 1.2) + rng.normal(0, 0.05, raw.size), 0, 1)
    calibration = fit(raw, ious)
    assert calibration.a == pytest.approx(0.8, abs=0.05) and calibration.b == pytest.approx(1.2, abs=0.08)
    # strictly increasing (rankings and so AP are kept) and in (0, 1)
    grid = np.linspace(0.001, 0.999, 500)
    mapped = calibration(grid)
    assert np.all(np.diff(mapped) > 0) and mapped.min() > 0 and mapped.max() < 1


def test_a_calibrated_model_gets_about_the_identity():
    rng = np.random.default_rng(1)
    raw = rng.uniform(0.01, 0.99, 4000)
    calibration = fit(raw, np.clip(raw + rng.normal(0, 0.05, raw.size), 0, 1))
    assert calibration.a == pytest.approx(1.0, abs=0.05) and calibration.b == pytest.approx(0.0, abs=0.05)
    assert np.allclose(ScoreCalibration()(np.array([0.2, 0.5])), [0.2, 0.5])


def test_bad_maps_and_records_are_refused_with_the_fix():
    for a, b in ((0.0, 0.0), (-1.0, 0.0), (float("nan"), 0.0), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="a > 0"):
            ScoreCalibration(a, b)
    for text in ("{", '{"kind": "isotonic", "a": 1, "b": 0}', '{"kind": "platt", "a": -2, "b": 0}', "[1]"):
        with pytest.raises(ValueError, match="mobius calibrate"):
            ScoreCalibration.from_json(text)
    with pytest.raises(ValueError, match="at least 2"):
        fit(np.array([0.5]), np.array([0.5]))
    record = ScoreCalibration(0.9, 1.1, {"fit_on": "val.json"})
    assert ScoreCalibration.from_json(record.to_json()) == record
    assert ScoreCalibration.from_json(record.to_json()).fit_info == {"fit_on": "val.json"}


# ----------------------------------------------------------------------------- storage in model files

@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Copies of the tiny model's ONNX (with its reuse graphs) and safetensors, free to rewrite."""
    tiny = tiny_model()
    folder = tmp_path_factory.mktemp("calibrated")
    for path in tiny.onnx.parent.iterdir():
        shutil.copy(path, folder / path.name)
    return folder / tiny.onnx.name, folder / tiny.weights.name, tiny


def test_write_read_and_remove_in_onnx_and_safetensors_keep_the_model(model_files):
    import onnxruntime as ort
    from safetensors import safe_open

    onnx_path, weights, tiny = model_files
    before = safe_open(str(weights), "numpy").metadata()
    calibration = ScoreCalibration(0.9, 1.05, {"fit_on": "val.json", "detections": 10})
    for path in (onnx_path, weights):
        assert read_calibration(path) is None
        write_calibration(path, calibration)
        assert read_calibration(path) == calibration and read_calibration(path).fit_info["detections"] == 10
    with safe_open(str(weights), "numpy") as new, safe_open(str(tiny.weights), "numpy") as old:
        metadata = new.metadata()
        assert {k: v for k, v in metadata.items() if k != METADATA_KEY} == (before or {})  # aliases kept
        assert sorted(new.keys()) == sorted(old.keys())
        assert all(np.array_equal(new.get_tensor(k), old.get_tensor(k)) for k in old.keys())
    # the rewritten graph computes what the original computes
    original = ort.InferenceSession(str(tiny.onnx), providers=["CPUExecutionProvider"])
    rewritten = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in original.get_inputs()] == [i.name for i in rewritten.get_inputs()]
    assert rewritten.get_modelmeta().custom_metadata_map[METADATA_KEY] == calibration.to_json()
    for path in (onnx_path, weights):
        write_calibration(path, None)
        assert read_calibration(path) is None
    with pytest.raises(ValueError, match=".onnx or .safetensors"):
        write_calibration(weights.with_suffix(".pt"), calibration)
    assert read_calibration(weights.with_suffix(".pt")) is None


def test_the_shipped_model_files_carry_the_same_calibration():
    from perception_core import assets

    if not (assets.ONNX.is_file() and assets.WEIGHTS.is_file()):
        pytest.skip("no shipped model")
    onnx, weights = read_calibration(assets.ONNX), read_calibration(assets.WEIGHTS)
    assert onnx is not None, "re-ship forgot 'mobius calibrate --data data/synth/val/instances.json'"
    assert onnx == weights and onnx.fit_info["ece_calibrated"] < onnx.fit_info["ece_raw"]


# ----------------------------------------------------------------------------- runtime and eval apply it

def test_processor_reports_mapped_scores_and_nothing_else_changes(model_files):
    from perception_core.runtime.processor import FrameProcessor, ProcessorConfig
    from perception_core.runtime.tracker import TrackerConfig

    onnx_path, _, tiny = model_files
    calibration = ScoreCalibration(1.3, 0.7)
    write_calibration(onnx_path, calibration)
    try:
        frames = [np.random.default_rng(i).integers(0, 255, (120, 160, 3), np.uint8) for i in range(3)]
        results = {}
        for calibrated in (True, False):
            config = ProcessorConfig(model=str(onnx_path), preset=str(tiny.preset), threads=1, score_threshold=0.0,
                                     calibrated_scores=calibrated, tracker=TrackerConfig(keep_score=0.0))
            processor = FrameProcessor(config, ["red star", "blue ring"])
            assert processor.backend.score_calibration == calibration   # read from the file either way
            assert processor.scores == ("calibrated (a=1.300, b=0.700)" if calibrated else "raw")
            results[calibrated] = [processor.process(frame) for frame in frames]
    finally:
        write_calibration(onnx_path, None)
    for mapped, raw in zip(results[True], results[False]):
        assert len(raw.instances) > 0 and len(mapped.instances) == len(raw.instances)
        for a, b in zip(mapped.instances, raw.instances):
            assert (a.track_id, a.label) == (b.track_id, b.label) and np.array_equal(a.mask, b.mask)
            assert a.score == pytest.approx(float(calibration(np.array([b.score]))[0]), rel=1e-6)


# ----------------------------------------------------------------------------- mobius calibrate end to end

@pytest.fixture(scope="module")
def split(tmp_path_factory):
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.writer import write_split

    root = tmp_path_factory.mktemp("calibrate_split")
    config = make_config("easy", image_size=(96, 128), use_photos=False)
    return write_split(root, "val", 6, 0, 0, config, progress=False).instances


def test_mobius_calibrate_fits_writes_and_eval_keeps_ap(model_files, split, capsys, tmp_path):
    onnx_path, weights, tiny = model_files
    common = ["--data", str(split), "--preset", str(tiny.preset), "--threads", "1", "--quiet"]
    code = mobius(["calibrate", "--onnx", str(onnx_path), "--also", str(weights), *common,
                   "--plot", str(tmp_path / "calibration.png")])
    out, err = capsys.readouterr()
    assert code == 0, err
    stored = read_calibration(onnx_path)
    assert stored is not None and stored == read_calibration(weights)
    assert stored.fit_info["ece_calibrated"] < stored.fit_info["ece_raw"] and stored.fit_info["images"] == 6
    assert f"raw {stored.fit_info['ece_raw']:.4f} -> calibrated {stored.fit_info['ece_calibrated']:.4f}" in out
    assert (tmp_path / "calibration.png").stat().st_size > 10_000

    metrics = {}
    for flag in ((), ("--raw-scores",)):
        code = mobius(["eval", "--onnx", str(onnx_path), *common, "--json", *flag])
        out, err = capsys.readouterr()
        assert code == 0, err
        metrics[flag] = json.loads(out)
    calibrated, raw = metrics[()], metrics[("--raw-scores",)]
    assert calibrated["scores"].startswith("calibrated (a=") and raw["scores"] == "raw"
    assert calibrated["mask"]["AP"] == raw["mask"]["AP"] and calibrated["box"]["AP"] == raw["box"]["AP"]
    assert calibrated["calibration"]["mask"]["ece"] == pytest.approx(stored.fit_info["ece_calibrated"])
    assert raw["calibration"]["mask"]["ece"] == pytest.approx(stored.fit_info["ece_raw"])

    assert mobius(["calibrate", "--onnx", str(onnx_path), "--remove"]) == 0
    assert read_calibration(onnx_path) is None
    write_calibration(weights, None)


def test_mobius_calibrate_refuses_bad_input_and_writes_nothing(model_files, split, capsys, tmp_path):
    onnx_path, weights, tiny = model_files
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not used")
    cases = [(["--weights", str(checkpoint), "--data", str(split)], ".onnx, .safetensors"),
             (["--onnx", str(onnx_path)], "--data is required"),
             (["--onnx", str(onnx_path), "--data", str(tmp_path / "missing.json")], "missing.json"),
             (["--onnx", str(onnx_path), "--also", str(tmp_path / "gone.onnx"), "--data", str(split)], "gone.onnx")]
    for args, message in cases:
        assert mobius(["calibrate", "--preset", str(tiny.preset), "--quiet", *args]) == 2
        assert message in capsys.readouterr().err
    # a dry run on part of the split reports and writes nothing; its recall counts only those images' objects
    assert mobius(["calibrate", "--onnx", str(onnx_path), "--data", str(split), "--preset", str(tiny.preset),
                   "--limit", "3", "--dry-run", "--quiet"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert read_calibration(onnx_path) is None and read_calibration(weights) is None
    from perception_core.evaluation.calibrate_command import first_images

    data = json.loads(split.read_text())
    part = first_images(data, 3)
    assert [i["id"] for i in part["images"]] == [i["id"] for i in data["images"][:3]]
    assert part["annotations"] and {a["image_id"] for a in part["annotations"]} <= {i["id"] for i in part["images"]}
