"""What the ablations run: the variants of each paper experiment and the three scales.

Every table is a tuple of frozen dataclasses; `mobius ablate` reads nothing else to decide what to
train and evaluate. All variants of a scale share one recipe (backbone, width, data, schedule,
seed); a variant only adds its own `key=value` recipe overrides.

    Tab. 3             pixel decoder variants, trained once each, evaluated without pruning
    Tab. 14 / Sec. 8.5 calibration loss vs focal loss, each evaluated at the same pruning settings
    Fig. 4 / Tab. 15   sigmoid, exp and log schedules over a sweep of bounds, all on the trained
                       calibration model (no retraining: only the pruning inputs change)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model.prune_schedule import SCHEDULES

EXPERIMENTS = ("tab3", "tab14", "fig4")
PAPER_PRUNING = (0.05, 0.2)  # Tab. 14: sigmoid schedule, b_low 0.05, b_high 0.2


class AblationError(ValueError):
    """A problem with the ablation's options, data or run folders; the message says what to do."""


@dataclass(frozen=True)
class Variant:
    """One trained model: the recipe plus `overrides` (`key=value`, as for `mobius train`)."""
    name: str                        # run folder name, e.g. "ours_s16_single"
    label: str                       # row label as in the paper, e.g. "Ours 1/16 Single"
    paper_row: str                   # the paper's row tag ("a".."i"), "" if none
    pixel_decoder: str               # MaskDINO | RT-DETR | Ours (bottleneck)
    bottleneck: str                  # "1/16", "1/8" or "-" (no bottleneck)
    decoder_scales: str              # Multi | Single: scales the transformer decoder attends to
    blocks: str                      # "recipe" (the recipe's pixel_decoder.num_blocks) or "1"
    overrides: tuple[str, ...]       # recipe overrides that make this variant


def _model(**values: object) -> tuple[str, ...]:
    """model.overrides.* recipe overrides from `section__key=value` keyword arguments."""
    return tuple(f"model.overrides.{key.replace('__', '.')}={str(value).lower()}" for key, value in values.items())


TAB3: tuple[Variant, ...] = (
    Variant("maskdino_multi", "MaskDINO-Multi", "a", "MaskDINO", "-", "Multi", "recipe",
            _model(pixel_decoder__type="maskdino", decoder__multi_scale=True)),
    Variant("maskdino_single", "MaskDINO-Single", "b", "MaskDINO", "-", "Single", "recipe",
            _model(pixel_decoder__type="maskdino", decoder__multi_scale=False)),
    Variant("maskdino_single_1block", "MaskDINO-Single, 1 block", "c", "MaskDINO", "-", "Single", "1",
            _model(pixel_decoder__type="maskdino", decoder__multi_scale=False, pixel_decoder__num_blocks=1)),
    Variant("rtdetr_multi", "RT-DETR-Multi", "d", "RT-DETR", "-", "Multi", "1",
            _model(pixel_decoder__type="rtdetr", decoder__multi_scale=True, pixel_decoder__num_blocks=1)),
    Variant("rtdetr_single", "RT-DETR-Single", "e", "RT-DETR", "-", "Single", "1",
            _model(pixel_decoder__type="rtdetr", decoder__multi_scale=False, pixel_decoder__num_blocks=1)),
    Variant("ours_s16_multi", "Ours 1/16 Multi", "g", "Ours", "1/16", "Multi", "recipe",
            _model(pixel_decoder__type="bottleneck", pixel_decoder__bottleneck_stride=16, decoder__multi_scale=True)),
    Variant("ours_s8_single", "Ours 1/8 Single", "h", "Ours", "1/8", "Single", "recipe",
            _model(pixel_decoder__type="bottleneck", pixel_decoder__bottleneck_stride=8, decoder__multi_scale=False)),
    Variant("ours_s16_single", "Ours 1/16 Single", "i", "Ours", "1/16", "Single", "recipe",
            _model(pixel_decoder__type="bottleneck", pixel_decoder__bottleneck_stride=16, decoder__multi_scale=False)),
)
# Paper rows this code base cannot build, and why (reported in ABLATIONS.md instead of faked).
TAB3_NOT_SUPPORTED: tuple[tuple[str, str, str], ...] = (
    ("f", "Ours-Multi (no bottleneck)",
     "no config option runs our encoder blocks on all scales: pixel_decoder.type=bottleneck always "
     "condenses the pyramid into the one bottleneck scale (bottleneck_stride 8, 16 or 32)"),
)
BASELINE_TAB3 = "maskdino_multi"   # the paper's baseline row (a)
OURS_TAB3 = "ours_s16_single"      # MOBIUS (row i)

