"""FrameProcessor on a tiny exported model: onnxruntime and torch agree, prompts change labels on
the next frame, kernel reuse reproduces the keyframe's masks, bad input gets clear errors."""
import numpy as np
import pytest

from perception_core.runtime.processor import FrameProcessor, ProcessorConfig
from perception_core.runtime.tracker import TrackerConfig
from perception_core.training.synth.config import make_config
from perception_core.training.synth.video import generate_video
from runtime_models import tiny_model

PROMPTS = ["red star", "blue circle", "green square"]


@pytest.fixture(scope="module")
def clip():
    frames, _ = generate_video(11, make_config("easy", frames=(5, 5), video_size=(96, 128)))
    return frames


def make(backend="onnx", prompts=PROMPTS, **overrides):
    model = tiny_model()
    path = model.onnx if backend == "onnx" else model.weights
    config = ProcessorConfig(backend=backend, model=str(path), preset=str(model.preset), size=model.size,
                             threads=1, score_threshold=0.5, **overrides)
    return FrameProcessor(config, prompts)


def _mask_iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def test_onnxruntime_and_torch_agree(clip):
    onnx, torch_ = make("onnx"), make("torch")
    compared = 0
    for frame in clip:
        a, b = onnx.process(frame), torch_.process(frame)
        assert a.kept_per_layer == b.kept_per_layer
        assert [i.track_id for i in a.instances] == [i.track_id for i in b.instances]
        for x, y in zip(a.instances, b.instances):
            assert x.label == y.label and x.label_index == y.label_index
            assert x.score == pytest.approx(y.score, abs=1e-3)
            assert np.allclose(x.box, y.box, atol=0.5)
            assert _mask_iou(x.mask, y.mask) > 0.98
            compared += 1
        assert (a.id_image != b.id_image).mean() < 0.01
    assert compared >= len(clip)  # the test model does produce instances to compare


def test_result_layout(clip):
    result = make().process(clip[0], stamp=12.5)
    assert result.stamp == 12.5
    assert result.id_image.dtype == np.uint16 and result.id_image.shape == clip[0].shape[:2]
    scores = [i.score for i in result.instances]
    assert scores == sorted(scores, reverse=True) and all(s >= 0.5 for s in scores)
    for inst in result.instances:
        assert inst.mask.shape == clip[0].shape[:2] and inst.mask.dtype == bool
        assert inst.area == inst.mask.sum() and inst.label == PROMPTS[inst.label_index]
        # the id image shows an instance wherever no better-scoring instance covers the pixel
        better = np.zeros_like(inst.mask)
        for other in result.instances:
            if other.score > inst.score:
                better |= other.mask
        assert np.all(result.id_image[inst.mask & ~better] == inst.track_id)
    assert set(np.unique(result.id_image)) <= {0} | {i.track_id for i in result.instances}
    assert set(result.timings_ms) == {"preprocess", "inference", "postprocess", "tracking", "total"}
    assert len(result.kept_per_layer) == 3 and result.decoder_gflops > 0


def test_bgr_input_matches_rgb(clip):
    a = make().process(clip[0])
    b = make().process(np.ascontiguousarray(clip[0][..., ::-1]), color="bgr")
    assert [(i.track_id, i.label, round(i.score, 4)) for i in a.instances] == \
           [(i.track_id, i.label, round(i.score, 4)) for i in b.instances]
    assert np.array_equal(a.id_image > 0, b.id_image > 0)


