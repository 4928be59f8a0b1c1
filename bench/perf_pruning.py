"""Pruned decoder FLOPs on real frames (issue 9: decoder with pruning <= 25% of the MaskDINO-style
baseline).

The default model runs (onnxruntime, no track queries) over a generated test clip prompted with the
clip's own categories; each frame's `kept_per_layer` (queries entering each decoder layer) is
recorded. Decoder GFLOPs (count_flops, query selection and text projections included, as in the
FLOPs table) are then replayed at the mean kept count per layer and compared with:
  - the same model without pruning (all K queries through all L layers);
  - a MaskDINO-style baseline at the SAME scale (mobius_nano with the maskdino pixel decoder and the
    multi-scale decoder, no pruning): the measured pair;
  - glee_maskdino_mini_m vs mobius_mini_m with the default model's kept FRACTIONS mapped onto its 9
    layers by relative depth (clamped to its min_kept): a projection, at 384 px and, as in the paper's
    Tab. 10, at 800 px;
  - when MOBIUS_MINI_M_WEIGHTS names a trained mobius_mini_m (training/recipes/mobius_mini_m_synth_gpu.yaml;
    not shipped, 90 MB), glee_maskdino_mini_m vs that model's kept counts MEASURED on the same clip
    (torch, its preset's pruning).
The mean of the per-frame analytic decoder cost (runtime/decoder_cost.py, no query selection) is
reported beside it as a check that rounding the mean kept count changes little.
"""
from __future__ import annotations

import os

import numpy as np

from perf_common import Section, Settings, build_random, clip_frames, clip_prompts, goal, machine_line

SIZE = 384
LARGE = 800
# decoder GFLOPs of MOBIUS / GLEE-MaskDINO in the paper: Tab. 12 (384 px short side), Tab. 10 (800x800)
PAPER_RATIO = {SIZE: 4.9 / 9.9, LARGE: 10.0 / 20.1}
MINI_WEIGHTS_ENV = "MOBIUS_MINI_M_WEIGHTS"
NANO_MASKDINO = ["pixel_decoder.type=maskdino", "decoder.multi_scale=true", "pruning.enabled=false"]


def kept_on_clip(runner, frames: list[np.ndarray], prompts: list[str]) -> np.ndarray:
    """(F, L) queries entering each decoder layer on every frame, for an evaluation ModelRunner (onnx or
    torch, with its preset's pruning)."""
    from perception_core.evaluation.predict import encode_prompts
    from perception_core.runtime.preprocess import preprocess

    text = encode_prompts(prompts, runner.max_tokens)
    return np.asarray([runner.decode(preprocess(frame, runner.size)[0], text)["kept_per_layer"] for frame in frames],
                      dtype=np.int64)


def mini_kept_on_clip(frames: list[np.ndarray], prompts: list[str], threads: int) -> dict | None:
    """{weights, kept (F, L), mean_kept (L,)} of the trained mobius_mini_m that MOBIUS_MINI_M_WEIGHTS names,
    run on the clip with its preset's pruning; None when the variable is unset."""
    path = os.environ.get(MINI_WEIGHTS_ENV)
    if not path:
        return None
    import torch

    from perception_core.evaluation.predict import ModelRunner, load_torch_model

    torch.set_num_threads(threads)
    runner = ModelRunner.from_torch(load_torch_model(path, "mobius_mini_m"), SIZE)
    kept = kept_on_clip(runner, frames, prompts)
    return {"weights": os.path.basename(path), "kept": kept.tolist(), "mean_kept": kept.mean(axis=0).tolist()}


def project_kept(mean_kept: np.ndarray, queries: int, layers: int, min_kept: int) -> tuple[int, ...]:
    """Kept fractions of one decoder mapped onto another of `layers` layers and `queries` queries by
    relative depth (linear interpolation), clamped to [min_kept, queries], non-increasing; layer 0
    always gets all queries (pruning starts after layer 0)."""
    if len(mean_kept) < 2 or layers < 1:
        raise ValueError(f"need a source of >= 2 layers and a target of >= 1, got {len(mean_kept)} and {layers}")
    fractions = np.asarray(mean_kept, float) / float(mean_kept[0])
    source = np.linspace(0.0, 1.0, len(fractions))
    target = np.linspace(0.0, 1.0, layers)
    kept = np.clip(np.rint(np.interp(target, source, fractions) * queries), min(min_kept, queries), queries)
    kept[0] = queries
    return tuple(int(k) for k in np.minimum.accumulate(kept))