_OURS = next(v for v in TAB3 if v.name == OURS_TAB3)
TAB14: tuple[Variant, ...] = (
    Variant("calibration", "Calibration loss (Eq. 4)", "", "Ours", "1/16", "Single", "recipe",
            _OURS.overrides + ("loss.classification=calibration",)),
    Variant("focal", "Focal loss", "", "Ours", "1/16", "Single", "recipe",
            _OURS.overrides + ("loss.classification=focal",)),
)
FIG4_MODEL = "calibration"          # Fig. 4 / Tab. 15 re-evaluate this trained model


@dataclass(frozen=True)
class PruningSetting:
    """Inference-time pruning inputs: a schedule and its bounds; schedule None = no pruning.
    beta/alpha and min_kept come from the model's config (pruning section)."""
    schedule: str | None
    b_low: float = 0.0
    b_high: float = 0.0

    @property
    def name(self) -> str:
        if self.schedule is None:
            return "none"
        return f"{self.schedule} {self.b_low:g}-{self.b_high:g}"

    def key(self) -> tuple:
        return (self.schedule, round(self.b_low, 6), round(self.b_high, 6))


NO_PRUNING = PruningSetting(None)


@dataclass(frozen=True)
class Scale:
    """Sizes of one ablation run. Data is generated at these sizes when --data is not given."""
    name: str
    recipe: str                          # base training recipe, relative to the repository root
    steps: int                           # optimizer steps per variant (the recipe's schedule is rescaled)
    train_images: int                    # generated training images
    test_images: int                     # generated test images (every number is on this split)
    image_size: tuple[int, int]          # (H, W) of generated images
    difficulty: str                      # synth difficulty preset
    use_photos: bool                     # photo backgrounds in generated images
    area_fraction: tuple[float, float] | None  # object area range override (tiny images), None = preset
    eval_size: int                       # square letterbox size at evaluation (multiple of 32; batch-1
                                         # GroupNorm needs S6 = size/64 to be at least 2 x 2 pixels)
    recipe_overrides: tuple[str, ...]    # applied to every variant (before the variant's own)
    tab3: tuple[str, ...]                # Tab. 3 variants run at this scale
    tab14_pruning: tuple[PruningSetting, ...]  # Tab. 14 pruning settings (NO_PRUNING first)
    fig4_bounds: tuple[tuple[float, float], ...]  # (b_low, b_high) sweep, ascending thresholds


def _sigmoid(*bounds: tuple[float, float]) -> tuple[PruningSetting, ...]:
    return (NO_PRUNING,) + tuple(PruningSetting("sigmoid", low, high) for low, high in bounds)


