"""Training core: heads on cached features, AdamW + warm-up schedule, early stopping on validation weighted F1.

Accelerate places model and batches (CPU, one GPU, several GPUs under ``accelerate launch``, mixed precision).
``history.csv`` and the resume state are rewritten after the first epoch and then every :data:`SAVE_EVERY_S`
seconds (``history.csv`` again at the end); every improvement rewrites the best checkpoint atomically, so a crash
loses at most those seconds of work, and ``--resume`` continues exactly from the last written epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from msa.checkpoint import save_checkpoint
from msa.features import FeatureSet, pad_sequences
from msa.io import write_csv
from msa.loop import LoopState, run_epochs, snapshot
from msa.settings import DEFAULTS, MIXED_PRECISIONS, RESOLVED_PRECISIONS

log = logging.getLogger(__name__)
SCHEDULERS = ("cosine", "linear", "constant")
#: overrides ``--mixed-precision auto`` (no, fp16 or bf16), e.g. ``MSA_MIXED_PRECISION=no`` for float32 heads
MIXED_PRECISION_ENV = "MSA_MIXED_PRECISION"


#: ``auto`` trains in bf16 from this batch size x head width on (docs/running.md, fourth pass): the final
#: recipe's and phase 3's heads (128 x 512) train 1.2-1.3x faster in bf16 on this project's CPU, the fusion grid's
#: (64 x 256) not at all (131 s against 135 s, with a 1.1 GiB higher peak)
BF16_MIN_WORK = 128 * 512


def resolve_mixed_precision(value: str | None, batch_size: int | None = None, hidden: int | None = None) -> str:
    """``no``, ``fp16`` or ``bf16`` for a ``--mixed-precision`` value. ``auto`` (or None) is
    :data:`MIXED_PRECISION_ENV` when set, else ``bf16`` on a CPU-only machine whose CPU has native bfloat16
    (:func:`msa.backbones.native_bf16`) for a head of at least :data:`BF16_MIN_WORK` batch rows x width (when
    they are given), and ``no`` elsewhere: a GPU, a CPU that would emulate bf16, or a head too small to gain. The
    cross-validated figures of the final recipe are the same within noise in both (docs/final.md)."""
    import os

    from msa.cli import UserError

    value = value or "auto"
    if value == "auto":
        env = os.environ.get(MIXED_PRECISION_ENV, "").strip()
        if env:
            if env not in RESOLVED_PRECISIONS:
                raise UserError(f"{MIXED_PRECISION_ENV}={env!r}: choose {', '.join(RESOLVED_PRECISIONS)} (or unset "
                                "it for auto)")
            return env
        from msa.backbones import native_bf16

        small = batch_size is not None and hidden is not None and int(batch_size) * int(hidden) < BF16_MIN_WORK
        return "bf16" if not small and not torch.cuda.is_available() and native_bf16() else "no"
    if value not in RESOLVED_PRECISIONS:
        raise UserError(f"unknown mixed precision {value!r}: choose {', '.join(MIXED_PRECISIONS)}")
    return value


@dataclass
class TrainConfig:
    """How one model is trained; the defaults are the training settings' (:data:`msa.settings.DEFAULTS`)."""

    learning_rate: float = DEFAULTS["learning_rate"]
    weight_decay: float = DEFAULTS["weight_decay"]
    num_epochs: int = DEFAULTS["num_epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    warmup_ratio: float = DEFAULTS["warmup_ratio"]
    scheduler: str = DEFAULTS["scheduler"]
    patience: int = DEFAULTS["patience"]
    grad_clip: float = 1.0
    seed: int = 42
    mixed_precision: str = "no"
    sampler: str = "none"  # none | balanced (each class drawn equally often, with replacement)

    def as_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class FeatureDataset(Dataset):
    """Rows ``indices`` of a :class:`FeatureSet` with integer labels; optional token sequences."""

    def __init__(self, features: FeatureSet, indices: Sequence[int], labels: Sequence[int] | None,
                 modalities: Sequence[str], tokens: Sequence[str] = ()):
        self.fs, self.indices = features, list(indices)
        self.labels = None if labels is None else torch.as_tensor(list(labels), dtype=torch.long)
        self.modalities, self.token_modalities = list(modalities), list(tokens)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, rows: list[int]) -> dict:
        """A whole batch at once (DataLoader calls this instead of one ``__getitem__`` per row)."""
        idx = [self.indices[i] for i in rows]
        sel = torch.as_tensor(idx)
        batch = {"index": sel, "feats": {m: self.fs.pooled[m][sel].float() for m in self.modalities},
                 "label": self.labels[torch.as_tensor(rows)] if self.labels is not None
                 else torch.full((len(rows),), -1, dtype=torch.long),
                 "tokens": {}, "masks": {}}
        for m in self.token_modalities:
            batch["tokens"][m], batch["masks"][m] = pad_sequences([self.fs.tokens[m][j] for j in idx])
        return batch

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        item = {"index": j, "feats": {m: self.fs.pooled[m][j] for m in self.modalities},
                "tokens": {m: self.fs.tokens[m][j] for m in self.token_modalities}}
        item["label"] = int(self.labels[i]) if self.labels is not None else -1
        return item


