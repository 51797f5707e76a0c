"""Training: ``TrainConfig`` and ``train(cfg) -> run folder``, resumable bit for bit, single- or multi-process.

Run length: ``epochs``, ``iters`` and ``max_minutes``, whichever ends first. The lr schedule spans the
iteration length (min(epochs * iters_per_epoch, iters)), computed from the config and the dataset
alone, never from where a run happened to stop; with ``max_minutes`` its progress is the larger of the
iteration and elapsed-time fractions, so it completes by whichever end comes first.

Resume (``TrainConfig.for_resume(RUN)``; the config lives in ``retina_deploy.training.config``): model,
optimizer, loss scaler, weight average, epoch, batch within the epoch and torch RNG come back from
``RUN/train_state.pt``; the batch order is a pure function of (seed, epoch) and augmentation of
(seed, epoch, index), so the batches already done are skipped and the rest match an uninterrupted
run exactly (on the CPU, bit for bit). With ``max_minutes`` the lr depends on timing: not reproducible.

Multi-process: under ``torchrun`` each process trains on its shard with ``batch_size`` images (the
effective batch is batch_size * WORLD_SIZE; lr is not rescaled). Rank 0 alone validates and writes.
Resume in a multi-node job needs RUN/ on a filesystem every node sees.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from retina_deploy.core.errors import ConfigError, DatasetError
from retina_deploy.data.coco import CocoDataset, load_coco
from retina_deploy.data.dataset import DetectionDataset, collate_detections
from retina_deploy.evaluation.loop import evaluate_detector
from retina_deploy.inference.torch_backend import TorchBackend, checkpoint_spec
from retina_deploy.model.checkpoint import save_checkpoint
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.preprocess import PreprocessConfig
from retina_deploy.training import distributed, run_files
from retina_deploy.training.config import PATH_FIELDS, RESUME_OVERRIDABLE, TrainConfig
from retina_deploy.training.ema import ModelEMA
from retina_deploy.training.init_model import build_initial_model
from retina_deploy.training.loop import (
    MetricsLog,
    StepOptions,
    TrainProgress,
    resolve_amp,
    train_one_epoch,
)
from retina_deploy.training.optim import LRSchedule, build_optimizer, clamp_warmup

__all__ = ["TrainConfig", "load_datasets", "run_length", "train"]

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, *, stop_after_iters: int | None = None) -> Path:
    """Train as ``cfg`` says and return the run folder (see ``retina_deploy.training.run_files`` for its contents).

    ``stop_after_iters`` is a test hook that abandons the run after that global iteration as a kill
    would (nothing more is saved); it does not change the schedule. Under torchrun (WORLD_SIZE > 1)
    this joins the process group (NCCL on CUDA, gloo on CPU), wraps the model in DDP, and leaves the
    group at the end.
    """
    dist = distributed.dist_info_from_env()
    device = _resolve_device(cfg.device, dist)
    distributed.init_process_group(dist, device)
    try:
        return _Run(cfg, dist, device).run(stop_after_iters)
    finally:
        distributed.destroy_process_group(dist)


def _resolve_device(name: str, dist: distributed.DistInfo) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but CUDA is not available")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def load_datasets(cfg: TrainConfig) -> tuple[CocoDataset, CocoDataset | None]:
    """Load and check the training and (optional) validation sets: objects present, the same classes."""
    train_coco = load_coco(cfg.images, cfg.annotations)
    if train_coco.stats.get("boxes", 0) == 0:
        raise DatasetError(f"{cfg.annotations}: no object annotations in {len(train_coco)} images; nothing to learn")
    if cfg.val_images is None:
        return train_coco, None
    val_coco = load_coco(cfg.val_images, cfg.val_annotations)
    if val_coco.stats.get("boxes", 0) == 0:
        raise DatasetError(f"{cfg.val_annotations}: no object annotations; AP is undefined")
    if (val_coco.class_names, val_coco.category_ids) != (train_coco.class_names, train_coco.category_ids):
        raise DatasetError(
            f"validation classes {dict(zip(val_coco.category_ids, val_coco.class_names, strict=True))} differ from"
            f" the training classes {dict(zip(train_coco.category_ids, train_coco.class_names, strict=True))}"
        )
    return train_coco, val_coco


def run_length(cfg: TrainConfig, iters_per_epoch: int) -> int | None:
    """Iterations of the run from its config (None: bounded by time only)."""
    lengths = [n for n in (cfg.epochs and cfg.epochs * iters_per_epoch, cfg.iters) if n]
    return min(lengths) if lengths else None


class _Run:
    """One training run on one process: datasets, model, optimizer, the loop, checkpoints."""

    def __init__(self, cfg: TrainConfig, dist: distributed.DistInfo, device: torch.device) -> None:
        self.cfg, self.dist, self.device = cfg, dist, device
        self.run_dir = cfg.out
        self.train_coco, self.val_coco = load_datasets(cfg)
        self.preprocess = PreprocessConfig(size=cfg.size)
        self.model_cfg = cfg.model_config(self.train_coco.num_classes)
        self.dataset = DetectionDataset(
            self.train_coco,
            self.preprocess,
            train=True,
            hflip_prob=cfg.hflip,
            scale_jitter=cfg.scale_jitter,
            seed=cfg.seed,
        )
        self.iters_per_epoch = distributed.iters_per_epoch(len(self.dataset), cfg.batch_size, dist.world_size)
        total = run_length(cfg, self.iters_per_epoch)
        self.schedule = LRSchedule(cfg.base_lr, cfg.schedule, total, clamp_warmup(cfg.warmup_iters, total))
        self.progress = TrainProgress()
        self.elapsed_s = 0.0  # training time of earlier sessions of this run (time budgets)
        self.best_ap: float | None = None
        self.last_metrics: dict[str, float | None] | None = None
        self.metrics: MetricsLog | None = None

    # -- setup -------------------------------------------------------------------------------

    def _build(self) -> None:
        """Model (seeded init, ImageNet backbone or checkpoint), optimizer and loss scaler on the device."""
        cfg = self.cfg
        # A resumed run with a saved state restores its own weights: the checkpoint it started from is not read.
        restoring = cfg.resume is not None and (self.run_dir / run_files.STATE_NAME).is_file()
        model, self.init_note = build_initial_model(cfg, self.train_coco.class_names, load_init_weights=not restoring)
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(
            self.model,
            name=cfg.optimizer,
            lr=cfg.base_lr,
            momentum=cfg.momentum,
            weight_decay=cfg.base_weight_decay,
        )
        amp_dtype = resolve_amp(cfg.amp, self.device)
        scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        self.ema = None if cfg.ema_decay is None else ModelEMA(self.model, cfg.ema_decay)
        self.step_opts = StepOptions(
            self.device,
            amp_dtype=amp_dtype,
            grad_clip=cfg.grad_clip,
            cls_loss_weight=cfg.cls_loss_weight,
            scaler=scaler,
        )

    def _config_record(self) -> dict[str, Any]:
        """config.json's content: paths absolute, so that a resume from another folder finds the data."""
        train_dict = {
            k: (str(Path(v).resolve()) if k in PATH_FIELDS and v else v) for k, v in self.cfg.to_dict().items()
        }
        train_dict["resume"] = None
        return {
            "train": train_dict,
            "model": self.model_cfg.to_dict(),
            "class_names": list(self.train_coco.class_names),
            "preprocess": self.preprocess.to_dict(),
        }

    def _prepare_run_dir(self) -> None:
        """Rank 0: a new run folder with config.json, or check that a resumed run's config matches."""
        record = self._config_record()
        if self.cfg.resume is None:
            run_files.check_new_run_dir(self.run_dir)
            run_files.write_run_config(self.run_dir, record)
            return
        saved = run_files.read_run_config(self.run_dir)
        ignored = {*RESUME_OVERRIDABLE, "resume", "out"}
        fields = TrainConfig.__dataclass_fields__  # a run saved before a field existed had its default
        old = {k: saved["train"].get(k, fields[k].default) for k in record["train"]}
        diffs = [f"{k}: {old[k]!r} -> {v!r}" for k, v in record["train"].items() if k not in ignored and old[k] != v]
        diffs += [f"{k} differs" for k in ("model", "class_names", "preprocess") if saved[k] != record[k]]
        if diffs:
            raise ConfigError(f"--resume {self.run_dir}: the config differs from the run's ({'; '.join(diffs)})")

    def _restore(self) -> None:
        """Load train_state.pt (if the run got as far as a checkpoint) into model, optimizer and progress."""
        state = run_files.load_train_state(self.run_dir)
        if state is None:
            return
        if state["schedule"] != self.schedule.to_dict() or state["world_size"] != self.dist.world_size:
            raise ConfigError(
                f"--resume {self.run_dir}: the run had schedule {state['schedule']} on {state['world_size']}"
                f" process(es); now {self.schedule.to_dict()} on {self.dist.world_size} (dataset or launch changed)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])  # the config check above guarantees the run kept one
        if self.step_opts.scaler.is_enabled() and state["scaler"]:
            self.step_opts.scaler.load_state_dict(state["scaler"])
        self.progress = TrainProgress(**state["progress"])
        self.elapsed_s = float(state["elapsed_s"])
        self.best_ap = state["best_ap"]
        self.last_metrics = state["last_metrics"]
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        log.info("resumed %s at epoch %d, batch %d, iteration %d", self.run_dir, *dataclasses.astuple(self.progress))

    def run(self, stop_after_iters: int | None) -> Path:
        self._build()  # reads the backbone or init weights: a refused file leaves no run folder behind
        created = not self.run_dir.exists()
        distributed.run_on_main(self.dist, self._prepare_run_dir)
        try:
            self._run_prepared(stop_after_iters)
        except Exception:
            if self.cfg.resume is None and self.dist.is_main:
                run_files.remove_failed_start(self.run_dir, remove_dir=created)
            raise
        return self.run_dir

    def _run_prepared(self, stop_after_iters: int | None) -> None:
        detach = run_files.attach_run_log(self.run_dir) if self.dist.is_main else None
        try:
            if self.cfg.resume is not None:
                self._restore()
            if self.dist.is_main:
                metrics_path = self.run_dir / run_files.METRICS_NAME
                MetricsLog.truncate(metrics_path, self.progress.iteration)
                self.metrics = MetricsLog(metrics_path)
            self._log_start()
            self._loop(self._wrap(), stop_after_iters)
        finally:
            if self.metrics is not None:
                self.metrics.close()
            if detach is not None:
                detach()

    def _wrap(self) -> torch.nn.Module:
        """The module to train: DDP (SyncBatchNorm for "bn" on CUDA) when distributed, else the model."""
        if not self.dist.is_distributed:
            return self.model
        module = self.model
        if self.device.type == "cuda" and self.cfg.backbone_norm == "bn":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def _log_start(self) -> None:
        log.info(
            "training %s: %d images, %d classes, %d it/epoch x %d process(es), run length %s it, amp %s, device %s",
            self.run_dir,
            len(self.dataset),
            self.model_cfg.num_classes,
            self.iters_per_epoch,
            self.dist.world_size,
            self.schedule.total_iters if self.schedule.total_iters else f"{self.cfg.max_minutes} min",
            self.step_opts.amp_dtype or "float32",
            self.device,
        )
        if self.progress.iteration == 0:
            log.info("initial model: %s", self.init_note)

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self, net: torch.nn.Module, stop_after_iters: int | None) -> None:
        session_start = time.perf_counter()
        elapsed = [self.elapsed_s]  # training time so far, agreed across ranks after every step

        def lr_for(p: TrainProgress) -> float:
            return self.schedule.lr(p.iteration, self._time_fraction(elapsed[0]))

        killed = False

        def after_step(p: TrainProgress) -> bool:
            nonlocal killed
            if self.ema is not None:
                self.ema.update(self.model)
            elapsed[0] = self._agreed_elapsed(self.elapsed_s + time.perf_counter() - session_start)
            if stop_after_iters is not None and p.iteration >= stop_after_iters:
                killed = True  # as if killed right after this step: no checkpoint of this iteration
                return True
            if self._finished(elapsed[0]) or p.batch >= self.iters_per_epoch:
                return True  # the epoch end or the run's end: validation and checkpoint follow below
            if p.iteration % self.cfg.checkpoint_every_iters == 0:
                self._save(elapsed[0])
            return False

        while not self._finished(elapsed[0]):
            loader = self._loader(self.progress.epoch, self.progress.batch)
            summary = train_one_epoch(
                net, loader, self.optimizer, self.progress, self.step_opts,
                lr_for=lr_for, after_step=after_step, dist=self.dist, metrics=self.metrics,
            )  # fmt: skip
            if killed:
                return
            epoch = self.progress.epoch
            log.info(summary.line(epoch))
            if self.progress.batch >= self.iters_per_epoch:
                self.progress.epoch += 1
                self.progress.batch = 0
            if (epoch + 1) % self.cfg.val_every_epochs == 0 or self._finished(elapsed[0]):
                self._validate(epoch)
            self._save(elapsed[0])

    def _loader(self, epoch: int, start_batch: int) -> torch.utils.data.DataLoader:
        """The rest of ``epoch`` from ``start_batch`` on, for this rank (order: ``distributed.epoch_batches``)."""
        self.dataset.set_epoch(epoch)
        batches = distributed.epoch_batches(
            len(self.dataset),
            batch_size=self.cfg.batch_size,
            seed=self.cfg.seed,
            epoch=epoch,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=distributed.BatchList(batches[start_batch:]),
            num_workers=self.cfg.workers,
            collate_fn=collate_detections,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # the loader's seed draw must not advance the global RNG
        )

    def _time_fraction(self, elapsed_s: float) -> float:
        return 0.0 if self.cfg.max_minutes is None else elapsed_s / (60.0 * self.cfg.max_minutes)

    def _agreed_elapsed(self, elapsed_s: float) -> float:
        """With a time budget, all ranks must stop (and set the lr) together: take the slowest clock."""
        if self.cfg.max_minutes is None or not self.dist.is_distributed:
            return elapsed_s
        return float(distributed.all_reduce_(torch.tensor([elapsed_s], device=self.device), self.dist, op="max").item())

    def _finished(self, elapsed_s: float) -> bool:
        total = self.schedule.total_iters
        return (total is not None and self.progress.iteration >= total) or self._time_fraction(elapsed_s) >= 1.0

    # -- validation and checkpoints -----------------------------------------------------------

    @property
    def saved_model(self) -> torch.nn.Module:
        """The weights a run evaluates and saves: the moving average with ``ema_decay``, else the trained ones."""
        return self.model if self.ema is None else self.ema.module

    def _evaluate(self, model: torch.nn.Module) -> dict[str, float | None]:
        spec = checkpoint_spec(model.cfg, self.train_coco.class_names, self.preprocess)
        backend = TorchBackend(model, input_size=spec.preprocess.size, max_dets=spec.nms.max_dets, device=self.device)
        try:  # the code that scores checkpoints, ONNX files and engines
            metrics, _ = evaluate_detector(Detector(backend, spec), self.val_coco, batch_size=self.cfg.batch_size)
        finally:
            self.model.train()
            if self.ema is not None:
                self.ema.module.eval()
        return metrics

    def _validate(self, epoch: int) -> None:
        """Rank 0, after (part of) ``epoch``: COCO AP on the val set, a "val" metrics row, best/ if AP improved.

        With ``ema_decay`` the "val" row scores the averaged weights and a "val_raw" row the trained ones.
        """
        if self.val_coco is None:
            return
        if self.dist.is_main:
            if self.ema is not None:
                raw = self._evaluate(self.model)
                log.info("raw weights at iteration %d: AP %s, AP50 %s", self.progress.iteration, raw["AP"], raw["AP50"])
                self.metrics.write(
                    kind="val_raw", epoch=epoch, iteration=self.progress.iteration, AP=raw["AP"], AP50=raw["AP50"]
                )
            metrics = self._evaluate(self.saved_model)
            self.last_metrics = metrics
            ap = metrics["AP"] if metrics["AP"] is not None else 0.0
            log.info("validation at iteration %d: AP %.4f, AP50 %s", self.progress.iteration, ap, metrics["AP50"])
            self.metrics.write(kind="val", epoch=epoch, iteration=self.progress.iteration, AP=ap, AP50=metrics["AP50"])
            if self.best_ap is None or ap > self.best_ap:
                self.best_ap = ap
                self._save_checkpoint(run_files.BEST_NAME)
        distributed.barrier(self.dist)

    def _save_checkpoint(self, name: str) -> None:
        extra = {
            **dataclasses.asdict(self.progress),
            "iters_per_epoch": self.iters_per_epoch,
            "metrics": self.last_metrics,
        }
        save_checkpoint(
            self.saved_model,
            self.run_dir / name,
            class_names=self.train_coco.class_names,
            preprocess=self.preprocess,
            extra=extra,
        )

    def _save(self, elapsed_s: float) -> None:
        """Rank 0: last/ and train_state.pt (the latter self-contained, so a kill between the two is harmless)."""
        if not self.dist.is_main:
            return
        self._save_checkpoint(run_files.LAST_NAME)
        scaler = self.step_opts.scaler
        state = {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "schedule": self.schedule.to_dict(),
            "world_size": self.dist.world_size,
            "progress": dataclasses.asdict(self.progress),
            "elapsed_s": elapsed_s,
            "best_ap": self.best_ap,
            "last_metrics": self.last_metrics,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        run_files.save_train_state(self.run_dir, state)