def decoder_table(mean_kept: np.ndarray, prompts: int, tokens: int, mini_mean_kept: np.ndarray | None = None
                  ) -> list[dict]:
    """Rows: name, kept per layer, decoder GFLOPs (count_flops), ratio to the row's baseline; a tenth
    row replays a trained mobius_mini_m's measured mean kept counts when given."""
    from perception_core import assets
    from perception_core.model.flops import count_flops

    nano = build_random(assets.PRESET)
    kept = np.minimum.accumulate(np.rint(mean_kept)).astype(int)
    kept[0] = nano.config.decoder.num_queries                 # pruning starts after layer 0
    kept = tuple(int(k) for k in kept)
    nano_pruned = count_flops(nano, SIZE, prompts, tokens, kept=kept)
    nano_full = count_flops(nano, SIZE, prompts, tokens, prune=False)
    nano_base = count_flops(build_random(assets.PRESET, NANO_MASKDINO), SIZE, prompts, tokens, prune=False)
    mini = build_random("mobius_mini_m")
    projected = project_kept(mean_kept, mini.config.decoder.num_queries, mini.config.decoder.num_layers,
                             mini.config.pruning.min_kept)
    mini_pruned = count_flops(mini, SIZE, prompts, tokens, kept=projected)
    mini_floor = count_flops(mini, SIZE, prompts, tokens, kept=mini.config.pruning.min_kept)
    mini_full = count_flops(mini, SIZE, prompts, tokens, prune=False)
    mini_base = count_flops(build_random("glee_maskdino_mini_m"), SIZE, prompts, tokens, prune=False)
    # the paper's Tab. 10 is at 800 px, where the pixel decoder's tokens (query selection) weigh more
    large_pruned = count_flops(mini, LARGE, prompts, tokens, kept=projected)
    large_base = count_flops(build_random("glee_maskdino_mini_m"), LARGE, prompts, tokens, prune=False)
    rows = [("baseline", "mobius_nano-scale MaskDINO-style baseline (no pruning)", nano_base, nano_base, "-"),
            ("full", f"{assets.PRESET} without pruning", nano_full, nano_base, "-"),
            ("measured", f"{assets.PRESET}, pruned, kept measured on the clip", nano_pruned, nano_base, nano_full),
            ("mini_base", "glee_maskdino_mini_m (no pruning)", mini_base, mini_base, "-"),
            ("mini_full", "mobius_mini_m without pruning", mini_full, mini_base, "-"),
            ("projected", "mobius_mini_m, pruned, kept PROJECTED from the clip", mini_pruned, mini_base, mini_full),
            ("floor", "mobius_mini_m, min_kept from layer 1 (the floor its config allows)", mini_floor, mini_base,
             mini_full),
            ("large_base", f"glee_maskdino_mini_m at {LARGE}x{LARGE} (no pruning)", large_base, large_base, "-"),
            ("large", f"mobius_mini_m at {LARGE}x{LARGE}, pruned, kept PROJECTED from the clip", large_pruned,
             large_base, "-")]
    if mini_mean_kept is not None:
        measured = np.minimum.accumulate(np.rint(mini_mean_kept)).astype(int)
        measured[0] = mini.config.decoder.num_queries
        rows.append(("mini_trained", "mobius_mini_m TRAINED, pruned, kept measured on the clip",
                     count_flops(mini, SIZE, prompts, tokens, kept=tuple(int(k) for k in measured)), mini_base,
                     mini_full))
    return [{"key": key, "name": name, "kept": list(report.kept_per_layer), "decoder": report.decoder_pruned,
             "vs_baseline": report.decoder_pruned / base.decoder,
             "vs_unpruned": None if unpruned == "-" else report.decoder_pruned / unpruned.decoder}
            for key, name, report, base, unpruned in rows]


