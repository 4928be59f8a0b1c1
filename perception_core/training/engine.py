"""Training engine: optimizer groups, the pure LR schedule, one step, one epoch, the run
(checkpoints: checkpoint.py; metrics: metrics_log.py; the forward pass and losses: forward.py).

The loop, start to end (`train`):
    validate config -> build datasets (json problems are ConfigErrors, before any step) ->
    prompt embeddings (all category names, frozen MiniLM, computed once) -> model, criterion,
    AdamW -> resume (model, optimizer, scaler, step, RNG states) -> epochs of `train_one_epoch`.

Reproducibility. Data order is a function of (seed, epoch), each sample's augmentation of
(seed, epoch, index), and the only other randomness (the matcher's and criterion's point
sampling) comes from torch's global RNG, which checkpoints save and restore per rank. Resuming
from the checkpoint of step k therefore gives the same losses as the uninterrupted run.

Checkpoints (`save_checkpoint`) are written to a temporary file and renamed into place, so a file
at a checkpoint path is always complete; they hold only tensors and plain Python values and are
read back with torch.load(weights_only=True).
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import ConfigError
from ..model.build import build_model
from ..model.text_encoder import MiniLMTextEncoder, TextEmbeddings
from .collate import Batch, collate
from .criterion import LOSS_NAMES, LossConfig, SetCriterion
from .datasets import build_dataset
from .forward import forward_losses, outputs_are_finite
from .distributed import (DistInfo, SeededDistributedSampler, all_true, barrier, init_distributed,
                          mean_over_ranks, unwrap, wrap_model)
from .checkpoint import (CHECKPOINT_FORMAT, CheckpointError, checkpoint_contents, gather_rng_states,  # noqa: F401
                         load_checkpoint, restore_checkpoint, save_checkpoint, _publish)
from .matcher import HungarianMatcher
from .lineage import record_start
from .metrics_log import MetricsLogger
from .state import StepResult, TrainState
from .recipe import OptimConfig, TrainConfig, to_plain_dict, validate
from .transforms import build_train_transforms, build_val_transforms

log = logging.getLogger("mobius.train")


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: training diverged."""


# ----------------------------------------------------------------------------- optimizer, schedule

def lr_at(step: int, optim: OptimConfig) -> float:
    """Base learning rate before optimizer step `step` (0-based): linear warmup from
    warmup_start_factor * lr at step 0 to lr at step warmup_steps, times gamma for every
    milestone <= step. Group lrs are this times their lr_multiplier."""
    warmup = 1.0
    if step < optim.warmup_steps:
        warmup = optim.warmup_start_factor + (1 - optim.warmup_start_factor) * step / optim.warmup_steps
    return optim.lr * warmup * optim.gamma ** bisect.bisect_right(optim.milestones, step)


def build_param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """AdamW groups: (backbone | text projections | rest) x (decay | no decay). Norm weights,
    biases and scalars (the logit scale s) get no weight decay."""
    multipliers = {"backbone": optim.backbone_lr_multiplier, "text": optim.text_lr_multiplier, "rest": 1.0}
    groups: dict[str, dict] = {}
    for name, parameter in model.named_parameters():  # shared parameters are listed once
        if not parameter.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "text" if name.startswith("text_") else "rest"
        decay = parameter.ndim > 1
        key = f"{part}/{'decay' if decay else 'no_decay'}"
        group = groups.setdefault(key, {"params": [], "name": key, "lr_multiplier": multipliers[part],
                                        "weight_decay": optim.weight_decay if decay else 0.0})
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    optimizer = torch.optim.AdamW(build_param_groups(model, optim), lr=optim.lr)
    set_learning_rate(optimizer, 0, optim)
    return optimizer


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, optim: OptimConfig) -> float:
    lr = lr_at(step, optim)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_multiplier"]
    return lr


def build_criterion(loss: LossConfig) -> SetCriterion:
    """Matcher costs equal the loss weights (DETR / MaskDINO convention)."""
    matcher = HungarianMatcher(cost_class=loss.class_weight, cost_bbox=loss.bbox_weight,
                               cost_giou=loss.giou_weight, cost_mask=loss.mask_weight,
                               cost_dice=loss.dice_weight, num_points=loss.num_points,
                               focal_alpha=loss.focal_alpha, focal_gamma=loss.focal_gamma)
    return SetCriterion(matcher, loss)


# ----------------------------------------------------------------------------- one step

@dataclass
class Run:
    """Everything one step needs; built by `train`."""
    model: nn.Module                 # possibly DDP-wrapped
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    prompts: TextEmbeddings          # on the training device
    config: TrainConfig
    info: DistInfo
    amp_dtype: torch.dtype | None    # autocast dtype, None = full precision
    state: TrainState = field(default_factory=TrainState)