def test_prompt_change_takes_effect_on_next_frame(clip):
    processor = make()
    first = processor.process(clip[0])
    assert first.instances and {i.label for i in first.instances} <= set(PROMPTS)
    processor.set_prompts(["yellow triangle", "purple heart"])
    assert processor.prompts == ["yellow triangle", "purple heart"]
    second = processor.process(clip[1])
    assert second.instances, "the test model detects something under any prompts"
    assert {i.label for i in second.instances} <= {"yellow triangle", "purple heart"}
    with pytest.raises(ValueError, match="empty"):
        processor.set_prompts([])
    assert processor.prompts == ["yellow triangle", "purple heart"]  # a bad list changes nothing
    assert {i.label for i in processor.process(clip[2]).instances} <= {"yellow triangle", "purple heart"}


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_kernel_reuse_on_a_still_frame_reproduces_the_keyframe(clip, backend):
    processor = make(backend, kernel_reuse=3)
    results = [processor.process(clip[0]) for _ in range(4)]
    key = results[0]
    assert key.instances
    assert [r.kept_per_layer == [] for r in results] == [False, True, True, False]  # frame 3: next keyframe
    for reused in results[1:3]:
        assert [i.track_id for i in reused.instances] == [i.track_id for i in key.instances]
        for a, b in zip(reused.instances, key.instances):
            assert a.label == b.label and a.score == b.score and a.age == b.age + (reused is results[2]) + 1
            assert _mask_iou(a.mask, b.mask) > 0.99       # same image, same kernels: the same masks
        assert reused.decoder_gflops < key.decoder_gflops


def test_kernel_reuse_restarts_on_prompt_change(clip):
    processor = make(kernel_reuse=4)
    assert processor.process(clip[0]).kept_per_layer
    assert not processor.process(clip[1]).kept_per_layer
    processor.set_prompts(["blue circle"])
    result = processor.process(clip[2])
    assert result.kept_per_layer and {i.label for i in result.instances} <= {"blue circle"}


@pytest.mark.parametrize("frame, color, message", [
    (np.zeros((10, 10, 3), np.float32), "rgb", "uint8"),
    (np.zeros((10, 10), np.uint8), "rgb", "uint8"),
    (np.zeros((0, 10, 3), np.uint8), "rgb", "H, W > 0"),
    ([[0, 0, 0]], "rgb", "numpy array"),
    (np.zeros((10, 10, 3), np.uint8), "hsv", "rgb"),
])
def test_bad_frames_are_rejected_and_nothing_is_lost(clip, frame, color, message):
    processor = make()
    before = processor.process(clip[0])
    with pytest.raises(ValueError, match=message):
        processor.process(frame, color=color)
    after = processor.process(clip[1])
    assert {i.track_id for i in after.instances} & {i.track_id for i in before.instances}


def test_missing_or_broken_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        FrameProcessor(ProcessorConfig(model=str(tmp_path / "nope.onnx")), PROMPTS)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="could not be loaded"):
        FrameProcessor(ProcessorConfig(model=str(broken)), PROMPTS)
    with pytest.raises(ValueError, match="weights"):
        FrameProcessor(ProcessorConfig(backend="torch", model=str(broken)), PROMPTS)
    with pytest.raises(ValueError, match="kernel_reuse"):
        ProcessorConfig(kernel_reuse=0)
    with pytest.raises(ValueError, match="reuse_bottleneck .* kernel_reuse >= 2"):
        ProcessorConfig(reuse_bottleneck=True)
    with pytest.raises(ValueError, match="list"):
        make(prompts="red star")


def test_decoder_cost_matches_flop_counter():
    import torch

    from perception_core.model.build import build_from_name
    from perception_core.model.flops import count_flops
    from perception_core.runtime.decoder_cost import DecoderShape, decoder_gflops
    from runtime_models import TINY

    model = build_from_name("mobius_nano", TINY)
    kept = (16, 9, 4)  # 4x4 bottleneck tokens at 64 px
    report = count_flops(model, 64, num_prompts=5, tokens=4, kept=kept)
    measured = report.decoder_pruned - report.query_selection
    estimate = decoder_gflops(DecoderShape.from_config(model.config, 64), kept, prompts=5)
    assert estimate == pytest.approx(measured, rel=0.05)
    assert torch.is_tensor(next(model.parameters()))