def by_key(rows: list[dict]) -> dict[str, dict]:
    """decoder_table's rows by their key ('measured', 'projected', 'floor', 'large', 'mini_trained', ...)."""
    return {row["key"]: row for row in rows}


def same_form_check(projected: list[int], prompts: int) -> dict:
    """The MaskDINO-style baseline given MOBIUS's sample-first value projection too (layers after the
    first; analytic, runtime/decoder_cost.py, no query selection), against mobius_mini_m projected."""
    from perception_core.config import load_model_config
    from perception_core.runtime.decoder_cost import DecoderShape, decoder_gflops

    base, ours = load_model_config("glee_maskdino_mini_m"), load_model_config("mobius_mini_m")
    full = [base.decoder.num_queries] * base.decoder.num_layers
    out = {}
    for size in (SIZE, LARGE):
        shape = DecoderShape.from_config(base, size)
        out[size] = {"baseline": decoder_gflops(shape, full, prompts),
                     "baseline_same_form": decoder_gflops(shape, full, prompts, sample_first=True),
                     "ours": decoder_gflops(DecoderShape.from_config(ours, size), projected, prompts)}
    return out


def run(settings: Settings) -> Section:
    from perception_core.config import load_model_config
    from perception_core.evaluation.predict import ModelRunner
    from perception_core.runtime.decoder_cost import DecoderShape, decoder_gflops
    from perf_latency import default_model

    load = os.getloadavg()
    frames, tracks = clip_frames(8 if settings.quick else 32, seed=11)
    prompts = clip_prompts(tracks)
    model = default_model(settings, frames[0])
    kept = kept_on_clip(ModelRunner.from_onnx(model.onnx, model.preset, settings.threads), frames, prompts)
    cfg = load_model_config(model.preset)
    shape = DecoderShape.from_config(cfg, SIZE)
    per_frame = [decoder_gflops(shape, row, len(prompts)) for row in kept]
    mean_kept = kept.mean(axis=0)
    tokens = cfg.text.max_tokens
    mini = mini_kept_on_clip(frames, prompts, settings.threads)
    rows = decoder_table(mean_kept, len(prompts), tokens, None if mini is None else np.asarray(mini["mean_kept"]))
    data = {"kept": kept.tolist(), "mean_kept": mean_kept.tolist(), "prompts": prompts, "rows": rows,
            "mini_trained": mini, "same_form": same_form_check(by_key(rows)["projected"]["kept"], len(prompts)),
            "analytic_mean": float(np.mean(per_frame)), "analytic_full": decoder_gflops(
                shape, [cfg.decoder.num_queries] * cfg.decoder.num_layers, len(prompts)),
            "trained": model.trained}
    return Section("pruning", "Pruned decoder FLOPs on real frames", render(data, settings, len(frames), load),
                   data=data)