def set_train_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train_one_step(run: Run, batch: Batch) -> StepResult:
    """Forward, guard, backward, clip, update. A non-finite loss (or gradient) skips the update;
    `max_consecutive_nonfinite` of them in a row raise NonFiniteLossError."""
    state, optim = run.state, run.config.optim
    set_train_mode(run.model, run.config.freeze_batchnorm)
    lr = set_learning_rate(run.optimizer, state.step, optim)
    run.optimizer.zero_grad(set_to_none=True)
    losses, total = forward_losses(run, batch)
    grad_norm = math.nan
    if total is not None:
        run.scaler.scale(total).backward()
        run.scaler.unscale_(run.optimizer)
        parameters = [p for group in run.optimizer.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, optim.grad_clip or math.inf))
        # With an fp16 GradScaler, inf gradients are routine: the scaler skips and backs off.
        if not math.isfinite(grad_norm) and not run.scaler.is_enabled():
            total = None
    state.step += 1
    if total is None:
        return _skip_step(run, lr)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    state.consecutive_nonfinite = 0
    metrics = {name: float(value.detach()) for name, value in losses.items() if name in LOSS_NAMES}
    metrics["loss"] = float(total.detach())
    metrics = mean_over_ranks(metrics, run.info)
    loss = metrics.pop("loss")
    return StepResult(state.step, loss, metrics, lr, grad_norm, skipped=False)


def _skip_step(run: Run, lr: float) -> StepResult:
    run.optimizer.zero_grad(set_to_none=True)
    state = run.state
    state.skipped_steps += 1
    state.consecutive_nonfinite += 1
    if state.consecutive_nonfinite >= run.config.max_consecutive_nonfinite:
        raise NonFiniteLossError(
            f"{state.consecutive_nonfinite} non-finite losses in a row (step {state.step}); training "
            f"diverged. Lower optim.lr, keep optim.grad_clip > 0, check the data, and resume from the "
            f"last checkpoint")
    log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", state.step,
                state.consecutive_nonfinite)
    return StepResult(state.step, math.nan, {}, lr, math.nan, skipped=True)


# ----------------------------------------------------------------------------- epoch, evaluation

def train_one_epoch(run: Run, loader: DataLoader, logger: "MetricsLogger", hooks: "StepHooks",
                    progress: tqdm | None) -> None:
    """Steps over this epoch's batches until the epoch or optim.max_steps ends."""
    max_steps = run.config.optim.max_steps
    for batch in loader:
        if run.state.step >= max_steps:
            break
        started = time.perf_counter()
        result = train_one_step(run, batch.to(run.info.device))
        logger.record(result, time.perf_counter() - started, run.state)
        hooks.after_step(run)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{result.loss:.3f}", lr=f"{result.lr:.2e}")


@torch.no_grad()
def evaluate_loss(run: Run, loader: DataLoader) -> dict[str, float]:
    """Mean validation losses (weighted total as "loss"), eval mode without query pruning; under
    DDP every rank evaluates its shard and the means are averaged."""
    model = unwrap(run.model)
    model.eval()
    prune, model.prune = model.prune, None  # pruning drops queries: the losses need them all
    sums: dict[str, float] = {}
    count = nonfinite = 0
    try:
        for batch in loader:
            batch = batch.to(run.info.device)
            outputs = model(batch.images, run.prompts.tokens, run.prompts.mask, run.prompts.pooled)
            if not all_true(outputs_are_finite(outputs), run.info):  # same branch on every rank
                nonfinite += 1
                continue
            losses = run.criterion(outputs, batch.targets)
            values = {name: float(v) for name, v in losses.items() if name in LOSS_NAMES}
            values["loss"] = float(run.criterion.weighted_total(losses))
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
    finally:
        model.prune = prune
    means = {name: value / max(count, 1) for name, value in sums.items()}
    means["nonfinite_batches"] = float(nonfinite)
    return mean_over_ranks(means, run.info)