def collate(batch: list[dict] | dict) -> dict:
    if isinstance(batch, dict):  # already batched by FeatureDataset.__getitems__
        return batch
    out = {"index": torch.tensor([b["index"] for b in batch]),
           "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
           "feats": {m: torch.stack([b["feats"][m] for b in batch]).float() for m in batch[0]["feats"]},
           "tokens": {}, "masks": {}}
    for m in batch[0]["tokens"]:
        out["tokens"][m], out["masks"][m] = pad_sequences([b["tokens"][m] for b in batch])
    return out


SAMPLERS = ("none", "balanced")


class BucketBatchSampler(torch.utils.data.Sampler):
    """Shuffled batches of similar token length: rows are shuffled, cut into pools of ``pool`` batches, each pool
    sorted by length and cut into batches, and the batches shuffled. Padding then costs little (on MVSA texts
    the longest of 64 random posts is ~2.7x the mean length)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool: int = 20):
        self.lengths, self.batch_size, self.gen, self.pool = list(lengths), batch_size, generator, pool

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.gen).tolist()
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.gen).tolist():
            yield batches[b]

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, sampler: str = "none") -> DataLoader:
    gen = torch.Generator()
    gen.manual_seed(seed)
    if sampler == "balanced":
        labels = ds.labels
        counts = torch.bincount(labels).clamp_min(1).float()
        weights = (1.0 / counts)[labels]
        sampler_obj = torch.utils.data.WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                                             generator=gen)
        return _with_generator(DataLoader(ds, batch_size=batch_size, sampler=sampler_obj, collate_fn=collate,
                                          num_workers=0), gen)
    if sampler != "none":
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    token_mods = getattr(ds, "token_modalities", [])
    if token_mods:
        lengths = [int(ds.fs.tokens[token_mods[0]][j].shape[0]) for j in ds.indices]
        if shuffle:
            batches = BucketBatchSampler(lengths, batch_size, gen)
        else:  # evaluation: rows sorted by length (callers reorder by the returned indices)
            order = sorted(range(len(lengths)), key=lambda i: lengths[i])
            batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return _with_generator(DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=0), gen)
    return _with_generator(DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=gen,
                                      num_workers=0, drop_last=False), gen)


def _with_generator(loader: DataLoader, gen: torch.Generator) -> DataLoader:
    loader.msa_generator = gen  # the shuffling state, saved with the resume state
    return loader


RESUME_FILE = "resume_state.pt"
#: the resume state (and history.csv) are written after the first epoch, then after an epoch that ends at least this
#: many seconds after the last write, and history.csv once more at the end: a killed run redoes at most that much
#: work and still resumes exactly (from the last written epoch). Writing ~10 MB with fsync after every epoch of a
#: head was ~8% of its training time.
SAVE_EVERY_S = 10.0


def _rng_state() -> dict:
    npst = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)),
                                                      int(npst[2]), int(npst[3]), float(npst[4])],
            "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def load_resume_state(run_dir: str | Path) -> dict | None:
    """The last epoch's training state of ``run_dir`` (None when there is none or it is unreadable); loaded with
    ``weights_only=True``, so nothing in the file is executed."""
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged state means starting over, never a crash
        log.warning("ignoring unreadable resume state %s (%s): training starts over", path, type(exc).__name__)
        return None


def _forward(model, batch: dict) -> torch.Tensor:
    return model(batch["feats"], tokens=batch["tokens"] or None, masks=batch["masks"] or None)


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    warmup = int(round(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _accelerator(mixed_precision: str):
    """An Accelerator in ``mixed_precision``. Its process-wide state is set by the first one; a later run of
    this process in another precision (a test, a demo, a notebook training in float32, then in bf16) starts it
    again on one process (a distributed launch keeps one precision throughout)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed_precision)) != mixed_precision \
            and PartialState().num_processes == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision)