def render(data: dict, settings: Settings, frames: int, load) -> str:
    rows = data["rows"]
    model = "the shipped mobius_nano" if data["trained"] else "mobius_nano with RANDOM weights (no shipped model)"
    keyed = by_key(rows)
    measured, projected, floor, large = keyed["measured"], keyed["projected"], keyed["floor"], keyed.get("large")
    large_text = (f"; the same projection at {LARGE}x{LARGE}: {large['vs_baseline']:.1%}, "
                  f"{goal(large['vs_baseline'] <= 0.25)}" if large else "")
    lines = [f"Conditions: {model}, onnxruntime ({settings.threads} threads), {frames}-frame generated test clip "
             f"(288x384, 'normal', seed 11) letterboxed to {SIZE}x{SIZE}, prompted with its {len(data['prompts'])} "
             f"categories ({', '.join(data['prompts'])}); no track queries. {machine_line(load)}.", "",
             f"Queries entering each decoder layer, mean over frames: "
             f"{', '.join(f'{k:.1f}' for k in data['mean_kept'])} "
             f"(min / max of the last layer over frames: {min(r[-1] for r in data['kept'])} / "
             f"{max(r[-1] for r in data['kept'])}).", "",
             f"Decoder GFLOPs by count_flops (query selection and text projections included, as in the FLOPs "
             f"table) at {SIZE}x{SIZE} unless named, {len(data['prompts'])} prompts; pruned rows replay the kept "
             f"counts:", "",
             "| Decoder | kept per layer | GFLOPs | vs unpruned | vs MaskDINO-style baseline |",
             "|---|---|---|---|---|"]
    for row in rows:
        unpruned = "-" if row["vs_unpruned"] is None else f"{row['vs_unpruned']:.1%}"
        lines.append(f"| {row['name']} | {','.join(map(str, row['kept']))} | {row['decoder']:.3f} | {unpruned} "
                     f"| {row['vs_baseline']:.1%} |")
    lines += ["", f"Check: the mean over frames of the per-frame analytic decoder cost (runtime/decoder_cost.py, "
                  f"without query selection) is {data['analytic_mean']:.3f} GFLOPs vs {data['analytic_full']:.3f} "
                  f"unpruned ({data['analytic_mean'] / data['analytic_full']:.1%}).", "",
              f"Goal (decoder with pruning <= 25% of the MaskDINO-style baseline): measured at nano scale "
              f"{measured['vs_baseline']:.1%}, {goal(measured['vs_baseline'] <= 0.25)}; mini_m projection "
              f"{projected['vs_baseline']:.1%}, {goal(projected['vs_baseline'] <= 0.25)} (projection: "
              f"kept fractions by relative depth, clamped to mobius_mini_m's min_kept; with min_kept = "
              f"{floor['kept'][-1]} of {floor['kept'][0]} queries the lowest reachable is "
              f"{floor['vs_baseline']:.1%}){large_text}.", ""]
    trained = data.get("mini_trained")
    mini = keyed.get("mini_trained")
    if trained and mini is not None:
        last = [row[-1] for row in trained["kept"]]
        lines += [f"Trained mobius_mini_m ({trained['weights']}, MOBIUS_MINI_M_WEIGHTS; docs/MODEL.md says how it "
                  f"was trained and how good it is): queries entering each layer, mean over the clip: "
                  f"{', '.join(f'{k:.1f}' for k in trained['mean_kept'])} (last layer min / max over frames: "
                  f"{min(last)} / {max(last)}); its decoder with pruning is {mini['vs_baseline']:.1%} of "
                  f"glee_maskdino_mini_m, {goal(mini['vs_baseline'] <= 0.25)} (measured).", ""]
    else:
        lines += [f"No trained mobius_mini_m was given ({MINI_WEIGHTS_ENV} unset): the mini_m figure above is the "
                  f"projection only.", ""]
    lines += [f"Paper context: MOBIUS reports its decoder at {PAPER_RATIO[LARGE]:.1%} of GLEE-MaskDINO's at "
              f"{LARGE}x{LARGE} (Tab. 10: 10 vs 20.1 GFLOPs) and {PAPER_RATIO[SIZE]:.1%} at {SIZE} px short side "
              f"(Tab. 12: 4.9 vs 9.9); mobius_mini_m projected here: {projected['vs_baseline']:.1%} at {SIZE} px"
              + (f", {large['vs_baseline']:.1%} at {LARGE} px" if large else "")
              + ". The 25% goal is half the paper's own ratio.", ""]
    same = data.get("same_form")
    if same:
        parts = [f"{size} px: {v['baseline']:.2f} -> {v['baseline_same_form']:.2f} GFLOPs, mobius_mini_m projected "
                 f"{v['ours'] / v['baseline']:.1%} -> {v['ours'] / v['baseline_same_form']:.1%} of it"
                 for size, v in sorted(same.items(), key=lambda item: int(item[0]))]
        lines += ["MOBIUS's pruned layers sample the memory before projecting it (docs/MODEL.md); the baseline "
                  "projects its multi-scale memory in every layer, as MaskDINO does. Given the same form in its "
                  "layers after the first (analytic, runtime/decoder_cost.py, without query selection), the "
                  f"baseline would cost less: {'; '.join(parts)}.", ""]
    return "\n".join(lines)
