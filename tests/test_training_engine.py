"""Training stack: LR schedule, transforms, collate, recipe validation, checkpoints, the non-finite
guard, exact resume and DDP equivalence, on a tiny model and a tiny procedural dataset."""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from perception_core.config import ConfigError
from perception_core.training import engine
from perception_core.training.collate import collate
from perception_core.training.datasets import CocoDataset, YtvisDataset
from perception_core.training.recipe import OptimConfig, load_train_config
from perception_core.training.transforms import (Compose, Normalize, RandomCrop, RandomHorizontalFlip,
                                                 boxes_from_masks, crop, horizontal_flip, resize)

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "training" / "recipes" / "tiny_overfit.yaml"
IMAGE_SIZE = (64, 80)  # (H, W) of the generated images


# ----------------------------------------------------------------------------- fixtures

def write_tiny_coco(root: Path, count: int, seed: int = 0) -> Path:
    """`count` procedural images (PNG) with RLE masks, COCO json at root/instances.json."""
    from perception_core.training.synth.config import make_config
    from perception_core.training.synth.scene import generate_image
    from perception_core.training.synth.vocabulary import categories

    root.mkdir(parents=True, exist_ok=True)
    config = make_config("easy", image_size=IMAGE_SIZE, use_photos=False, area_fraction=(0.05, 0.3))
    images, annotations = [], []
    for index in range(count):
        image, instances = generate_image((seed, index), config)
        name = f"{index:04d}.png"
        cv2.imwrite(str(root / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        images.append({"id": index + 1, "file_name": name, "height": IMAGE_SIZE[0], "width": IMAGE_SIZE[1]})
        for instance in instances:
            rle = mask_utils.encode(np.asfortranarray(instance["mask"].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "iscrowd": 0,
                                "category_id": instance["category_id"], "bbox": instance["bbox"],
                                "area": instance["area"], "segmentation": rle})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories()}))
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "train"
    write_tiny_coco(root, 8)
    return root


@pytest.fixture(scope="module")
def prompt_embeddings(tiny_data):
    """MiniLM embeddings of the 64 category names, computed once for the module."""
    names = CocoDataset(tiny_data / "instances.json", tiny_data).category_names
    return engine.encode_prompts(names, max_tokens=16)


def tiny_config(data_root: Path, output_dir: Path, *overrides: str):
    return load_train_config(TINY_RECIPE, [f"data.train_annotations={data_root / 'instances.json'}",
                                           f"data.train_images={data_root}", f"output_dir={output_dir}",
                                           "data.train_sizes=[64]", "data.max_size=96", *overrides])


