"""The popularity-trend model (seed 003, run_trend.py) and its training: every post's frozen text and image
features projected and fused, each day the mean of its posts' fused vectors (+ log1p post count) with the numeric
branch concatenated, an LSTM/GRU over the window's days and a head; trained per (row, seed), the best epoch picked
on validation, in a process pool on the CPU."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from msa.loop import run_epochs
from tasks.trend.data import CLASS_NAMES, CLASS_VALUES, window_days

log = logging.getLogger("trend")


@dataclass
class DayData:
    """Everything a window model reads, as tensors on one device."""

    post_day: object  # (P,) long
    feats: dict  # modality -> (P, D)
    count: object  # (n_days,) float: posts per day
    has: object  # (n_days,) float: 1 when the day has a post
    count_z: object  # (n_days,) float: log1p(count), standardised on training days
    numeric: object  # (n_days, C) float: log1p(day aggregate), NaN = missing

    @property
    def n_days(self) -> int:
        return int(self.count.shape[0])


def _build_net(**kw):
    import torch
    from torch import nn

    from msa.fusions import Dropout, ModalitySpec, MultimodalClassifier, SideBranch

    class TrendNet(nn.Module):
        """posts -> projection + fusion -> day mean (+ log post count) [+ numeric branch] -> day vector (zeroed
        on days without posts, + has-posts flag) -> LSTM/GRU over the window -> head on the last state."""

        def __init__(self, post_dims: dict | None, fusion: str, hidden: int, dropout: float, side: dict | None,
                     rnn: str, num_outputs: int):
            super().__init__()
            self.post = None
            in_dim = 1  # log1p(post count)
            if post_dims:
                specs = [ModalitySpec(m, int(d)) for m, d in post_dims.items()]
                self.post = MultimodalClassifier(specs, fusion, num_outputs=1, hidden=hidden, dropout=dropout)
                self.post.head = nn.Identity()  # only its projections + fusion are used (fuse())
                in_dim += self.post.fusion.out_dim
            self.side = SideBranch(**side, hidden=hidden, dropout=dropout) if side else None
            if self.side is not None:
                in_dim += hidden
            self.day = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), Dropout(dropout))
            self.rnn = (nn.LSTM if rnn == "lstm" else nn.GRU)(hidden + 1, hidden, batch_first=True)
            self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), Dropout(dropout),
                                      nn.Linear(hidden, num_outputs))

        def day_table(self, dd: DayData, needed=None):
            """(n_days, hidden + 1) day vectors; only the posts of ``needed`` days (bool mask) are fused."""
            parts = []
            if self.post is not None:
                sel = needed[dd.post_day] if needed is not None else slice(None)
                fused = self.post.fuse({m: x[sel] for m, x in dd.feats.items()})
                table = fused.new_zeros(dd.n_days, fused.shape[1]).index_add_(0, dd.post_day[sel], fused)
                parts.append(table / dd.count.clamp_min(1.0).unsqueeze(1))
            if self.side is not None:
                parts.append(self.side(dd.numeric))
            parts.append(dd.count_z.unsqueeze(1))
            x = self.day(torch.cat(parts, dim=1)) * dd.has.unsqueeze(1)  # a day without posts: zero input
            return torch.cat([x, dd.has.unsqueeze(1)], dim=1)

        def forward(self, windows, dd: DayData, table=None):
            if table is None:
                needed = torch.zeros(dd.n_days, dtype=torch.bool, device=windows.device)
                needed[windows.reshape(-1)] = True
                table = self.day_table(dd, needed)
            out, _ = self.rnn(table[windows])
            return self.head(out[:, -1])

    return TrendNet(**kw)


# ---------------------------------------------------------------------------------------------- metrics
def regression_scores(y_true, y_pred) -> dict:
    yt, yp = np.asarray(y_true, float), np.asarray(y_pred, float)
    err = yp - yt
    sst = float(((yt - yt.mean()) ** 2).sum())
    corr = float(np.corrcoef(yt, yp)[0, 1]) if len(yt) > 1 and np.ptp(yt) > 0 and np.ptp(yp) > 0 else float("nan")
    return {"MAE": float(np.abs(err).mean()), "RMSE": float(math.sqrt((err ** 2).mean())), "Corr": corr,
            "R2": float(1 - (err ** 2).sum() / sst) if sst > 0 else float("nan")}


def classification_scores(y_true, y_pred) -> dict:
    from msa.metrics import classification_metrics

    m = classification_metrics(np.asarray(y_true), np.asarray(y_pred), labels=CLASS_NAMES)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "confusion_matrix": m["confusion_matrix"]}



# ------------------------------------------------------------------------------------------------ training
@dataclass
class Problem:
    """The prepared task: day tensors, window day-indices and targets per split."""

    task: str
    dd: DayData
    windows: dict  # split -> (N, W) long
    y: dict  # split -> (N,) float (regression, original units) or long class index
    y_mean: float = 0.0
    y_std: float = 1.0
    side_stats: dict | None = None
    post_dims: dict | None = None


def train_one(row: str, seed: int, prob: Problem, args, device, progress: bool = True) -> dict:
    """Train one row with one seed; returns the best-on-validation epoch's val metrics and test predictions."""
    import torch
    from tqdm import tqdm

    from msa.trainer import seed_everything

    seed_everything(seed)
    reg = prob.task == "regression"
    net = _build_net(post_dims=prob.post_dims if row in ("image_text", "full") else None, fusion=args.fusion,
                     hidden=args.hidden, dropout=args.dropout,
                     side=prob.side_stats if row in ("numeric", "full") else None, rnn=args.rnn,
                     num_outputs=1 if reg else len(CLASS_VALUES)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    y_fit, loss_fn = _fit_target(prob, args.loss)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=args.epochs, desc=f"{row} s{seed}", unit="ep", leave=False, disable=None if progress else True)
    net.train()
    task = _TrendTask(net, opt, loss_fn, prob, y_fit, args, gen, bar, device)
    loop = run_epochs(task, args.epochs, args.patience, tol=1e-9)
    bar.close()
    net.load_state_dict(task.best_state)
    test_out = _predict(net, prob, "test")
    return {"best_epoch": loop.best_epoch, "epochs_run": len(loop.history), "val": task.best_val,
            "test": _score(prob, "test", test_out), "test_out": test_out, "history": loop.history}