@contextlib.contextmanager
def full_precision(model):
    """The model's own forward (float32) inside, where Accelerate wrapped it in mixed-precision autocast: the
    validation predictions that pick the best epoch are the ones its checkpoint gives (phase 5 checks them)."""
    original = model.__dict__.get("_original_forward")  # set by Accelerator.prepare with mixed precision
    if original is None:
        yield model
        return
    wrapped = model.forward
    model.forward = original
    try:
        yield model
    finally:
        model.forward = wrapped


@torch.no_grad()
def predict_proba(model, loader: DataLoader, accelerator=None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and dataset indices for every row of ``loader`` (gathered across processes)."""
    model.eval()
    probs, idx = [], []
    for batch in loader:
        p = torch.softmax(_forward(model, batch).float(), dim=-1)
        if accelerator is not None:
            p, i = accelerator.gather_for_metrics((p, batch["index"]))
        else:
            i = batch["index"]
        probs.append(p.cpu())
        idx.append(i.cpu())
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=int)
    return torch.cat(probs).numpy(), torch.cat(idx).numpy()


def predict_rows(model, fs: FeatureSet, rows: Sequence[int], token_modalities: Sequence[str] = (),
                 batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities ``(len(rows), C)`` of ``model`` for rows ``rows`` of ``fs``, in that order."""
    rows = [int(r) for r in rows]
    toks = [m for m in token_modalities if m in fs.tokens]
    ds = FeatureDataset(fs, rows, None, list(getattr(model, "input_names", model.names)), toks)
    proba, index = predict_proba(model, make_loader(ds, batch_size, False, 0))
    pos = {int(j): k for k, j in enumerate(index)}
    return proba[[pos[r] for r in rows]]


def fit(model: torch.nn.Module, loss_fn: torch.nn.Module, train_ds: Dataset, val_ds: Dataset, cfg: TrainConfig,
        labels: Sequence[str], run_dir: str | Path | None = None, checkpoint_config: dict | None = None,
        progress: bool = True, on_epoch: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
    """Train with early stopping on validation weighted F1; returns history, best metrics and val predictions.

    With ``run_dir``, ``history.csv`` is rewritten after the first epoch, every :data:`SAVE_EVERY_S` seconds and
    at the end, and ``checkpoint/`` each time validation weighted F1 improves (the model's best state is also
    restored into ``model`` at the end). With a checkpoint config, the whole training state (model, optimiser,
    scheduler, loss state, RNG and shuffling states, early stopping counters, history) is saved to
    ``resume_state.pt`` on the same cadence and removed when training ends; ``resume=True`` continues from it,
    giving the same result as an uninterrupted run.
    """
    if cfg.scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}")
    seed_everything(cfg.seed)
    acc = _accelerator(cfg.mixed_precision)
    train_loader = make_loader(train_ds, cfg.batch_size, True, cfg.seed, cfg.sampler)
    shuffle_gen = train_loader.msa_generator
    val_loader = make_loader(val_ds, max(cfg.batch_size, 256), False, cfg.seed)
    # fused AdamW: one kernel for all parameters instead of a dozen small ops per tensor (~8% of a head's epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=True)
    total = max(1, cfg.num_epochs * math.ceil(len(train_ds) / cfg.batch_size))
    scheduler = make_scheduler(optimizer, cfg, total)
    model, optimizer, train_loader, val_loader, scheduler = acc.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    loss_fn = loss_fn.to(acc.device)
    run_dir = Path(run_dir) if run_dir is not None else None
    y_val = val_ds.labels.numpy() if getattr(val_ds, "labels", None) is not None else None

    # the best epoch's extras: validation metrics, probabilities and row order, and weights
    best = {"state": None, "metrics": None, "proba": None, "index": None}
    loop = LoopState(best_score=-1.0, best_epoch=-1)
    if run_dir is not None and acc.is_main_process:  # leftovers of a run killed while writing
        from msa.io import remove_stale_temps

        remove_stale_temps(run_dir, dir_prefixes=(".checkpoint.",))
    keep_state = run_dir is not None and checkpoint_config is not None and acc.is_main_process
    if resume and run_dir is not None:
        loop = _resume(run_dir, cfg, acc.unwrap_model(model), optimizer, scheduler, loss_fn, shuffle_gen, best) or loop
    bar = tqdm(total=cfg.num_epochs, desc="epochs", unit="epoch", disable=None if progress else True,
               initial=loop.next_epoch - 1)
    task = _Classification(acc, model, loss_fn, optimizer, scheduler, train_loader, val_loader, y_val, labels, cfg,
                           run_dir, checkpoint_config, keep_state, shuffle_gen, best, bar)
    loop = run_epochs(task, cfg.num_epochs, cfg.patience, state=loop, on_epoch=on_epoch)
    bar.close()
    if run_dir is not None and acc.is_main_process:
        write_csv(run_dir / "history.csv", pd.DataFrame(loop.history))
    if keep_state:
        (run_dir / RESUME_FILE).unlink(missing_ok=True)
    model = acc.unwrap_model(model, keep_fp32_wrapper=False)  # later predictions in float32, as from its checkpoint
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"history": loop.history, "best_epoch": loop.best_epoch, "best_metrics": best["metrics"],
            "val_proba": best["proba"], "val_index": best["index"], "model": model}