@pytest.fixture
def single_thread():
    """One intra-op thread: the same reduction order in every run compared, and no OpenMP
    spin-waiting on a busy 2-core machine. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rectangle_sample(rectangles, size=(64, 96)) -> dict:
    masks = np.zeros((len(rectangles), *size), dtype=bool)
    for mask, (x1, y1, x2, y2) in zip(masks, rectangles):
        mask[y1:y2, x1:x2] = True
    image = np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)
    return {"image": image, "masks": masks, "boxes": boxes_from_masks(masks),
            "labels": np.arange(len(rectangles), dtype=np.int64),
            "instance_ids": np.arange(len(rectangles), dtype=np.int64) + 10}


# ----------------------------------------------------------------------------- schedule

def test_lr_schedule_warmup_then_step_decay():
    optim = OptimConfig(lr=1e-3, warmup_steps=10, warmup_start_factor=0.1, milestones=(20, 30), gamma=0.5)
    assert engine.lr_at(0, optim) == pytest.approx(1e-4)
    assert engine.lr_at(5, optim) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert engine.lr_at(10, optim) == pytest.approx(1e-3)
    assert engine.lr_at(19, optim) == pytest.approx(1e-3)
    assert engine.lr_at(20, optim) == pytest.approx(5e-4)
    assert engine.lr_at(30, optim) == pytest.approx(2.5e-4)
    assert engine.lr_at(10_000, optim) == pytest.approx(2.5e-4)
    no_warmup = OptimConfig(lr=2e-4, warmup_steps=0)
    assert engine.lr_at(0, no_warmup) == pytest.approx(2e-4)


def test_param_groups_lower_backbone_lr_and_no_decay_on_norms(tiny_data, tmp_path):
    from perception_core.model.build import build_model

    config = tiny_config(tiny_data, tmp_path)
    model = build_model(config.model.build_config())
    optimizer = engine.build_optimizer(model, config.optim)
    groups = {group["name"]: group for group in optimizer.param_groups}
    base = engine.lr_at(0, config.optim)
    assert groups["backbone/decay"]["lr"] == pytest.approx(0.1 * base)
    assert groups["text/decay"]["lr"] == pytest.approx(0.1 * base)
    assert groups["rest/decay"]["lr"] == pytest.approx(base)
    assert groups["rest/no_decay"]["weight_decay"] == 0.0
    assert groups["rest/decay"]["weight_decay"] == pytest.approx(0.05)
    assert all(p.ndim <= 1 for p in groups["backbone/no_decay"]["params"])
    listed = sum(len(group["params"]) for group in optimizer.param_groups)
    assert listed == len([p for p in model.parameters() if p.requires_grad])  # each parameter once


# ----------------------------------------------------------------------------- transforms, collate

def test_flip_twice_is_identity_and_boxes_follow_masks():
    sample = rectangle_sample([(3, 5, 20, 30), (60, 0, 96, 64)])
    flipped = horizontal_flip(sample)
    np.testing.assert_array_equal(flipped["boxes"], boxes_from_masks(flipped["masks"]))
    assert flipped["boxes"][0].tolist() == [76, 5, 93, 30]
    twice = horizontal_flip(flipped)
    for key in ("image", "masks", "boxes", "labels"):
        np.testing.assert_array_equal(twice[key], sample[key])


def test_crop_drops_empty_instances_and_refits_boxes():
    sample = rectangle_sample([(0, 0, 10, 10), (30, 20, 60, 50), (80, 40, 96, 64)])
    cropped = crop(sample, top=15, left=25, height=40, width=60)
    assert cropped["image"].shape[:2] == (40, 60)
    assert cropped["labels"].tolist() == [1, 2]  # the first rectangle lies outside the window
    assert cropped["instance_ids"].tolist() == [11, 12]
    assert cropped["boxes"].tolist() == [[5, 5, 35, 35], [55, 25, 60, 40]]
    np.testing.assert_array_equal(cropped["boxes"], boxes_from_masks(cropped["masks"]))
    # random crops never leave an instance without mask pixels
    transform = RandomCrop(probability=1.0, min_fraction=0.3)
    for seed in range(20):
        out = transform(sample, np.random.default_rng(seed))
        assert out["masks"].reshape(len(out["masks"]), -1).any(axis=1).all()
        np.testing.assert_array_equal(out["boxes"], boxes_from_masks(out["masks"]))


def test_resize_scales_boxes_with_masks():
    sample = rectangle_sample([(8, 8, 40, 32)])
    resized = resize(sample, 32, 48)
    assert resized["masks"].shape == (1, 32, 48)
    np.testing.assert_allclose(resized["boxes"], [[4, 4, 20, 16]])
    np.testing.assert_allclose(boxes_from_masks(resized["masks"]), resized["boxes"], atol=1)


def test_collate_pads_to_multiple_of_32_and_normalizes_to_padded_size():
    normalize = Normalize()
    first = normalize(rectangle_sample([(0, 0, 10, 20)], size=(50, 70)))
    second = normalize(rectangle_sample([(10, 10, 30, 30), (0, 0, 5, 5)], size=(64, 33)))
    batch = collate([first, second])
    assert batch.images.shape == (2, 3, 64, 96)
    assert batch.valid_sizes.tolist() == [[50, 70], [64, 33]]
    assert torch.all(batch.images[0, :, 50:, :] == 0) and torch.all(batch.images[1, :, :, 33:] == 0)
    np.testing.assert_allclose(batch.targets[0]["boxes"][0].tolist(), [5 / 96, 10 / 64, 10 / 96, 20 / 64])
    np.testing.assert_allclose(batch.targets[1]["boxes"][0].tolist(), [20 / 96, 20 / 64, 20 / 96, 20 / 64])
    assert batch.targets[1]["masks"].shape == (2, 64, 96)
    assert batch.targets[0]["masks"][0, :20, :10].all() and batch.targets[0]["masks"].sum() == 200


def test_coco_dataset_decodes_polygons_and_uncompressed_rle(tiny_data, tmp_path):
    square = np.zeros((64, 80), dtype=bool)
    square[10:20, 30:50] = True
    compressed = mask_utils.encode(np.asfortranarray(square.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode("ascii")
    counts = _uncompressed_counts(square)
    annotations = [
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [30, 10, 20, 10], "iscrowd": 0,
         "segmentation": [[30, 10, 50, 10, 50, 20, 30, 20]]},
        {"id": 8, "image_id": 1, "category_id": 64, "bbox": [30, 10, 20, 10], "iscrowd": 0,
         "segmentation": {"size": [64, 80], "counts": counts}},
        {"id": 9, "image_id": 1, "category_id": 2, "bbox": [0, 0, 80, 64], "iscrowd": 1,
         "segmentation": compressed},
    ]
    coco = json.loads((tiny_data / "instances.json").read_text())
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": coco["images"][:1], "annotations": annotations,
                                "categories": coco["categories"]}))
    sample = CocoDataset(path, tiny_data)[0]
    assert sample["labels"].tolist() == [0, 63]  # category ids 1 and 64; the crowd one is skipped
    assert sample["instance_ids"].tolist() == [7, 8]
    assert np.array_equal(sample["masks"][1], square)
    assert abs(int(sample["masks"][0].sum()) - int(square.sum())) <= 40  # polygon rasterisation
    np.testing.assert_array_equal(sample["boxes"], [[30, 10, 50, 20]] * 2)


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE: run lengths in column-major order, starting with a run of zeros."""
    counts, current, run = [], False, 0
    for value in mask.flatten(order="F"):
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    return counts + [run]