class _TrendTask:
    """:func:`train_one`'s adapter for :func:`msa.loop.run_epochs`: one epoch over the training windows, scored
    by minus the validation MAE (regression) or macro F1 plus a thousandth of the accuracy (classification)."""

    def __init__(self, net, opt, loss_fn, prob: Problem, y_fit, args, gen, bar, device):
        import torch

        self.net, self.opt, self.loss_fn, self.prob, self.y_fit, self.gen, self.bar = (net, opt, loss_fn, prob,
                                                                                        y_fit, gen, bar)
        # a batch = batch_size / block random blocks of `block` consecutive windows: consecutive windows share
        # most of their days, so a step fuses the posts of ~(batch_size / block) * (block + window) days, not of
        # all days
        block = max(1, min(args.block, args.batch_size))
        self.blocks = list(torch.arange(len(prob.windows["train"])).split(block))
        self.per_batch = max(1, args.batch_size // block)
        self.device = device
        self.best_state, self.best_val, self.reg = None, None, prob.task == "regression"

    def run_epoch(self, epoch: int) -> tuple[dict, float]:
        import torch

        order = torch.randperm(len(self.blocks), generator=self.gen).tolist()
        batches = (torch.cat([self.blocks[j] for j in order[i:i + self.per_batch]]).to(self.device)
                   for i in range(0, len(order), self.per_batch))
        train_loss = _train_epoch(self.net, self.opt, self.loss_fn, batches, self.prob, self.y_fit)
        self.val = _score(self.prob, "val", _predict(self.net, self.prob, "val"))
        score = -self.val["MAE"] if self.reg else self.val["macro_f1"] + 1e-3 * self.val["accuracy"]
        self.score = score
        return {"epoch": epoch, "train_loss": train_loss,
                **{k: v for k, v in self.val.items() if k != "confusion_matrix"}}, score

    def keep(self, epoch: int, row: dict, score: float) -> None:
        self.best_state, self.best_val = copy.deepcopy(self.net.state_dict()), self.val

    def end_epoch(self, epoch: int, row: dict, state) -> None:
        self.bar.update()
        self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{-self.score if self.reg else self.score:.3f}",
                             best=state.best_epoch)


def _fit_target(prob: Problem, loss: str):
    """The training targets as fitted (regression: standardised) and the loss."""
    import torch

    y_train = prob.y["train"]
    if prob.task == "regression":
        return ((y_train - prob.y_mean) / prob.y_std).float(), torch.nn.L1Loss() if loss == "l1" else torch.nn.MSELoss()
    return y_train, torch.nn.CrossEntropyLoss()


