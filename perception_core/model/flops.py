"""FLOPs per model component, in the layout of MOBIUS Tab. 10 / Tab. 12 and Fig. 2.

What is counted
    `torch.utils.flop_counter.FlopCounterMode` counts matmul-like ops (mm, addmm, bmm, baddbmm),
    convolutions and scaled-dot-product attention, each as 2 x multiply-accumulates (MACs). On CPU,
    attention decomposes into two bmm (Q K^T and A V: 4 * Nq * Nk * C FLOPs) and is counted there.
    Not counted, as in fvcore and the paper: elementwise ops and residual adds, normalizations,
    softmax, activations, `interpolate`, sine position embeddings, top-k and gathers.
    Unit: GFLOPs = 1e9 FLOPs = 2 x GMACs. The paper's tables come from fvcore, which reports
    GMACs under the name "FLOPs" (its R50 at 800 x 800 is 52.4 "G"): divide our numbers by 2 to
    compare absolute values; ratios are unaffected.

How grid_sample (deformable attention sampling) is counted
    FlopCounterMode ignores `aten.grid_sampler_2d`; `GRID_SAMPLE_MAPPING` adds it. An output of
    shape (N, C, H_out, W_out) costs `taps * 2` FLOPs per element: every output value is a weighted
    sum of `taps` input values (bilinear: the 4 neighbours, 4 MACs = 8 FLOPs; nearest: 0, a pure
    gather; bicubic: 16 taps = 32 FLOPs). The interpolation weights themselves (computed once per
    sampling location and shared by all C channels) are not counted.
    In `deform_attn.deform_sample` each level l samples (B*heads, C/heads, Q, P) values, so one
    MSDeformAttn call costs 8 * B * Q * C * L * P FLOPs in grid_sample. Its attention-weighted sum
    over the L*P samples (one multiply-add per sampled value, 2 * B * Q * C * L * P) is taken as a
    multiply and a sum in grid_sample's layout, which FlopCounterMode does not see; grid_sample is
    used only there, so its count includes those 2 FLOPs: 10 per sampled value in all. The deployed
    decoder's layers after the first sample the unprojected memory instead (`MSDeformAttn.sample_first`:
    (B, C + 1, heads, Q * P) values, then the same weighted sum), counted by the same rule.

Components (forward hooks on the named submodules of `Mobius`, batch 1, square SIZE x SIZE input)
    vision_encoder   `model.backbone`.
    pixel_decoder    `model.projection` (input projections, counted here as the paper does) and
                     `model.pixel_decoder`, including its stride-4 mask-feature head and the
                     image-text fusion ("w/ fusion" column).
    modality_fusion  the part of pixel_decoder spent in the `TextFusion` modules (Eq. 1a-1b:
                     image-to-text and text-to-image attention and their norms) of every block;
                     "w/o fusion" = pixel_decoder - modality_fusion.
    query_selection  `model.selection` (language-guided top-K, Eq. 2-3) and the text projections
                     `model.text_token_proj` / `model.text_pooled_proj`. Counted INSIDE both decoder
                     columns (in MaskDINO the two-stage selection is part of the decoder) and also
                     shown on its own.
    decoder          query_selection + `model.decoder` with all K queries through all L layers,
                     deployment graph (masks, q^ . M at stride 4, from the last layer only).
    decoder_pruned   the same with `kept_per_layer[l]` queries entering layer l: either measured
                     on the pruned eval run (random weights keep about `pruning.min_kept`; includes
                     the pruning decision's tiny rank and vote matmuls) or, with `kept=`, replayed layer by
                     layer (see `_replay_decoder`).
    total            vision_encoder + pixel_decoder + decoder_pruned; the text encoder is excluded
                     (Tab. 10, Fig. 2) and reported separately in text_encoder.
    text_encoder     MiniLM-L6 on P prompts of T tokens, analytic (`text_encoder_flops`).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .pixel_decoder_common import TextFusion

GIGA = 1e9
# grid_sampler_2d interpolation_mode -> input values summed per output value
_GRID_SAMPLE_TAPS = {0: 4, 1: 0, 2: 16}  # bilinear, nearest, bicubic
_WEIGHTED_SUM_MACS = 1  # deformable attention's weighted sum, one multiply-add per sampled value


def grid_sample_flop(input_shape, grid_shape, interpolation_mode=0, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.grid_sampler_2d: input (N, C, H, W), grid (N, H_out, W_out, 2): the taps of every
    output value plus the attention-weighted sum it feeds (see the module docstring)."""
    batch, channels = input_shape[0], input_shape[1]
    taps = _GRID_SAMPLE_TAPS[int(interpolation_mode)]
    return 2 * (taps + _WEIGHTED_SUM_MACS) * batch * channels * grid_shape[1] * grid_shape[2]