def test_video_pairs_share_geometry(tiny_data, tmp_path):
    coco = json.loads((tiny_data / "instances.json").read_text())
    names = [image["file_name"] for image in coco["images"][:3]]
    tracks = []
    for annotation in coco["annotations"]:
        if annotation["image_id"] == 1:  # the objects of image 1 become tracks visible in frames 0 and 2
            tracks.append({"id": annotation["id"], "video_id": 1, "category_id": annotation["category_id"],
                           "iscrowd": 0, "bboxes": [annotation["bbox"], None, annotation["bbox"]],
                           "segmentations": [annotation["segmentation"], None, annotation["segmentation"]]})
    path = tmp_path / "videos.json"
    path.write_text(json.dumps({"videos": [{"id": 1, "file_names": names, "height": 64, "width": 80}],
                                "annotations": tracks, "categories": coco["categories"]}))
    transforms = Compose([RandomHorizontalFlip(0.5), RandomCrop(1.0, 0.5)])
    dataset = YtvisDataset(path, tiny_data, transforms, mode="pairs", max_delta=2)
    assert len(dataset) == 2 and len(YtvisDataset(path, tiny_data, mode="frames")) == 3
    for seed in range(6):
        pair = dataset[(0, (seed,))]
        first, second = pair["frames"]
        assert first["image"].shape == second["image"].shape
        if pair["delta"] == 2:  # same objects, same geometry: identical targets
            np.testing.assert_array_equal(first["masks"], second["masks"])
            assert first["instance_ids"].tolist() == second["instance_ids"].tolist()
        else:
            assert len(second["labels"]) == 0  # frame 1 has no annotations


# ----------------------------------------------------------------------------- recipe validation

@pytest.mark.parametrize("override, message", [
    ("optim.learning_rate=0.1", "unknown key"),
    ("optim.lr=-1e-4", "optim.lr"),
    ("batch_size=0", "batch_size"),
    ("model.overrides.decoder.num_querys=5", "unknown key"),
    ("data.train_annotations=/nonexistent/instances.json", "not found"),
])
def test_bad_recipe_raises_config_error(tiny_data, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tiny_data, tmp_path, override)