def test_decoder_cost_matches_flop_counter_at_deployment_size():
    """At 384 px the factored mask read (not q . M on a dense stride-4 map) is a large part of the
    decoder: the analytic count must follow the deployment graph's."""
    from perception_core.model.build import build_from_name
    from perception_core.model.flops import count_flops
    from perception_core.runtime.decoder_cost import DecoderShape, decoder_gflops

    model = build_from_name("mobius_nano")
    kept = (100, 21, 20, 20)
    report = count_flops(model, 384, num_prompts=5, tokens=4, kept=kept)
    estimate = decoder_gflops(DecoderShape.from_config(model.config, 384), kept, prompts=5)
    assert estimate == pytest.approx(report.decoder_pruned - report.query_selection, rel=0.002)


def test_confirmed_tracks_are_carried_as_queries_and_keep_their_ids(clip):
    # random weights give many heavily overlapping masks, which duplicate suppression would merge:
    # switched off here, this test is about carrying queries
    processor = make("torch", tracker=TrackerConfig(duplicate_iou=1.0))
    results = [processor.process(clip[0]) for _ in range(5)]    # a still scene
    first = {i.track_id for i in results[0].instances}
    assert first and results[0].kept_per_layer[0] == 30         # K = 30 selected queries, nothing carried
    # after confirm_hits=2 frames every reported track is confirmed and its query enters the decoder
    assert results[2].kept_per_layer[0] == 30 + len(results[1].instances)
    for result in results[1:]:
        assert first <= {i.track_id for i in result.instances}
    assert all(i.age == 4 for i in results[4].instances if i.track_id in first)


def test_default_prompts_come_from_the_shipped_embeddings(tmp_path, monkeypatch):
    from perception_core import assets
    from perception_core.model.text_encoder import MiniLMTextEncoder, save_prompt_embeddings
    from perception_core.runtime import prompts as prompt_module

    # a shipped file whose vectors are those of other words: proves it is read instead of re-encoding
    stand_in = MiniLMTextEncoder().encode(["alpha", "beta", "gamma", "delta"])
    save_prompt_embeddings(tmp_path / "shipped.safetensors", list(assets.DEFAULT_PROMPTS), stand_in)
    monkeypatch.setattr(assets, "PROMPT_EMBEDDINGS", tmp_path / "shipped.safetensors")
    names, text = prompt_module.encode_prompts(list(assets.DEFAULT_PROMPTS))
    assert names == list(assets.DEFAULT_PROMPTS)
    np.testing.assert_array_equal(text["text_pooled"], stand_in.pooled.numpy())
    _, subset = prompt_module.encode_prompts([assets.DEFAULT_PROMPTS[2], assets.DEFAULT_PROMPTS[0]])  # rows too
    np.testing.assert_array_equal(subset["text_pooled"], stand_in.pooled.numpy()[[2, 0]])
    _, other = prompt_module.encode_prompts([assets.DEFAULT_PROMPTS[0], "purple cube"])   # one is new: MiniLM
    assert not np.allclose(other["text_pooled"][0], stand_in.pooled.numpy()[0])


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_warm_up_runs_the_model_and_leaves_no_state(clip, backend):
    """warm_up runs the graphs (a timing > 0) but the frames after it are exactly those of a processor
    that never warmed up: same ids, keyframe schedule, labels, scores and masks."""
    warmed, cold = make(backend, kernel_reuse=2), make(backend, kernel_reuse=2)
    assert warmed.warm_up() > 0
    seen = 0
    for frame in clip[:4]:
        a, b = warmed.process(frame), cold.process(frame)
        seen += len(a.instances)
        assert a.kept_per_layer == b.kept_per_layer
        assert [(i.track_id, i.label, i.score, i.age) for i in a.instances] == \
               [(i.track_id, i.label, i.score, i.age) for i in b.instances]
        for x, y in zip(a.instances, b.instances):
            assert np.array_equal(x.mask, y.mask)
    assert seen > 0                                   # the comparison was not between empty frames


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_bottleneck_reuse_on_a_still_frame_reproduces_the_keyframe(clip, backend):
    processor = make(backend, kernel_reuse=3, reuse_bottleneck=True)
    results = [processor.process(clip[0]) for _ in range(3)]
    key = results[0]
    assert key.instances and [r.kept_per_layer == [] for r in results] == [False, True, True]
    for reused in results[1:]:
        assert [i.track_id for i in reused.instances] == [i.track_id for i in key.instances]
        for a, b in zip(reused.instances, key.instances):
            assert _mask_iou(a.mask, b.mask) > 0.99       # the same image: the keyframe's coarse map is its own