def _resume(run_dir: Path, cfg: TrainConfig, model, optimizer, scheduler, loss_fn, shuffle_gen,
            best: dict) -> LoopState | None:
    """Restore the last epoch's training state from ``run_dir`` (weights, optimiser, schedule, loss state, RNG and
    shuffling, the best epoch's extras into ``best``); the loop state to continue from, or None to start over."""
    state = load_resume_state(run_dir)
    if state is None:
        return None
    if state.get("config") != cfg.as_dict():
        log.warning("%s holds the state of a run with other settings: training starts over", run_dir)
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    loss_fn.load_state_dict(state["loss"])
    shuffle_gen.set_state(state["shuffle"])
    _set_rng_state(state["rng"])
    b = state["best"]
    best.update(metrics=b["metrics"], state=b["state"], proba=b["proba"].numpy() if b["proba"] is not None else None,
                index=b["index"].numpy() if b["index"] is not None else None)
    log.info("resuming %s after epoch %d (best epoch %d)", run_dir, state["epoch"], int(b["epoch"]))
    return LoopState(history=list(state["history"]), stale=int(state["stale"]), next_epoch=int(state["epoch"]) + 1,
                     best_score=float(b["score"]), best_epoch=int(b["epoch"]))


def _step_functions(acc, model, optimizer, scheduler) -> tuple[Callable[[float], object], Callable[[], None]]:
    """``(clip(max_norm), step())``: gradient clipping, then the optimiser's and the schedule's step, as Accelerate
    does them. In one process without a gradient scaler (the CPU, one GPU in float32 or bf16) Accelerate's
    wrappers only forward to torch's ``clip_grad_norm_`` and to the wrapped optimiser and schedule, after checks
    that cost more than the step of a small head (two package look-ups per step for an optional optimiser), so
    these call torch directly: the same operations in the same order, the same weights bit for bit (a test trains
    both ways)."""
    from accelerate.utils import DistributedType

    plain = (acc.distributed_type == DistributedType.NO and acc.num_processes == 1
             and getattr(acc, "scaler", None) is None and hasattr(optimizer, "optimizer")
             and hasattr(scheduler, "scheduler"))
    if not plain:
        def step() -> None:
            optimizer.step()
            scheduler.step()

        return (lambda max_norm: acc.clip_grad_norm_(model.parameters(), max_norm)), step
    params = list(model.parameters())
    inner_opt, inner_sched = optimizer.optimizer, scheduler.scheduler

    def plain_step() -> None:
        inner_opt.step()
        inner_sched.step()

    return (lambda max_norm: torch.nn.utils.clip_grad_norm_(params, max_norm)), plain_step