def test_unreadable_json_raises_before_any_step(tiny_data, tmp_path, monkeypatch):
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    config = tiny_config(tiny_data, tmp_path / "run", f"data.train_annotations={broken}")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a training step ran despite an invalid recipe")

    monkeypatch.setattr(engine, "train_one_step", must_not_run)
    with pytest.raises(ConfigError, match="not readable json"):
        engine.train(config, device="cpu", show_progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_write_is_atomic_and_truncation_is_detected(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    contents = {"format": engine.CHECKPOINT_FORMAT, "model": {"w": torch.arange(10_000.0)}, "step": 3,
                "config": {"optim": {"lr": 1e-4}, "data": {"train_sizes": [64]}}}
    engine.save_checkpoint(path, contents)
    loaded = engine.load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], contents["model"]["w"])

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(engine.CheckpointError, match="truncated or corrupt"):
        engine.load_checkpoint(truncated)

    real_save = torch.save

    def crash_midway(obj, file, *args, **kwargs):  # a full disk or a kill while writing
        real_save(obj, file, *args, **kwargs)
        file.truncate(100)
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError):
        engine.save_checkpoint(path, {**contents, "step": 4})
    assert engine.load_checkpoint(path)["step"] == 3  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary left behind
    with pytest.raises(OSError):
        engine.save_checkpoint(tmp_path / "new.pt", contents)
    assert not (tmp_path / "new.pt").exists()  # never half-written at its final path


# ----------------------------------------------------------------------------- non-finite guard

def make_run(config, prompt_embeddings) -> engine.Run:
    from perception_core.model.build import build_model
    from perception_core.training.distributed import DistInfo

    torch.manual_seed(config.seed)
    model = build_model(config.model.build_config())
    optimizer = engine.build_optimizer(model, config.optim)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return engine.Run(model, engine.build_criterion(config.loss), optimizer, scaler, prompt_embeddings,
                      config, DistInfo(), amp_dtype=None)


def test_nonfinite_loss_skips_the_update_and_aborts_when_persistent(tiny_data, tmp_path, prompt_embeddings,
                                                                   single_thread):
    config = tiny_config(tiny_data, tmp_path, "max_consecutive_nonfinite=2", "data.crop_probability=0")
    run = make_run(config, prompt_embeddings)
    dataset = CocoDataset(tiny_data / "instances.json", tiny_data, Compose([Normalize()]))
    batch = collate([dataset[0], dataset[1]])
    real_forward = run.criterion.forward

    def nan_class_loss(outputs, targets, prefix=None):
        losses = real_forward(outputs, targets, prefix)
        return {**losses, "loss_class": losses["loss_class"] * float("nan")}

    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    run.criterion.forward = nan_class_loss
    result = engine.train_one_step(run, batch)
    assert result.skipped and math.isnan(result.loss)
    assert run.state.step == 1 and run.state.skipped_steps == 1
    assert all(torch.equal(p, before[name]) for name, p in run.model.named_parameters())
    assert not run.optimizer.state  # AdamW never stepped: no moments accumulated

    run.criterion.forward = real_forward
    result = engine.train_one_step(run, batch)
    assert not result.skipped and math.isfinite(result.loss)
    assert run.state.consecutive_nonfinite == 0
    assert any(not torch.equal(p, before[name]) for name, p in run.model.named_parameters())

    run.criterion.forward = nan_class_loss
    engine.train_one_step(run, batch)
    with pytest.raises(engine.NonFiniteLossError, match="2 non-finite losses in a row"):
        engine.train_one_step(run, batch)


# ----------------------------------------------------------------------------- exact resume

def step_losses(result) -> list[float]:
    return [record.loss for record in result.history]