SCALES: dict[str, Scale] = {
    # Smoke scale for tests: the tiny model of training/recipes/tiny_overfit.yaml on 80 px images.
    "tiny": Scale("tiny", "training/recipes/tiny_overfit.yaml", steps=20, train_images=8, test_images=4,
                  image_size=(80, 80), difficulty="easy", use_photos=False, area_fraction=(0.05, 0.3),
                  eval_size=96, recipe_overrides=("checkpoint_interval=10",),
                  tab3=(BASELINE_TAB3, OURS_TAB3),
                  tab14_pruning=_sigmoid(PAPER_PRUNING, (0.2, 0.5)),
                  fig4_bounds=(PAPER_PRUNING, (0.2, 0.5))),
    # A reduced model (64 wide, 4 decoder layers, 50 queries) on 128 px images of the easy preset:
    # every variant of every experiment in about an hour on 2 CPU cores, with APs well above zero.
    "small": Scale("small", "training/recipes/ablation_nano_cpu.yaml", steps=600, train_images=800,
                   test_images=100, image_size=(128, 128), difficulty="easy", use_photos=True,
                   area_fraction=(0.03, 0.4), eval_size=128,
                   recipe_overrides=("data.train_sizes=[112,128,144]", "data.max_size=160", "data.val_size=128",
                                     "data.prompts=categories", "loss.num_points=2048", "checkpoint_interval=100",
                                     *_model(hidden_dim=64, backbone__width_multiplier=0.25,
                                             pixel_decoder__ffn_dim=256, pixel_decoder__heads=4,
                                             decoder__num_layers=4, decoder__num_queries=50, decoder__ffn_dim=256,
                                             decoder__heads=4, pruning__min_kept=10)),
                   tab3=tuple(v.name for v in TAB3),
                   tab14_pruning=_sigmoid(PAPER_PRUNING, (0.1, 0.3), (0.2, 0.5)),
                   fig4_bounds=((0.02, 0.1), PAPER_PRUNING, (0.1, 0.3), (0.2, 0.5), (0.3, 0.7))),
    # The default model's CPU recipe (frozen copy) and data sizes.
    "full": Scale("full", "training/recipes/ablation_nano_cpu.yaml", steps=2000, train_images=10000,
                  test_images=500, image_size=(384, 384), difficulty="normal", use_photos=True,
                  area_fraction=None, eval_size=320, recipe_overrides=(),
                  tab3=tuple(v.name for v in TAB3),
                  tab14_pruning=_sigmoid(PAPER_PRUNING, (0.1, 0.3), (0.2, 0.5)),
                  fig4_bounds=((0.02, 0.1), PAPER_PRUNING, (0.1, 0.3), (0.15, 0.4), (0.2, 0.5), (0.3, 0.6),
                               (0.4, 0.8))),
}


def variants_by_name() -> dict[str, Variant]:
    return {v.name: v for v in TAB3 + TAB14}


def fig4_settings(scale: Scale) -> tuple[PruningSetting, ...]:
    """NO_PRUNING, then every schedule over the scale's bounds (ascending within a schedule)."""
    return (NO_PRUNING,) + tuple(PruningSetting(schedule, low, high)
                                 for schedule in SCHEDULES for low, high in scale.fig4_bounds)


def parse_only(text: str | None) -> tuple[str, ...]:
    """'tab3,fig4' -> ('tab3', 'fig4') in canonical order; AblationError names the bad entry."""
    if text is None:
        return EXPERIMENTS
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown or not names:
        raise AblationError(f"--only {text!r}: unknown experiment(s) {unknown or '(none given)'}; "
                         f"choose from {', '.join(EXPERIMENTS)} (comma-separated)")
    return tuple(name for name in EXPERIMENTS if name in names)


def parse_tab3(text: str) -> tuple[str, ...]:
    """'maskdino_multi,ours_s16_single' -> Tab. 3 variant names in table order; AblationError names
    the bad entry."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = [v.name for v in TAB3]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise AblationError(f"--tab3 {text!r}: unknown variant(s) {unknown or '(none given)'}; choose from "
                            f"{', '.join(known)}")
    return tuple(name for name in known if name in names)


def variants_needed(scale: Scale, experiments: tuple[str, ...]) -> tuple[Variant, ...]:
    """The trained models the experiments need (Fig. 4 needs the calibration model)."""
    by_name = variants_by_name()
    names: list[str] = []
    if "tab3" in experiments:
        names += list(scale.tab3)
    if "tab14" in experiments:
        names += [v.name for v in TAB14]
    if "fig4" in experiments and FIG4_MODEL not in names:
        names.append(FIG4_MODEL)
    return tuple(by_name[name] for name in dict.fromkeys(names))