def test_bottleneck_and_kernel_reuse_keep_the_same_tracks_on_a_moving_clip(clip):
    """Between keyframes of a moving clip both reuse modes keep the keyframe's tracks; their masks
    overlap but are not the same computation (bottleneck reuse keeps the keyframe's coarse map)."""
    kernel, bottleneck = make(kernel_reuse=3), make(kernel_reuse=3, reuse_bottleneck=True)
    for frame in clip[:1]:
        assert [i.track_id for i in kernel.process(frame).instances] == \
               [i.track_id for i in bottleneck.process(frame).instances]
    a, b = kernel.process(clip[1]), bottleneck.process(clip[1])
    assert not a.kept_per_layer and not b.kept_per_layer
    pairs = {i.track_id: i.mask for i in a.instances}
    shared = [(pairs[i.track_id], i.mask) for i in b.instances if i.track_id in pairs]
    assert shared
    ious = [_mask_iou(x, y) for x, y in shared]
    assert min(ious) > 0.3 and any(not np.array_equal(x, y) for x, y in shared)


def test_bottleneck_reuse_needs_a_graph_with_mask_coarse(tmp_path):
    import onnx

    model = onnx.load(str(tiny_model().onnx))
    kept = [o for o in model.graph.output if o.name != "mask_coarse"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    config = dict(backend="onnx", model=str(old), preset=str(tiny_model().preset), threads=1)
    with pytest.raises(ValueError, match="mask_coarse.*re-export"):
        FrameProcessor(ProcessorConfig(kernel_reuse=3, reuse_bottleneck=True, **config), PROMPTS)
    # the same file still serves everything else
    assert FrameProcessor(ProcessorConfig(kernel_reuse=3, **config), PROMPTS).process(
        np.zeros((64, 64, 3), np.uint8)).timings_ms["total"] > 0
    del model.graph.output[:1]                         # without pred_logits it serves nothing
    onnx.save(model, str(old))
    with pytest.raises(ValueError, match="lacks the outputs.*pred_logits"):
        FrameProcessor(ProcessorConfig(**config), PROMPTS)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_pruning_every_query_gives_an_empty_frame(clip, backend):
    processor = make(backend, prune_bounds=(1.0, 1.0), prune_min_kept=0)   # no confidence reaches 1
    result = processor.process(clip[0])
    assert result.kept_per_layer[1:] == [0, 0] and result.instances == []
    assert not result.id_image.any()


def test_a_wrong_companion_graph_is_named(tmp_path):
    """A lateral graph file that is not one (here the mask graph under its name) is refused with
    the file and the fix, not an onnxruntime input error."""
    import shutil

    from perception_core.runtime.io_names import LATERAL_SUFFIX, mask_graph_path

    model = tmp_path / "model.onnx"
    shutil.copy(tiny_model().onnx, model)
    shutil.copy(mask_graph_path(tiny_model().onnx), mask_graph_path(model, LATERAL_SUFFIX))
    processor = FrameProcessor(ProcessorConfig(model=str(model), preset=str(tiny_model().preset), threads=1,
                                               kernel_reuse=3, reuse_bottleneck=True), PROMPTS)
    with pytest.raises(ValueError, match=r"lateral graph '.*model\.lateral\.onnx' has inputs .*re-export it"):
        processor.warm_up()