def test_resume_repeats_the_uninterrupted_run(tiny_data, tmp_path, prompt_embeddings, single_thread):
    # 8 images, batch 2: 4 steps per epoch; max_steps 6 crosses an epoch boundary after the resume.
    straight = engine.train(tiny_config(tiny_data, tmp_path / "straight", "optim.max_steps=6"),
                            device="cpu", prompt_embeddings=prompt_embeddings, show_progress=False)
    first = engine.train(tiny_config(tiny_data, tmp_path / "resumed", "optim.max_steps=3"),
                         device="cpu", prompt_embeddings=prompt_embeddings, show_progress=False)
    checkpoint = tmp_path / "resumed" / "checkpoints" / "last.pt"
    assert engine.load_checkpoint(checkpoint)["step"] == 3
    second = engine.train(tiny_config(tiny_data, tmp_path / "resumed", "optim.max_steps=6"), device="cpu",
                          resume=checkpoint, prompt_embeddings=prompt_embeddings, show_progress=False)
    assert [r.step for r in second.history] == [4, 5, 6]
    assert len(set(step_losses(straight))) == 6  # the losses do change from step to step
    np.testing.assert_allclose(step_losses(first) + step_losses(second), step_losses(straight), rtol=0, atol=1e-6)
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_prompt_file_trains_like_the_encoder_and_a_bad_file_stops_before_training(tiny_data, tmp_path,
                                                                                   prompt_embeddings, single_thread,
                                                                                   capsys):
    """`mobius train --prompt-embeddings`: a 'mobius prompts' file (rows in another order, one extra
    prompt) gives the run the encoder's inputs, so the losses match the run given MiniLM's embeddings;
    a file that cannot be read is an invalid recipe (exit 2) before any checkpoint is written."""
    from perception_core import cli
    from perception_core.model.prompt_io import write_prompt_embeddings

    names = CocoDataset(tiny_data / "instances.json", tiny_data).category_names
    order = [*reversed(range(len(names)))]
    width = prompt_embeddings.mask.shape[1]
    extra = np.zeros((1, width), bool)
    extra[0, :2] = True
    file = tmp_path / "prompts.safetensors"
    write_prompt_embeddings(file, [names[i] for i in order] + ["an extra prompt"], {
        "tokens": np.concatenate([prompt_embeddings.tokens.numpy()[order], np.ones((1, width, 384), np.float32)]),
        "mask": np.concatenate([prompt_embeddings.mask.numpy()[order], extra]),
        "pooled": np.concatenate([prompt_embeddings.pooled.numpy()[order], np.eye(1, 384, dtype=np.float32)])})
    read = engine.encode_prompts(names, 16, file)
    for got, want in zip((read.tokens, read.mask, read.pooled),
                         (prompt_embeddings.tokens, prompt_embeddings.mask, prompt_embeddings.pooled)):
        assert torch.equal(got, want)
    from_memory = engine.train(tiny_config(tiny_data, tmp_path / "memory", "optim.max_steps=2"), device="cpu",
                               prompt_embeddings=prompt_embeddings, show_progress=False)
    from_file = engine.train(tiny_config(tiny_data, tmp_path / "file", "optim.max_steps=2"), device="cpu",
                             prompt_file=file, show_progress=False)
    assert step_losses(from_file) == step_losses(from_memory)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    code = cli.main(["train", "--config", str(TINY_RECIPE), "--prompt-embeddings", str(broken), "--no-progress",
                     f"data.train_annotations={tiny_data / 'instances.json'}", f"data.train_images={tiny_data}",
                     f"output_dir={tmp_path / 'refused'}"])
    assert code == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "checkpoints").exists()