def evaluate_ap(run: Run, dataset, limit: int) -> dict[str, float]:
    """COCO box/mask AP (pycocotools) of a copy of the model on the first `limit` images of a COCO
    val set, at the val size, without pruning; {} for video val sets."""
    import copy

    from ..evaluation.coco_eval import evaluate_coco
    from ..evaluation.predict import ModelRunner, predict_coco
    from .datasets import CocoDataset, read_annotation_file

    if not isinstance(dataset, CocoDataset):
        return {}
    model = copy.deepcopy(unwrap(run.model)).cpu()
    size = -(-run.config.data.val_size // 32) * 32
    runner = ModelRunner.from_torch(model, size=size, prune=False)
    ids = [category for category, _ in sorted(dataset.label_of.items(), key=lambda item: item[1])]
    data = read_annotation_file(dataset.annotation_file)
    data["images"] = data["images"][:limit]
    detections, _ = predict_coco(runner, data, dataset.image_root, dataset.category_names, ids, progress=False)
    result = evaluate_coco(data, detections, category_ids=ids, image_ids=[image["id"] for image in data["images"]])
    return {"box_AP": result.stats["bbox"]["AP"] or 0.0, "mask_AP": result.stats["segm"]["AP"] or 0.0,
            "mask_AP50": result.stats["segm"]["AP50"] or 0.0}


class StepHooks:
    """Evaluation and checkpointing at their intervals (checkpoints: all ranks join the RNG
    gather; rank 0 writes)."""

    def __init__(self, output_dir: Path, val_loader: DataLoader | None, logger: "MetricsLogger"):
        self.checkpoint_dir = output_dir / "checkpoints"
        self.val_loader = val_loader
        self.logger = logger
        self.last_saved_step = -1

    def after_step(self, run: Run) -> None:
        step, config = run.state.step, run.config
        if self.val_loader is not None and config.eval_interval and step % config.eval_interval == 0:
            # A forked RNG: evaluating (point sampling) must not change the training trajectory.
            devices = [run.info.device] if run.info.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                metrics = evaluate_loss(run, self.val_loader)
                if run.info.is_main and config.eval_ap_images:
                    metrics.update(evaluate_ap(run, self.val_loader.dataset, config.eval_ap_images))
                self.logger.record_eval(step, metrics)
        if step % config.checkpoint_interval == 0 or step == config.optim.max_steps:
            self.save(run)

    def save(self, run: Run) -> Path | None:
        if self.last_saved_step == run.state.step:
            return None
        rng_states = gather_rng_states(run.info)
        self.last_saved_step = run.state.step
        path = None
        if run.info.is_main:
            path = save_checkpoint(self.checkpoint_dir / f"step_{run.state.step:07d}.pt",
                                   checkpoint_contents(run, rng_states))
            _publish(path, self.checkpoint_dir / "last.pt")
        barrier(run.info)
        return path


# ----------------------------------------------------------------------------- the run

@dataclass
class TrainResult:
    history: list[StepResult]        # every step of this invocation (rank 0: means over ranks)
    step_seconds: list[float]        # wall time of each step
    final_step: int
    skipped_steps: int
    checkpoint: Path | None          # last checkpoint written (rank 0)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where supported, else fp16; only on CUDA."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if device.type != "cuda":
        raise ConfigError(f"amp=on needs a CUDA device, got {device}; use amp=auto or amp=off")
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def encode_prompts(names: list[str], max_tokens: int,
                   embeddings_file: str | os.PathLike | None = None) -> TextEmbeddings:
    """Frozen MiniLM embeddings of the prompt list (computed once per run). With `embeddings_file` (a
    prompt embeddings file from 'mobius prompts') the names it holds are read from it, the same inputs
    as encoding them, so a machine without the text encoder can train; ConfigError when the file cannot
    be read, or when it lacks names and the encoder is not installed."""
    if embeddings_file is None:
        return MiniLMTextEncoder(max_tokens=max_tokens, cache_size=0).encode(names)
    from ..runtime.prompts import encode_prompts as lookup

    try:
        _, text = lookup(names, max_tokens, embeddings=embeddings_file)
    except (ValueError, OSError) as error:
        raise ConfigError(f"prompt embeddings '{embeddings_file}': {error}") from None
    return TextEmbeddings(torch.from_numpy(text["text_tokens"]), torch.from_numpy(text["text_mask"]),
                          torch.from_numpy(text["text_pooled"]))


def build_loaders(config: TrainConfig, info: DistInfo):
    """(train set, train loader, train sampler, val loader or None). Every json problem surfaces
    here as a ConfigError."""
    data = config.data
    keep = "seen" if data.prompts == "seen" else None
    video_mode = "pairs" if config.queries.temporal else "frames"
    train_set = build_dataset(data.train_annotations, data.train_images, build_train_transforms(data), data.use_masks,
                              video_mode=video_mode, categories=keep, max_delta=config.queries.max_delta)
    if config.queries.temporal and getattr(train_set, "mode", None) != "pairs":
        raise ConfigError(f"queries.temporal needs a YouTube-VIS (video) json; '{data.train_annotations}' is COCO")
    if len(train_set) < config.batch_size * info.world_size:
        raise ConfigError(f"the training set has {len(train_set)} images, fewer than batch_size x processes "
                          f"= {config.batch_size * info.world_size}")
    sampler = SeededDistributedSampler(len(train_set), info, config.seed, config.batch_size)
    loader = _loader(train_set, sampler, config)
    val_loader = None
    if data.val_annotations:
        val_set = build_dataset(data.val_annotations, data.val_images, build_val_transforms(data), data.use_masks,
                                categories=train_set.category_names if keep else None)
        if val_set.category_names != train_set.category_names:
            raise ConfigError(f"'{data.val_annotations}' and '{data.train_annotations}' list different categories; "
                              f"the prompt list must be the same")
        if len(val_set) >= info.world_size:
            val_sampler = SeededDistributedSampler(len(val_set), info, config.seed, 1, shuffle=False)
            val_loader = _loader(val_set, val_sampler, config, drop_last=False)
    return train_set, loader, sampler, val_loader


def _loader(dataset, sampler, config: TrainConfig, drop_last: bool = True) -> DataLoader:
    # An explicit generator: creating the iterator must not consume the global torch RNG.
    # Workers start from a forkserver, not fork: a forked child of a process whose OpenCV (or
    # OpenMP) thread pool is running can deadlock on its first cv2 call. Persistent workers pay
    # the start-up once per run instead of once per epoch.
    workers = config.num_workers
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, drop_last=drop_last, worker_init_fn=_worker_init,
                      generator=torch.Generator().manual_seed(config.seed),
                      multiprocessing_context="forkserver" if workers else None, persistent_workers=workers > 0)