class _Classification:
    """:func:`fit`'s adapter for :func:`msa.loop.run_epochs`: one epoch of the head, scored by validation
    weighted F1 (minus the training loss without validation labels); the best epoch's weights, metrics and
    probabilities are kept, and its checkpoint written."""

    def __init__(self, acc, model, loss_fn, optimizer, scheduler, train_loader, val_loader, y_val, labels, cfg,
                 run_dir, checkpoint_config, keep_state, shuffle_gen, best, bar):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.saved_at = None  # time.monotonic() of the last history / resume-state write
        self.clip, self.step = _step_functions(acc, model, optimizer, scheduler)

    def run_epoch(self, epoch: int) -> tuple[dict, float]:
        from msa.metrics import classification_metrics

        acc, model, loss_fn, cfg = self.acc, self.model, self.loss_fn, self.cfg
        model.train()
        loss_fn.train()
        t0, total_loss, seen = time.time(), 0.0, 0
        for batch in self.train_loader:
            self.optimizer.zero_grad(set_to_none=True)
            with acc.autocast():
                loss = loss_fn(_forward(model, batch), batch["label"])
            acc.backward(loss)
            if cfg.grad_clip:
                self.clip(cfg.grad_clip)
            self.step()
            total_loss += float(loss.detach()) * len(batch["label"])
            seen += len(batch["label"])
        loss_fn.eval()
        with full_precision(model):
            proba, index = predict_proba(model, self.val_loader, acc)
        order = np.argsort(index)
        self.proba, self.index = proba[order], index[order]
        row = {"epoch": epoch, "train_loss": total_loss / max(1, seen), "lr": self.scheduler.get_last_lr()[0],
               "seconds": round(time.time() - t0, 3)}
        self.metrics = {}
        if self.y_val is not None and len(self.proba):
            with torch.no_grad():
                val_loss = float(loss_fn(torch.log(torch.from_numpy(self.proba).clamp_min(1e-12)).to(acc.device),
                                         torch.from_numpy(self.y_val).to(acc.device)))
            self.metrics = classification_metrics(self.y_val, self.proba.argmax(1), self.proba,
                                                  labels=tuple(self.labels))
            row.update(val_loss=val_loss, **{k: v for k, v in self.metrics.items() if isinstance(v, (int, float))})
            return row, self.metrics["weighted_f1"]
        return row, -row["train_loss"]

    def keep(self, epoch: int, row: dict, score: float) -> None:
        unwrapped = self.acc.unwrap_model(self.model)
        self.best.update(metrics=self.metrics, proba=self.proba, index=self.index, state=snapshot(unwrapped))
        if self.run_dir is not None and self.checkpoint_config is not None and self.acc.is_main_process:
            save_checkpoint(self.run_dir / "checkpoint", unwrapped, self.checkpoint_config, loss_fn=self.loss_fn)

    def end_epoch(self, epoch: int, row: dict, state: LoopState) -> None:
        now = time.monotonic()
        if self.saved_at is None or now - self.saved_at >= SAVE_EVERY_S:  # see SAVE_EVERY_S
            self.saved_at = now
            if self.run_dir is not None and self.acc.is_main_process:
                write_csv(self.run_dir / "history.csv", pd.DataFrame(state.history))
            if self.keep_state:
                _save_resume_state(self.run_dir, self.cfg, epoch, self.acc.unwrap_model(self.model), self.optimizer,
                                   self.scheduler, self.loss_fn, self.shuffle_gen, state, self.best)
        self.bar.update()
        self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", wf1=f"{row.get('weighted_f1', float('nan')):.3f}")


def _save_resume_state(run_dir: Path, cfg: TrainConfig, epoch: int, model, optimizer, scheduler, loss_fn,
                       shuffle_gen: torch.Generator, loop: LoopState, best: dict) -> None:
    from msa.io import atomic_path

    state = {"config": cfg.as_dict(), "epoch": epoch, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "loss": loss_fn.state_dict(),
             "shuffle": shuffle_gen.get_state(), "rng": _rng_state(), "history": loop.history, "stale": loop.stale,
             "best": {"score": loop.best_score, "epoch": loop.best_epoch, "metrics": best["metrics"],
                      "state": best["state"],
                      "proba": torch.from_numpy(best["proba"]) if best["proba"] is not None else None,
                      "index": torch.from_numpy(np.asarray(best["index"])) if best["index"] is not None else None}}
    with atomic_path(Path(run_dir) / RESUME_FILE) as tmp:
        torch.save(state, tmp)