def _train_epoch(net, opt, loss_fn, batches, prob: Problem, y_fit) -> float:
    """One pass over the training windows' ``batches`` (index tensors); returns the mean training loss."""
    import torch

    reg = prob.task == "regression"
    w_train = prob.windows["train"]
    total, seen = 0.0, 0
    for b in batches:
        out = net(w_train[b], prob.dd)
        loss = loss_fn(out.squeeze(1), y_fit[b]) if reg else loss_fn(out, y_fit[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        total += float(loss.detach()) * len(b)
        seen += len(b)
    return total / seen


def _predict(net, prob: Problem, split: str):
    """Regression: values in the original units; classification: class probabilities."""
    import torch

    net.eval()
    with torch.no_grad():
        out = net(prob.windows[split], prob.dd, table=net.day_table(prob.dd))
    net.train()
    if prob.task == "regression":
        return (out.squeeze(1) * prob.y_std + prob.y_mean).cpu().numpy()
    return out.softmax(1).cpu().numpy()


def _score(prob: Problem, split: str, out) -> dict:
    y = prob.y[split].cpu().numpy()
    if prob.task == "regression":
        return regression_scores(y, out)
    return classification_scores(y, out.argmax(1))


def _run_job(shared: dict, job: tuple[str, int]) -> tuple[tuple[str, int], dict]:
    """One (row, seed) training, in a worker process or inline (:func:`msa.workers.run_jobs`)."""
    import torch

    row, seed = job
    t0 = time.time()
    res = train_one(row, seed, shared["prob"], shared["args"], torch.device(shared["device"]),
                    progress=shared["inline"])
    res["seconds"] = round(time.time() - t0, 2)
    res.pop("history", None)
    return job, res


def run_all(jobs: list[tuple[str, int]], prob: Problem, args, device) -> list[tuple[tuple[str, int], dict]]:
    """Train every (row, seed): in ``--jobs`` processes with one torch thread each (CPU), else in this process
    (one thread as well, so that the result does not depend on --jobs)."""
    import os

    from msa.workers import run_jobs

    n_jobs = max(1, min(int(args.jobs), len(jobs), os.cpu_count() or 1)) if device.type == "cpu" else 1
    return run_jobs(_run_job, jobs, {"prob": prob, "args": args, "device": str(device) if n_jobs == 1 else "cpu"},
                    n_jobs=n_jobs, threads=1, inline_threads=1 if device.type == "cpu" else None,
                    desc="training runs")


def baseline(prob: Problem) -> dict:
    """The ``mean`` row: the training mean (regression) or the training majority class (classification)."""
    n_val, n_test = len(prob.y["val"]), len(prob.y["test"])
    if prob.task == "regression":
        m = float(prob.y["train"].mean())
        val_out, test_out = np.full(n_val, m), np.full(n_test, m)
        score = regression_scores
        val_pred, test_pred = val_out, test_out
    else:
        counts = np.bincount(prob.y["train"].cpu().numpy(), minlength=len(CLASS_VALUES))
        k = int(counts.argmax())
        test_out = np.zeros((n_test, len(CLASS_VALUES)))
        test_out[:, k] = 1.0
        score = classification_scores
        val_pred, test_pred = np.full(n_val, k), np.full(n_test, k)
    return {"best_epoch": 0, "epochs_run": 0, "val": score(prob.y["val"].cpu().numpy(), val_pred),
            "test": score(prob.y["test"].cpu().numpy(), test_pred), "test_out": test_out}




def run_rows(prob: Problem, rows: list[str], seeds: list[int], args, device) -> dict[str, dict[int, dict]]:
    """row -> seed -> result of :func:`baseline` (the mean row) or :func:`train_one` (the others)."""
    results: dict[str, dict[int, dict]] = {r: {} for r in rows}
    for s in seeds:
        if "mean" in rows:
            results["mean"][s] = {**baseline(prob), "seconds": 0.0}
    jobs = [(r, s) for r in rows if r != "mean" for s in seeds]
    for (r, s), res in run_all(jobs, prob, args, device):
        results[r][s] = res
    return results


# ------------------------------------------------------------------------------------------------ inputs
def post_features(posts, root, rows: list[str], args) -> tuple[dict, dict]:
    """modality -> (P, D) float pooled features of ``posts`` from the frozen backbones (cached), and the backbones'
    record; nothing when no row needs the posts."""
    from msa.experiment import load_backbones
    from msa.features import extract_features

    if not any(r in rows for r in ("image_text", "full")):
        return {}, {}
    tb, ib = load_backbones(args.text_backbone, args.image_backbone, args.text_pooling)
    fs = extract_features(posts["post_id"].tolist(), root / "data", tb, ib, args.cache_dir,
                          batch_size=args.feature_batch_size)
    for m, st in fs.stats.items():
        log.info("%s features: %d of %d computed, rest from cache %s", m, st["computed"], st["total"],
                 args.cache_dir)
    return {m: fs.pooled[m].float() for m in ("text", "image")}, fs.backbones


def usable_rows(rows: list[str], columns: list[str]) -> list[str]:
    """``rows`` less those with the numeric branch when posts.csv has no numeric column (logged)."""
    dropped = [r for r in rows if r in ("numeric", "full")] if not columns else []
    if dropped:
        log.warning("posts.csv has no numeric column: rows %s are left out", dropped)
    return [r for r in rows if r not in dropped]


def build_problem(task: str, posts, feats: dict, targets, n_days: int, columns: list[str], numeric_agg: str,
                  window: int, device) -> tuple[Problem, np.ndarray]:
    """The day tensors, the windows and targets per split on ``device``; also the posts per day."""
    import torch

    day = posts["day"].to_numpy().copy()
    count = np.bincount(day, minlength=n_days).astype(np.float32)
    train_days = np.array(sorted(window_days(targets.loc[targets["split"] == "train", "day"], window)))
    lc = np.log1p(count)
    mu, sd = float(lc[train_days].mean()), float(lc[train_days].std()) or 1.0
    numeric, side_stats = _day_numeric(posts, columns, numeric_agg, n_days, train_days, count)
    dd = DayData(post_day=torch.as_tensor(day, dtype=torch.long, device=device),
                 feats={m: x.to(device) for m, x in feats.items()},
                 count=torch.as_tensor(count, device=device), has=torch.as_tensor(count > 0, device=device).float(),
                 count_z=torch.as_tensor((lc - mu) / sd, dtype=torch.float32, device=device),
                 numeric=torch.as_tensor(numeric, dtype=torch.float32, device=device))
    windows, ys = _split_tensors(targets, task, window, device)
    y_tr = ys["train"].float()
    prob = Problem(task=task, dd=dd, windows=windows, y=ys, side_stats=side_stats,
                   y_mean=float(y_tr.mean()), y_std=float(y_tr.std()) if len(y_tr) > 1 else 1.0,
                   post_dims={m: int(x.shape[1]) for m, x in feats.items()} or None)
    if prob.y_std == 0 or not math.isfinite(prob.y_std):
        prob.y_std = 1.0
    return prob, count


def _day_numeric(posts, columns: list[str], agg_name: str, n_days: int, train_days, count):
    """(n_days, C) log1p counts aggregated per day (NaN = missing) and the numeric branch's statistics, fitted on
    the training days with posts (None without numeric columns)."""
    from msa.fusions import SideBranch

    if not columns:
        return np.zeros((n_days, 0)), None
    grouped = np.log1p(posts[columns].astype(float)).groupby(posts["day"])
    agg = getattr(grouped, agg_name)(**({"min_count": 1} if agg_name == "sum" else {}))
    numeric = agg.reindex(range(n_days)).to_numpy(dtype=np.float64)
    fit_days = [d for d in train_days if count[d] > 0]
    return numeric, SideBranch.fit(numeric[fit_days], columns)


def _split_tensors(targets, task: str, window: int, device) -> tuple[dict, dict]:
    """split -> (N, window) day indices of its windows, and split -> its targets (regression: values; classification:
    class indices 0/1/2 for -1/0/1)."""
    import torch

    windows, ys = {}, {}
    offsets = np.arange(-window + 1, 1)
    for s in ("train", "val", "test"):
        t = targets[targets["split"] == s]
        windows[s] = torch.as_tensor(t["day"].to_numpy()[:, None] + offsets[None, :], dtype=torch.long,
                                     device=device)
        if task == "regression":
            ys[s] = torch.tensor(t["value"].to_numpy(dtype=np.float32), device=device)
        else:
            ys[s] = torch.tensor(t["trend"].to_numpy(dtype=np.int64) + 1, device=device)  # -1/0/1 -> 0/1/2
    return windows, ys
