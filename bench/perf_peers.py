"""Peers at the same input size, random weights, speed only: Grounding DINO and Mask2Former from
`transformers` vs MOBIUS, all in torch on the CPU with the same thread count.

Inputs are fed directly (pixel_values, and input_ids for Grounding DINO): the image processors of
both need torchvision, which this environment does not have. Configurations (stated in the report):
  Grounding DINO   transformers' default GroundingDinoConfig = the published Swin-T model: Swin-T
                   backbone (transformers' own Swin, no timm), BERT-base text encoder (12 layers),
                   6 encoder + 6 decoder layers, 900 queries, d_model 256. The text encoder runs in
                   its forward on every frame (MOBIUS caches text embeddings per prompt set).
  Mask2Former      Mask2FormerConfig with a Swin-T backbone (depths 2-2-6-2; the default config is
                   Swin-S, depths 2-2-18-2), otherwise default: 6 MSDeformAttn pixel-decoder layers,
                   9 masked-attention decoder layers (decoder_layers=10), 100 queries, 80 classes. Closed
                   vocabulary: no prompts.
  MOBIUS           mobius_mini_m (MNv4-conv-M, the paper's mobile model) and mobius_nano (the shipped
                   default size), deployment graph, configured pruning, text embeddings as inputs.
"""
from __future__ import annotations

import os

from perf_common import Section, Settings, build_random, fmt_ms, machine_line, time_interleaved

SIZE = 384
PROMPTS = ("red circle", "blue square", "green triangle", "yellow star")


def grounding_dino(size: int):
    """(model, inputs) for GroundingDinoForObjectDetection with the default (Swin-T) config."""
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(GroundingDinoConfig()).eval()
    # "[CLS] red circle . blue square . green triangle . yellow star . [SEP]" as BERT ids: 101 CLS,
    # 102 SEP, 1012 '.', and two word ids per prompt
    words = [[2417, 4418], [2630, 2675], [2665, 9546], [3756, 2732]]
    ids = [101] + [token for pair in words for token in (*pair, 1012)] + [102]
    input_ids = torch.tensor([ids])
    inputs = {"pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)),
              "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
              "token_type_ids": torch.zeros_like(input_ids), "pixel_mask": torch.ones(1, size, size, dtype=torch.long)}
    return model, inputs


def mask2former(size: int):
    """(model, inputs) for Mask2FormerForUniversalSegmentation with a Swin-T backbone."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(0)
    backbone = SwinConfig(depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], embed_dim=96,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=backbone, num_labels=80)).eval()
    inputs = {"pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)),
              "pixel_mask": torch.ones(1, size, size, dtype=torch.long)}
    return model, inputs


def mobius(preset: str, size: int, prompts: int = 4, tokens: int = 8):
    """(model, inputs) for a MOBIUS preset with random weights (deployment graph, configured pruning)."""
    import torch

    model = build_random(preset)
    generator = torch.Generator().manual_seed(0)
    dim = model.config.text.dim
    inputs = {"images": torch.randn(1, 3, size, size, generator=generator),
              "text_tokens": torch.randn(prompts, tokens, dim, generator=generator),
              "text_mask": torch.ones(prompts, tokens, dtype=torch.bool),
              "text_pooled": torch.randn(prompts, dim, generator=generator)}
    return model, inputs


def parameters_m(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def run(settings: Settings) -> Section:
    import torch

    load = os.getloadavg()
    torch.set_num_threads(settings.threads)
    contenders, skipped = {}, {}
    for name, factory in (("mobius_nano", lambda: mobius("mobius_nano", SIZE)),
                          ("mobius_mini_m", lambda: mobius("mobius_mini_m", SIZE)),
                          ("Grounding DINO (Swin-T, BERT-base)", lambda: grounding_dino(SIZE)),
                          ("Mask2Former (Swin-T)", lambda: mask2former(SIZE))):
        try:
            contenders[name] = factory()
        except ImportError as error:  # e.g. a model class that needs timm or torchvision
            skipped[name] = f"needs {error.name or error}"
    calls = {name: (lambda m=model, i=inputs: _forward(m, i)) for name, (model, inputs) in contenders.items()}
    repeats = 1 if settings.quick else 3
    timings = time_interleaved(calls, repeats, 1)
    data = {"ms": {n: t.median for n, t in timings.items()},
            "params": {n: parameters_m(m) for n, (m, _) in contenders.items()}, "skipped": skipped,
            "repeats": repeats}
    return Section("peers", "Peers: Grounding DINO and Mask2Former (transformers, torch CPU)",
                   render(data, settings, load), data=data)


def _forward(model, inputs: dict):
    import torch

    with torch.inference_mode():
        return model(**inputs)


def render(data: dict, settings: Settings, load) -> str:
    ms = data["ms"]
    lines = [f"Conditions: torch {settings.threads} threads, {SIZE}x{SIZE}, batch 1, random weights, "
             f"{data['repeats']} interleaved run(s) after 1 warm-up, median; {machine_line(load)}. "
             f"Configurations: see bench/perf_peers.py (Grounding DINO = default Swin-T config with BERT-base "
             f"text encoder and 900 queries, fed input_ids of 4 two-word prompts; Mask2Former = Swin-T backbone, "
             f"default heads, 100 queries; MOBIUS with 4 prompts x 8 tokens of cached text embeddings).", "",
             "| model | params (M) | median ms | time / mobius_mini_m | time / mobius_nano |", "|---|---|---|---|---|"]
    for name, value in ms.items():
        lines.append(f"| {name} | {data['params'][name]:.1f} | {fmt_ms(value)} | {value / ms['mobius_mini_m']:.2f} "
                     f"| {value / ms['mobius_nano']:.2f} |")
    for name, why in data["skipped"].items():
        lines.append(f"| {name} | - | skipped: {why} | - | - |")
    lines.append("")
    return "\n".join(lines)