GRID_SAMPLE_MAPPING = {torch.ops.aten.grid_sampler_2d: grid_sample_flop}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts grid_sample (see the module docstring)."""
    return FlopCounterMode(display=False, custom_mapping=GRID_SAMPLE_MAPPING)


# ------------------------------------------------------------------------------- text encoder

@dataclass(frozen=True)
class TextEncoderShape:
    layers: int = 6            # MiniLM-L6
    dim: int = 384             # hidden size
    ffn_dim: int = 1536        # intermediate size
    heads: int = 12            # does not change the count; kept to document the model


MINILM_L6 = TextEncoderShape()


def text_encoder_flops(num_prompts: int, tokens: int, shape: TextEncoderShape = MINILM_L6) -> float:
    """GFLOPs of the text encoder on `num_prompts` prompts padded to `tokens` tokens each.

    Per layer and prompt (T tokens, width d, FFN width f), counted like FlopCounterMode:
    Q, K, V and output projections 4 * 2*T*d*d, attention Q K^T and A V 2 * 2*T*T*d, FFN 2 * 2*T*d*f.
    Embedding lookups, LayerNorm, GELU, softmax and pooling are not counted.
    """
    if num_prompts < 0 or tokens < 0:
        raise ValueError(f"num_prompts={num_prompts} and tokens={tokens} must be >= 0")
    t, d, f = tokens, shape.dim, shape.ffn_dim
    per_layer = 8 * t * d * d + 4 * t * t * d + 4 * t * d * f
    return num_prompts * shape.layers * per_layer / GIGA


# ------------------------------------------------------------------------------- report

@dataclass(frozen=True)
class FlopsReport:
    """GFLOPs (2 x GMACs) per component for one model; see the module docstring for the split."""
    vision_encoder: float                 # backbone
    pixel_decoder: float                  # input projection + pixel decoder, with fusion
    modality_fusion: float                # part of pixel_decoder spent in image-text fusion
    query_selection: float                # selection + text projections; inside both decoder columns
    decoder: float                        # all K queries through all L layers (no pruning)
    decoder_pruned: float                 # kept_per_layer[l] queries entering layer l
    total: float                          # vision_encoder + pixel_decoder + decoder_pruned
    text_encoder: float                   # MiniLM-L6, analytic; not part of total
    kept_per_layer: tuple[int, ...]       # queries entering each decoder layer in decoder_pruned
    image_size: tuple[int, int]           # (H, W) of the input image
    num_prompts: int                      # P
    tokens: int                           # T tokens per prompt

    @property
    def pixel_decoder_without_fusion(self) -> float:
        return self.pixel_decoder - self.modality_fusion

    def to_dict(self) -> dict:
        data = asdict(self)
        data["pixel_decoder_without_fusion"] = self.pixel_decoder_without_fusion
        data["kept_per_layer"] = list(self.kept_per_layer)
        data["image_size"] = list(self.image_size)
        return data


# ------------------------------------------------------------------------------- measurement

class _Meter:
    """Adds the FLOPs counted while a watched module runs to that module's bucket.

    Forward pre/post hooks read the counter's running total, so a bucket gets exactly the FLOPs of
    its module's forward calls (all of them, if it runs several times).
    """

    def __init__(self, counter: FlopCounterMode, watched: dict[str, list[nn.Module]]):
        self.counter, self.watched = counter, watched
        self.buckets = {name: 0 for name in watched}
        self._starts: dict[int, list[int]] = {}
        self._handles: list = []

    def total(self) -> int:
        return self.counter.get_total_flops()

    def __enter__(self) -> "_Meter":
        for name, modules in self.watched.items():
            for module in modules:
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post_for(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre(self, module: nn.Module, args) -> None:
        self._starts.setdefault(id(module), []).append(self.total())

    def _post_for(self, name: str):
        def post(module: nn.Module, args, output) -> None:
            self.buckets[name] += self.total() - self._starts[id(module)].pop()
        return post


def fusion_modules(pixel_decoder: nn.Module) -> list[nn.Module]:
    """The image-text fusion submodules of every block (empty when text_fusion is off)."""
    return [module for module in pixel_decoder.modules() if isinstance(module, TextFusion)]


def _dummy_inputs(model: nn.Module, size: tuple[int, int], num_prompts: int, tokens: int) -> tuple:
    """Deterministic random image (1, 3, H, W) and prompt set; FLOPs depend only on shapes, except
    for which queries pruning keeps."""
    generator = torch.Generator().manual_seed(0)
    text_dim = model.text_token_proj.in_features
    param = next(model.parameters())
    images = torch.randn(1, 3, *size, generator=generator)
    text_tokens = torch.randn(num_prompts, tokens, text_dim, generator=generator)
    text_mask = torch.ones(num_prompts, tokens, dtype=torch.bool)
    text_pooled = torch.randn(num_prompts, text_dim, generator=generator)
    return tuple(t.to(param.device) if t.dtype == torch.bool else t.to(param.device, param.dtype)
                 for t in (images, text_tokens, text_mask, text_pooled))


@contextlib.contextmanager
def _deployment_graph(model: nn.Module) -> Iterator[None]:
    """model.deploy() for the measurement, then the caller's train/deploy state back."""
    was_training, was_deployed = model.training, getattr(model, "deployed", False)
    model.deploy()
    try:
        yield
    finally:
        model.train(was_training)
        model.deployed = was_deployed