def _worker_init(worker_id: int) -> None:
    import cv2
    cv2.setNumThreads(1)  # workers x OpenCV threads would oversubscribe the cores


def train(config: TrainConfig, device: str | None = None, resume: str | os.PathLike | None = None,
          prompt_embeddings: TextEmbeddings | None = None, show_progress: bool = True,
          prompt_file: str | os.PathLike | None = None) -> TrainResult:
    """Runs (or resumes) training up to config.optim.max_steps. Raises ConfigError for any problem
    with the recipe or the data before the first step. prompt_embeddings (in memory) or prompt_file
    (a 'mobius prompts' file) replace encoding the category names with MiniLM."""
    model_config = validate(config)
    info = init_distributed(device)
    amp_dtype = resolve_amp(config.amp, info.device)
    checkpoint = load_checkpoint(resume) if resume else None
    train_set, loader, sampler, val_loader = build_loaders(config, info)
    names = train_set.category_names
    prompts = prompt_embeddings
    if prompts is None:
        prompts = encode_prompts(names, model_config.text.max_tokens, prompt_file)
    if len(prompts) != len(names):
        raise ConfigError(f"{len(prompts)} prompt embeddings for {len(names)} categories")
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    if checkpoint is None and config.model.init_weights:
        _load_init_weights(model, config.model.init_weights)
    model = model.to(info.device)
    optimizer = build_optimizer(model, config.optim)
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(config.seed + info.rank)  # the training RNG (point sampling), per rank
    run = Run(model, build_criterion(config.loss), optimizer, scaler, prompts.to(info.device), config, info, amp_dtype)
    if checkpoint is not None:
        restore_checkpoint(run, checkpoint, resume)
        log.info("resumed from '%s' at step %d", resume, run.state.step)
    run.model = wrap_model(model, info, sync_batchnorm=not config.freeze_batchnorm)
    output_dir = Path(config.output_dir)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(to_plain_dict(config), sort_keys=False))
        if checkpoint is None:   # what the init weights stand on, read now: shipping rewrites model.json
            record_start(to_plain_dict(config), output_dir)
    logger = MetricsLogger(output_dir, config, info.is_main, run.state.step)
    hooks = StepHooks(output_dir, val_loader, logger)
    return _run_epochs(run, loader, sampler, logger, hooks, show_progress and info.is_main)


def _load_init_weights(model: nn.Module, path: str) -> None:
    """model.init_weights into the freshly built model; ConfigError when they do not fit it."""
    from ..model.build import load_weights

    try:
        load_weights(model, path)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"model.init_weights: {error}") from None
    log.info("started from the weights in '%s'", path)


def _run_epochs(run: Run, loader: DataLoader, sampler: SeededDistributedSampler, logger: MetricsLogger,
                hooks: StepHooks, show_progress: bool) -> TrainResult:
    steps_per_epoch = sampler.batches_per_epoch()
    max_steps = run.config.optim.max_steps
    progress = None
    if show_progress:
        progress = tqdm(total=max_steps, initial=run.state.step, desc="train", dynamic_ncols=True)
    try:
        while run.state.step < max_steps:
            epoch, done_in_epoch = divmod(run.state.step, steps_per_epoch)
            sampler.set_epoch(epoch, skip_batches=done_in_epoch)
            train_one_epoch(run, loader, logger, hooks, progress)
        hooks.save(run)
    finally:
        if progress is not None:
            progress.close()
        logger.close()
    last = hooks.checkpoint_dir / "last.pt"
    return TrainResult(logger.history, logger.step_seconds, run.state.step, run.state.skipped_steps,
                       last if run.info.is_main and last.is_file() else None)