def test_ship_then_fine_tune_from_the_shipped_weights_and_ship_again(tiny_data, tmp_path, prompt_embeddings):
    """ship.py on a real 3-step run: model.json carries the run's metrics.csv summary (the card needs no
    run folder) and the files no score calibration. A run with model.init_weights = those weights starts
    from them, and shipping it counts the earlier steps."""
    from safetensors.torch import load_file

    from perception_core.runtime.onnx_engine import OnnxEngine
    from perception_core.runtime.score_calibration import read_calibration
    from perception_core.training.ship import ship

    engine.train(tiny_config(tiny_data, tmp_path / "run", "optim.max_steps=3"), device="cpu",
                 prompt_embeddings=prompt_embeddings, show_progress=False)
    assets = tmp_path / "assets"
    info = ship(tmp_path / "run" / "checkpoints" / "last.pt", assets, size=128)
    assert info["step"] == 3 and info["training"]["steps"] == 3 and info["training"]["hours"] > 0
    assert math.isfinite(info["training"]["first_loss"]) and math.isfinite(info["training"]["last_loss"])
    assert json.loads((assets / "model.json").read_text())["training"] == info["training"]
    weights, onnx = assets / f"{info['preset']}.safetensors", assets / f"{info['preset']}.onnx"
    assert OnnxEngine(onnx, threads=1).size == 128
    assert read_calibration(onnx) is None and read_calibration(weights) is None

    config = tiny_config(tiny_data, tmp_path / "fine_tune", "optim.max_steps=1", f"model.init_weights={weights}")
    engine.train(config, device="cpu", prompt_embeddings=prompt_embeddings, show_progress=False)
    tuned = engine.load_checkpoint(tmp_path / "fine_tune" / "checkpoints" / "last.pt")
    start = load_file(str(weights))
    # one AdamW step moves each weight by about the step's lr at most: it started from the shipped weights
    # (BatchNorm's running statistics are buffers that the step's forward pass updates: left out)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    largest = max(float((tuned["model"][name] - tensor).abs().max()) for name, tensor in start.items()
                  if not name.endswith(buffers))
    assert largest <= 2 * engine.lr_at(1, config.optim)
    again = ship(tmp_path / "fine_tune" / "checkpoints" / "last.pt", assets, size=128)
    assert (again["step"], again["init_step"], again["training"]["steps"]) == (4, 3, 4)
    assert again["training"]["first_loss"] == info["training"]["first_loss"]
    # a run started from that run's checkpoint (not from shipped weights) still counts every earlier step
    chained = tiny_config(tiny_data, tmp_path / "chained", "optim.max_steps=2",
                          f"model.init_weights={tmp_path / 'fine_tune' / 'checkpoints' / 'last.pt'}")
    engine.train(chained, device="cpu", prompt_embeddings=prompt_embeddings, show_progress=False)
    third = ship(tmp_path / "chained" / "checkpoints" / "last.pt", tmp_path / "assets_chained", size=128)
    assert (third["step"], third["init_step"], third["training"]["steps"]) == (6, 4, 6)
    assert third["training"]["first_loss"] == info["training"]["first_loss"]
    assert third["training"]["hours"] > again["training"]["hours"]

    with pytest.raises(ConfigError, match="model.init_weights: file .* not found"):   # refused when loaded
        tiny_config(tiny_data, tmp_path / "broken", f"model.init_weights={tmp_path / 'missing.safetensors'}")
    wrong = tmp_path / "wrong.safetensors"      # weights of another architecture: refused before any step
    wrong.write_bytes((assets / "default_prompts.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="model.init_weights: .*wrong.safetensors"):
        engine.train(tiny_config(tiny_data, tmp_path / "broken", f"model.init_weights={wrong}"), device="cpu",
                     prompt_embeddings=prompt_embeddings, show_progress=False)
    assert not (tmp_path / "broken" / "checkpoints").exists()


def test_ship_a_soup_of_fine_tunes_averages_their_weights_and_counts_shared_steps_once(tiny_data, tmp_path,
                                                                                      prompt_embeddings):
    """Two fine-tunes (2 and 1 steps) of one 3-step run's checkpoint, shipped with that checkpoint as a
    uniform soup: the weights are the element-wise mean, the 3 shared steps count once (3 + 2 + 1 = 6,
    not 3 + 5 + 4), and each ingredient is listed with the steps behind it. Checkpoints of another
    architecture or with other weights are refused before anything is written."""
    from safetensors.torch import load_file

    from perception_core.training.lineage import behind_checkpoint
    from perception_core.training.model_card import _lineage
    from perception_core.training.ship import main as ship_main
    from perception_core.training.ship import ship
    from perception_core.training.soup import load_ingredients

    engine.train(tiny_config(tiny_data, tmp_path / "base", "optim.max_steps=3"), device="cpu",
                 prompt_embeddings=prompt_embeddings, show_progress=False)
    base = tmp_path / "base" / "checkpoints" / "last.pt"
    for name, steps, seed in (("a", 2, 1), ("b", 1, 2)):
        engine.train(tiny_config(tiny_data, tmp_path / name, f"optim.max_steps={steps}", f"seed={seed}",
                                 f"model.init_weights={base}"), device="cpu", prompt_embeddings=prompt_embeddings,
                     show_progress=False)
    paths = [base, tmp_path / "a" / "checkpoints" / "last.pt", tmp_path / "b" / "checkpoints" / "last.pt"]
    info = ship(paths, tmp_path / "assets", size=128)
    assert [part["step"] for part in info["soup"]] == [3, 5, 4] and info["step"] == 6
    assert info["training"]["steps"] == 6 and "init_step" not in info
    hours = []                   # each fine-tune alone: the base run's hours and its own
    for path in paths[1:]:
        contents = engine.load_checkpoint(path)
        hours.append(behind_checkpoint(path, contents["config"], int(contents["step"]))[2]["hours"])
    assert max(hours) < info["training"]["hours"] < sum(hours)       # the base run's hours counted once
    shipped = load_file(str(tmp_path / "assets" / f"{info['preset']}.safetensors"))
    states = [engine.load_checkpoint(p)["model"] for p in paths]
    name = next(n for n, t in shipped.items() if t.is_floating_point() and not torch.equal(states[1][n], states[2][n]))
    torch.testing.assert_close(shipped[name], (states[0][name] + states[1][name] + states[2][name]) / 3)
    card = _lineage(info)
    assert "uniform average of the weights of 3 checkpoints" in card and "(5 steps behind it)" in card

    other = engine.load_checkpoint(paths[1])
    model_section = {**other["config"]["model"], "preset": "mobius_mini_m"}
    torch.save({**other, "config": {**other["config"], "model": model_section}}, tmp_path / "other_model.pt")
    with pytest.raises(ValueError, match="only checkpoints of one architecture"):
        load_ingredients([paths[0], tmp_path / "other_model.pt"])
    weights = dict(other["model"])
    weights.pop(name)
    torch.save({**other, "model": weights}, tmp_path / "other_weights.pt")
    with pytest.raises(ValueError, match="other weights than the first"):
        load_ingredients([paths[0], tmp_path / "other_weights.pt"])
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        load_ingredients([paths[0]])
    with pytest.raises(SystemExit) as refused:
        ship_main(["--checkpoint", str(paths[0]), str(tmp_path / "missing.pt"), "--out", str(tmp_path / "refused")])
    assert refused.value.code == 2 and not (tmp_path / "refused").exists()


# ----------------------------------------------------------------------------- DDP

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, overrides: list, data_root: str, output_dir: str,
               embeddings, result_file: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    from perception_core.training.distributed import cleanup

    try:
        config = tiny_config(Path(data_root), Path(output_dir), *overrides)
        result = engine.train(config, device="cpu", prompt_embeddings=embeddings, show_progress=False)
        if rank == 0:
            Path(result_file).write_text(json.dumps({"loss": step_losses(result),
                                                     "grad_norm": [r.grad_norm for r in result.history]}))
    finally:
        cleanup()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_double_batch(tiny_data, tmp_path, prompt_embeddings,
                                                                single_thread):
    # Box-only losses (no random mask points), frozen BatchNorm (no batch statistics) and one image
    # size (equal padding) make the two set-ups compute the same function of the same samples.
    overrides = ["data.use_masks=false", "freeze_batchnorm=true", "data.crop_probability=0",
                 "optim.max_steps=2", "optim.warmup_steps=0", "checkpoint_interval=1000"]
    result_file = tmp_path / "ddp_losses.json"
    torch.multiprocessing.spawn(ddp_worker, nprocs=2, join=True,
                                args=(2, free_port(), [*overrides, "batch_size=2"], str(tiny_data),
                                      str(tmp_path / "ddp"), prompt_embeddings, str(result_file)))
    single = engine.train(tiny_config(tiny_data, tmp_path / "single", *overrides, "batch_size=4"),
                          device="cpu", prompt_embeddings=prompt_embeddings, show_progress=False)
    ddp = json.loads(result_file.read_text())
    assert len(ddp["loss"]) == 2
    np.testing.assert_allclose(ddp["loss"], step_losses(single), rtol=1e-4)
    # The gradient norm (before clipping) is that of the gradient averaged over the ranks: equal
    # only if DDP averages and the criterion normalises by the global number of boxes.
    np.testing.assert_allclose(ddp["grad_norm"], [r.grad_norm for r in single.history], rtol=1e-4)