def _measure_forward(model: nn.Module, inputs: tuple) -> tuple[dict[str, int], tuple, dict, list[int]]:
    """One deployed forward. Returns FLOPs per component, the decoder's call (args, kwargs) for
    replays, and the kept_per_layer of the run."""
    captured: dict = {}

    def capture(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs

    watched = {
        "vision_encoder": [model.backbone],
        "projection": [model.projection],
        "pixel_decoder": [model.pixel_decoder],
        "modality_fusion": fusion_modules(model.pixel_decoder),
        "query_selection": [model.selection, model.text_token_proj, model.text_pooled_proj],
        "decoder": [model.decoder],
    }
    handle = model.decoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad(), flop_counter() as counter, _Meter(counter, watched) as meter:
            out = model(*inputs)
    finally:
        handle.remove()
    buckets = dict(meter.buckets)
    attributed = sum(v for k, v in buckets.items() if k != "modality_fusion")
    if attributed != counter.get_total_flops():
        raise RuntimeError(f"{counter.get_total_flops() - attributed} FLOPs ran outside the known components "
                           f"(backbone, projection, pixel_decoder, selection, text projections, decoder); "
                           f"update perception_core/model/flops.py")
    return buckets, captured["args"], captured["kwargs"], [int(n) for n in out["kept_per_layer"]]


def _decoder_layer_flops(decoder: nn.Module, args: tuple, kwargs: dict, num_queries: int) -> tuple[int, list[int]]:
    """Runs the decoder without pruning on the first `num_queries` queries.

    Returns (prologue FLOPs, FLOPs of each layer iteration). An iteration starts where the decoder
    calls `ref_point_head` (the first op of every layer step) and ends at the next one; it includes
    the layer, its box refinement and its predictions (class logits; masks on the last layer).
    """
    queries, boxes, *rest = args
    boundaries: list[int] = []
    with torch.no_grad(), flop_counter() as counter:
        handle = decoder.ref_point_head.register_forward_pre_hook(
            lambda module, inputs: boundaries.append(counter.get_total_flops()))
        try:
            decoder(queries[:, :num_queries], boxes[:, :num_queries], *rest, **{**kwargs, "prune": None})
        finally:
            handle.remove()
    if len(boundaries) != len(decoder.layers):
        raise RuntimeError(f"expected one ref_point_head call per decoder layer ({len(decoder.layers)}), "
                           f"saw {len(boundaries)}; update flops._decoder_layer_flops")
    ends = boundaries[1:] + [counter.get_total_flops()]
    return boundaries[0], [end - start for start, end in zip(boundaries, ends)]


def _replay_decoder(decoder: nn.Module, args: tuple, kwargs: dict, kept: Sequence[int]) -> int:
    """Decoder FLOPs with kept[l] queries entering layer l. Every op depends only on the shapes, so
    layer l's cost at N queries is read from an unpruned run on N queries (one run per distinct N).
    The pruning decision itself (`select_kept`: the rank count, a (B, N, N) x (N, 1) matmul, and the
    vote, a (1, B) x (B, N) matmul: 2*B*N*(N + 1) FLOPs per step, 20 kFLOPs at N = 100) is not
    replayed, so a replay is that much below the measured pruned run."""
    per_count = {n: _decoder_layer_flops(decoder, args, kwargs, n) for n in sorted(set(kept))}
    prologue = per_count[kept[0]][0]
    return prologue + sum(per_count[n][1][layer] for layer, n in enumerate(kept))


def _validate_kept(kept: int | Sequence[int], num_layers: int, num_queries: int) -> tuple[int, ...]:
    """A single count N means K queries enter layer 0 and min(N, K) every later layer."""
    if isinstance(kept, int):
        kept = (num_queries,) + (min(kept, num_queries),) * (num_layers - 1)
    kept = tuple(int(n) for n in kept)
    if len(kept) != num_layers:
        raise ValueError(f"kept_per_layer has {len(kept)} entries; the decoder has {num_layers} layers")
    if kept[0] != num_queries:
        raise ValueError(f"kept_per_layer[0]={kept[0]} must be K={num_queries}: pruning starts after layer 0")
    if any(b > a for a, b in zip(kept, kept[1:])) or kept[-1] < 0:
        raise ValueError(f"kept_per_layer={list(kept)} must be non-increasing and >= 0 (pruning only removes)")
    return kept


def _square(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {size} must be positive")
    return int(height), int(width)


def count_flops(model: nn.Module, size: int | tuple[int, int] = 384, num_prompts: int = 80, tokens: int = 8,
                prune: bool = True, kept: int | Sequence[int] | None = None) -> FlopsReport:
    """FLOPs per component of a `Mobius` model on one SIZE x SIZE image (or (H, W)) and P prompts
    of T tokens, in the deployment graph. `prune`: report decoder_pruned from the model's configured
    pruning (random weights keep about min_kept); without pruning configured, or with prune=False,
    decoder_pruned = decoder. `kept`: queries entering each decoder layer (e.g. kept_per_layer of a
    real run; a single N means K, then N for every later layer) to replay instead. The model is left
    in the train/deploy state it came in."""
    if kept is not None and not prune:
        raise ValueError("kept_per_layer was given but prune=False; drop one of them")
    if num_prompts <= 0 or tokens <= 0:
        raise ValueError(f"num_prompts={num_prompts} and tokens={tokens} must be > 0")
    image_size = _square(size)
    with _deployment_graph(model):
        inputs = _dummy_inputs(model, image_size, num_prompts, tokens)
        buckets, args, kwargs, run_kept = _measure_forward(model, inputs)
        num_queries = int(args[0].shape[1])
        prologue, layers = _decoder_layer_flops(model.decoder, args, kwargs, num_queries)
        decoder_full = prologue + sum(layers)
        full_kept = (num_queries,) * len(layers)
        if kept is not None:
            pruned_kept = _validate_kept(kept, len(layers), num_queries)
            decoder_pruned = _replay_decoder(model.decoder, args, kwargs, pruned_kept)
        elif prune and getattr(model, "prune", None) is not None:
            pruned_kept, decoder_pruned = tuple(run_kept), buckets["decoder"]
        else:
            pruned_kept, decoder_pruned = full_kept, decoder_full
    selection = buckets["query_selection"]
    pixel = buckets["projection"] + buckets["pixel_decoder"]
    return FlopsReport(
        vision_encoder=buckets["vision_encoder"] / GIGA,
        pixel_decoder=pixel / GIGA,
        modality_fusion=buckets["modality_fusion"] / GIGA,
        query_selection=selection / GIGA,
        decoder=(selection + decoder_full) / GIGA,
        decoder_pruned=(selection + decoder_pruned) / GIGA,
        total=(buckets["vision_encoder"] + pixel + selection + decoder_pruned) / GIGA,
        text_encoder=text_encoder_flops(num_prompts, tokens),
        kept_per_layer=tuple(pruned_kept),
        image_size=image_size,
        num_prompts=num_prompts,
        tokens=tokens,
    )


# ------------------------------------------------------------------------------- table

_COLUMNS = (  # (header, value)
    ("Vision Enc.", lambda r: r.vision_encoder),
    ("Pix. Dec. w/o fusion", lambda r: r.pixel_decoder_without_fusion),
    ("Pix. Dec. w/ fusion", lambda r: r.pixel_decoder),
    ("Decoder w/o pruning", lambda r: r.decoder),
    ("Decoder w/ pruning", lambda r: r.decoder_pruned),
    ("Total", lambda r: r.total),
    ("Text Enc.", lambda r: r.text_encoder),
)


def _cell(value: float, baseline: float) -> str:
    share = f"{100 * value / baseline:.0f}%" if baseline > 0 else "-"
    return f"{value:.2f} ({share})"


def format_table(reports: dict[str, FlopsReport]) -> str:
    """Markdown table in the paper's layout; each cell is GFLOPs and, in brackets, the percentage of
    the same column in the first row (the baseline)."""
    if not reports:
        raise ValueError("format_table needs at least one report")
    names = list(reports)
    baseline = reports[names[0]]
    header = ["Model"] + [title for title, _ in _COLUMNS] + ["Kept per layer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        report = reports[name]
        cells = [_cell(value(report), value(baseline)) for _, value in _COLUMNS]
        kept = ",".join(str(n) for n in report.kept_per_layer)
        lines.append("| " + " | ".join([name] + cells + [kept]) + " |")
    settings = {(r.image_size, r.num_prompts, r.tokens) for r in reports.values()}
    if len(settings) == 1:
        (height, width), prompts, tokens = settings.pop()
        setting = f"at {height}x{width}, batch 1, {prompts} prompts x {tokens} tokens"
    else:
        setting = "(input sizes or prompt sets differ between rows)"
    lines.append("")
    lines.append(f"GFLOPs (= 2 x GMACs; the paper's fvcore numbers are GMACs) {setting}; (%) of the first "
                 f"row. Total = vision + pixel decoder w/ fusion + decoder w/ pruning, text encoder excluded. "
                 f"Both decoder columns include query selection and the text projections.")
    return "\n".join(lines)
