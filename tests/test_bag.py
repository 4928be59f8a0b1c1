"""`mobius bag make-sample` / `mobius bag eval` with real rosbag2 files (sqlite3 and mcap, rosbags).

The frame processor is the runtime's own (torch backend, a tiny random model at 128 px: an ONNX
export would take most of this file's time budget); metrics come from evaluation.video_eval.
"""
import json
import shutil

import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader, Writer

from perception_core.bag import messages
from perception_core.bag.evaluate import BagEvalConfig, evaluate_bag
from perception_core.bag.reader import SkipLog, ground_truth_from_topic, open_bag, read_frames
from perception_core.bag.results import ID_IMAGE_TOPIC, RECORDS_TOPIC
from perception_core.bag.sample import (COMPRESSED_TOPIC, GROUND_TRUTH_TOPIC, IMAGE_TOPIC, SampleConfig,
                                        make_sample, storage_plugin)
from perception_core.cli import main as mobius

FRAMES, SEED, SIZE = 8, 3, (128, 160)
SAMPLE = SampleConfig(frames=FRAMES, seed=SEED, size=SIZE)
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Weights and preset YAML of a tiny random model whose confidences spread over (0, 1)."""
    import torch
    import yaml

    from runtime_models import SIZE as NET_SIZE, TINY
    from perception_core.config import load_model_config, to_dict
    from perception_core.model.build import build_from_name, save_weights

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = build_from_name("mobius_nano", TINY)
    with torch.no_grad():
        model.decoder.classifier.bias.fill_(0.0)
        model.decoder.classifier.logit_scale.fill_(3.0)
    save_weights(model, folder / "tiny.safetensors")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(to_dict(load_model_config("mobius_nano", TINY))))
    return {"weights": folder / "tiny.safetensors", "preset": folder / "tiny.yaml", "size": NET_SIZE}


def processor_config(tiny):
    from perception_core.runtime.processor import ProcessorConfig

    return ProcessorConfig(backend="torch", model=str(tiny["weights"]), preset=str(tiny["preset"]),
                           size=tiny["size"], threads=1, score_threshold=THRESHOLD)


def model_args(tiny):
    return ["--backend", "torch", "--weights", str(tiny["weights"]), "--preset", str(tiny["preset"]),
            "--size", str(tiny["size"]), "--threads", "1", "--threshold", str(THRESHOLD)]


@pytest.fixture(scope="module")
def clip():
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.video import generate_video

    return generate_video(SEED, make_config("easy", frames=(FRAMES, FRAMES), video_size=SIZE, use_photos=False), "val")


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def sample(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return make_sample(folder / "sample", SampleConfig(frames=FRAMES, seed=SEED, size=SIZE, storage=request.param))


def decode(rle):
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def test_make_sample_round_trips(sample, clip):
    bag, gt_json = sample
    frames, tracks = clip
    assert any(bag.glob("*.mcap" if "mcap" in str(bag.parent.name) else "*.db3"))
    skipped = SkipLog()
    reader = open_bag(bag)
    try:
        raw = list(read_frames(reader, IMAGE_TOPIC, skipped))
        jpeg = list(read_frames(reader, COMPRESSED_TOPIC, skipped))
        truth = ground_truth_from_topic(reader, GROUND_TRUTH_TOPIC, skipped)
    finally:
        reader.close()
    assert skipped.total == 0 and len(raw) == len(jpeg) == FRAMES
    for t, frame in enumerate(raw):
        assert np.array_equal(frame.image, frames[t])                      # rgb8: lossless
        assert frame.stamp_ns == frame.bag_time_ns == SAMPLE.start_ns + t * 100_000_000
        assert np.abs(jpeg[t].image.astype(int) - frames[t]).mean() < 4    # jpeg: close
    json_truth = json.loads(gt_json.read_text())
    assert json_truth["videos"][0]["stamps_ns"] == truth["videos"][0]["stamps_ns"] == [f.stamp_ns for f in raw]
    assert len(truth["annotations"]) == len(json_truth["annotations"]) == len(tracks) >= 1
    for from_topic, from_json, track in zip(truth["annotations"], json_truth["annotations"], tracks):
        assert from_topic["category_id"] == from_json["category_id"] == track["category_id"]
        for t in range(FRAMES):
            if track["masks"][t] is None:
                assert from_topic["segmentations"][t] is None and from_json["segmentations"][t] is None
            else:
                assert np.array_equal(decode(from_topic["segmentations"][t]), track["masks"][t])
                assert np.array_equal(decode(from_json["segmentations"][t]), track["masks"][t])


@pytest.mark.parametrize("reuse", [[], ["--kernel-reuse", "3", "--reuse-bottleneck"]], ids=["every_frame", "reuse"])
def test_eval_metrics_equal_mobius_eval_video_on_the_same_frames(sample, tiny, tmp_path, capsys, reuse):
    """bag path (rgb8 topic, ground truth from the bag's topic) == eval-video path (the PNG frames and
    the json ground truth written beside the bag): the same results and the same metrics, also with
    kernel and bottleneck reuse between keyframes."""
    bag, gt_json = sample
    out = tmp_path / "result"
    assert mobius(["bag", "eval", str(bag), "--topic", IMAGE_TOPIC, "--out", str(out), *model_args(tiny),
                   *reuse]) == 0
    summary = json.loads((tmp_path / "result_metrics.json").read_text())
    results = json.loads((tmp_path / "result_results.json").read_text())
    assert summary["frames"] == FRAMES and summary["skipped"] == {}
    assert summary["settings"] == {"score_threshold": THRESHOLD, "kernel_reuse": 3 if reuse else 1,
                                   "reuse_bottleneck": bool(reuse)}
    truth = json.loads(gt_json.read_text())
    names = {c["id"]: c["name"] for c in truth["categories"]}
    assert summary["prompts"] == [names[c] for c in sorted({a["category_id"] for a in truth["annotations"]})]
    capsys.readouterr()
    video_results = tmp_path / "eval_video_results.json"
    assert mobius(["eval-video", "--data", str(gt_json), "--weights", str(tiny["weights"]), "--preset",
                   str(tiny["preset"]), "--size", str(tiny["size"]), "--threads", "1", "--score-threshold",
                   str(THRESHOLD), "--prompts", ",".join(summary["prompts"]), "--save-results", str(video_results),
                   "--json", "--quiet", *reuse]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert results and json.loads(video_results.read_text()) == results, "same frames, same tracks"
    assert summary["metrics"]["video_ap"] == expected["video_ap"]
    assert summary["metrics"]["tracking"] == expected["tracking"]
    assert set(summary["latency_ms"]) >= {"p50", "p90", "p99"}


def test_result_bag_holds_id_images_and_records_with_original_stamps(sample, tiny, tmp_path):
    bag, _ = sample
    out = tmp_path / "result"
    report = evaluate_bag(bag, out, BagEvalConfig(progress=False), processor_config(tiny))
    assert report.frames == FRAMES and report.metrics is not None
    metadata = yaml.safe_load((out / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert metadata["storage_identifier"] == ("mcap" if any(bag.glob("*.mcap")) else "sqlite3")
    with AnyReader([out], default_typestore=messages.typestore()) as reader:
        by_topic = {topic: [] for topic in (ID_IMAGE_TOPIC, RECORDS_TOPIC)}
        for connection, stamp, raw in reader.messages():
            by_topic[connection.topic].append((stamp, reader.deserialize(raw, connection.msgtype)))
    stamps = [SAMPLE.start_ns + t * 100_000_000 for t in range(FRAMES)]
    assert [s for s, _ in by_topic[ID_IMAGE_TOPIC]] == [s for s, _ in by_topic[RECORDS_TOPIC]] == stamps
    instances = 0
    for (stamp, ids), (_, records) in zip(by_topic[ID_IMAGE_TOPIC], by_topic[RECORDS_TOPIC]):
        assert messages.stamp_ns(ids.header) == messages.stamp_ns(records.header) == stamp
        assert ids.encoding == "mono16" and (ids.height, ids.width) == SIZE
        image = np.frombuffer(ids.data, np.uint16).reshape(SIZE)
        assert list(records.prompts) == report.prompts
        for record in records.instances:
            assert record.score >= THRESHOLD - 1e-6 and record.label in report.prompts
            assert (image == record.track_id).sum() <= record.area           # overlaps go to the better score
        visible = set(np.unique(image).tolist()) - {0}
        assert visible <= {int(r.track_id) for r in records.instances}
        instances += len(records.instances)
    assert instances > 0


def _copy_with_corruption(source, target, storage, corrupt):
    """Rewrites a bag message by message; corrupt(topic, index, raw, store) -> new raw bytes."""
    store = messages.typestore()
    with Reader(source) as reader, Writer(target, version=9, storage_plugin=storage_plugin(storage)) as writer:
        connections = {c.id: writer.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data, rihs01=c.digest)
                       for c in reader.connections}
        seen = {}
        for connection, stamp, raw in reader.messages():
            index = seen[connection.topic] = seen.get(connection.topic, -1) + 1
            writer.write(connections[connection.id], stamp, corrupt(connection.topic, index, raw, store))


def test_corrupted_messages_are_skipped_and_counted(sample, tiny, tmp_path):
    bag, _ = sample

    def corrupt(topic, index, raw, store):
        if topic == IMAGE_TOPIC and index == 3:
            return b"\x00\x01\x00\x00 these bytes are no CDR image"        # garbage as the message itself
        if topic == COMPRESSED_TOPIC and index == 5:                      # well-formed message, broken JPEG
            message = store.deserialize_cdr(raw, messages.COMPRESSED_IMAGE)
            message.data = np.frombuffer(b"not a jpeg at all" * 4, np.uint8)
            return store.serialize_cdr(message, messages.COMPRESSED_IMAGE)
        return raw

    broken = tmp_path / "broken"
    _copy_with_corruption(bag, broken, "mcap", corrupt)
    for topic in (IMAGE_TOPIC, COMPRESSED_TOPIC):
        out = tmp_path / f"result_{topic.count('/')}"
        report = evaluate_bag(broken, out, BagEvalConfig(topic=topic, progress=False), processor_config(tiny))
        assert (report.messages, report.frames, report.skipped.total) == (FRAMES, FRAMES - 1, 1)
        assert report.skipped.counts[topic] == 1 and report.metrics is not None
        with Reader(out) as reader:
            assert {c.topic: c.msgcount for c in reader.connections} == {ID_IMAGE_TOPIC: FRAMES - 1,
                                                                         RECORDS_TOPIC: FRAMES - 1}


def test_eval_with_a_json_ground_truth_and_clear_errors(sample, tiny, tmp_path, capsys):
    bag, gt_json = sample
    args = model_args(tiny)
    assert mobius(["bag", "eval", str(bag), "--gt", str(gt_json), "--out", str(tmp_path / "a"), *args]) == 0
    assert "video AP" in capsys.readouterr().out
    assert mobius(["bag", "eval", str(bag), "--out", str(tmp_path / "a"), *args]) == 1      # exists already
    assert "exists already" in capsys.readouterr().err
    assert mobius(["bag", "eval", str(bag), "--topic", "/nope", "--out", str(tmp_path / "b"), *args]) == 1
    assert "/camera/image_raw (sensor_msgs/msg/Image)" in capsys.readouterr().err     # lists the bag's topics
    assert not (tmp_path / "b").exists()
    assert mobius(["bag", "eval", str(tmp_path / "missing"), "--out", str(tmp_path / "c"), *args]) == 1
    assert "make-sample" in capsys.readouterr().err
    assert mobius(["bag", "make-sample", "--out", str(bag)]) == 1
    assert "exists already" in capsys.readouterr().err


def test_make_sample_cli_writes_both_storages(tmp_path):
    for storage, suffix in (("sqlite3", ".db3"), ("mcap", ".mcap")):
        out = tmp_path / storage
        assert mobius(["bag", "make-sample", "--out", str(out), "--storage", storage, "--frames", "3",
                       "--size", "64", "96"]) == 0
        assert len(list(out.glob(f"*{suffix}"))) == 1
        assert len(list((tmp_path / f"{storage}_frames").glob("*.png"))) == 3
        with Reader(out) as reader:
            assert {c.topic: c.msgcount for c in reader.connections} == {
                IMAGE_TOPIC: 3, COMPRESSED_TOPIC: 3, GROUND_TRUTH_TOPIC: 3}
    shutil.rmtree(tmp_path / "sqlite3")
