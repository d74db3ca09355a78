"""FAD's search (``search.strategy: darts``): bi-level DARTS of the alphas of an FCOS / RetinaNet head.

The training images the search may use (``train`` minus the held-out ``search`` split, i.e. all of
``train`` when ``data.search_fraction`` is 0) are cut into two fixed halves. Each step:

1. alphas (Adam, lr 3e-4, betas (0.5, 0.999), wd 1e-3) on a batch of the *arch* half: first order, the
   gradient of the loss at the current weights; or second order, DARTS' unrolled gradient with the
   finite-difference Hessian-vector term divided by ``2 * eps`` (pt.darts and FAD multiply by it);
2. weights (SGD, clipped) on a batch of the *weight* half. The alphas are not in the SGD optimiser.

FAD's released code takes its first-order gradient on a stale copy of the network and lets its weight
SGD step the alphas too; neither happens here (``tests/test_fad.py``).

``work_dir/search/``: ``alphas.jsonl`` (per epoch: alphas, their softmax, the derived genotypes),
``genotype.log`` (FAD's two lines, box then cls), ``genotype.json``, ``log.jsonl`` (losses),
``ckpt/last.pt`` (every ``ckpt_every_steps`` and at the end of each epoch; a rerun resumes from it).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch import Tensor, nn

from ..config import DartsConfig, ExperimentConfig
from ..data.dataset import collate_detection
from ..data.split import split_train_search
from ..data.transforms import at_train_size, targets_to, to_model_input
from ..errors import CheckpointError, ConfigError, DataError
from ..models.detectors import training_input_size
from ..models.families import DETECTORS, family_named
from ..models.heads.fad import ALPHA_COLUMNS, FADTowers, format_genotype, write_genotypes
from ..files import append_jsonl, trim_jsonl
from ..progress import progress_bar
from ..threads import govern, loader_workers, set_torch_threads
from ..train.checkpoint import load_checkpoint, load_model_weights, rng_state, save_checkpoint, set_rng_state
from ..signals import serve_through_sigterm
from ..train.loop import EpochSampler, RunSettings, StopAfterStep, TrainingDiverged, resolve_device, start_note_of
from ..train.optim import build_scheduler, clip_grad_norm, momentum_sgd, param_groups
from ..train.resume import NOT_TRAINING, refuse_changed_run, resolved_paths
from ..workdir import ALPHAS_LOG, GENOTYPE_JSON, GENOTYPE_LOG, LOG_FILE, SEARCH, WorkDir, WriterLock, checkpoint_in  # noqa: F401

LossFn = Callable[[Any], dict[str, Tensor]]


def _total(losses: dict[str, Tensor]) -> Tensor:
    return sum(losses.values())


class Bilevel:
    """One DARTS iteration on any model: ``loss_fn(batch)`` -> dict of losses (summed).

    ``weights`` / ``alphas``: disjoint parameter lists; ``w_optim`` an SGD over exactly ``weights``
    (its lr, momentum and weight decay define the virtual step of the second order), ``a_optim`` over ``alphas``.
    """

    def __init__(self, loss_fn: LossFn, weights: Sequence[nn.Parameter], alphas: Sequence[nn.Parameter],
                 w_optim: torch.optim.SGD, a_optim: torch.optim.Optimizer, order: str = "first",
                 grad_clip: float | None = None):
        if order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', got {order!r}")
        self.loss_fn, self.order, self.grad_clip = loss_fn, order, grad_clip
        self.weights, self.alphas = list(weights), list(alphas)
        ids = {id(a) for a in self.alphas}
        if any(id(p) in ids for g in w_optim.param_groups for p in g["params"]):
            raise ValueError("the weight optimiser holds architecture parameters (alphas)")
        self.w_optim, self.a_optim = w_optim, a_optim
        self._group = {id(p): g for g in w_optim.param_groups for p in g["params"]}

    def step(self, weight_batch, arch_batch) -> dict[str, float]:
        """Alphas on ``arch_batch``, then weights on ``weight_batch``."""
        stats = self.arch_step(arch_batch, weight_batch)
        stats.update(self.weight_step(weight_batch))
        return stats

    def arch_step(self, arch_batch, weight_batch=None) -> dict[str, float]:
        if self.order == "first":
            loss = _total(self.loss_fn(arch_batch))
            grads = torch.autograd.grad(loss, self.alphas, allow_unused=True)
        else:
            if weight_batch is None:
                raise ValueError("the second-order alpha step needs a weight batch for the virtual step")
            loss, grads = self.unrolled_alpha_grads(weight_batch, arch_batch)
        _check_finite(loss, "architecture")
        for a, g in zip(self.alphas, grads):
            a.grad = torch.zeros_like(a) if g is None else g.detach()
        self.a_optim.step()
        return {"arch_loss": float(loss.detach())}

    def weight_step(self, weight_batch) -> dict[str, float]:
        self.w_optim.zero_grad(set_to_none=True)
        losses = self.loss_fn(weight_batch)
        loss = _total(losses)
        _check_finite(loss, "weight", losses)
        loss.backward(inputs=self.weights)
        if self.grad_clip:
            clip_grad_norm(self.weights, self.grad_clip)
        self.w_optim.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "loss": float(loss.detach())}

    # ------------------------------------------------------------------------------ second order
    def unrolled_alpha_grads(self, weight_batch, arch_batch) -> tuple[Tensor, list[Tensor]]:
        """DARTS eq. 7-8: grad_a L_val(w', a) - xi * H v, with w' = w - xi (m + grad_w L_trn(w, a) + wd w)
        (the SGD step the weights are about to take), v = grad_w' L_val(w', a) and H v = (grad_a L_trn(w + eps v)
        - grad_a L_trn(w - eps v)) / (2 eps), eps = 0.01 / ||v||. xi is the weights' current lr."""
        ws = self.weights
        g_trn = torch.autograd.grad(_total(self.loss_fn(weight_batch)), ws, allow_unused=True)
        backup = [w.detach().clone() for w in ws]
        with torch.no_grad():
            for w, g in zip(ws, g_trn):
                group = self._group[id(w)]
                step = w * group["weight_decay"]
                if g is not None:
                    step += g
                buf = self.w_optim.state.get(w, {}).get("momentum_buffer")
                if buf is not None:
                    step += group["momentum"] * buf
                w.sub_(group["lr"] * step)
        loss = _total(self.loss_fn(arch_batch))
        grads = torch.autograd.grad(loss, [*self.alphas, *ws], allow_unused=True)
        d_alpha, v = grads[: len(self.alphas)], grads[len(self.alphas):]
        self._restore(backup)
        hv = self.hessian_vector(v, weight_batch, backup)
        xi = self.w_optim.param_groups[0]["lr"]
        out = []
        for a, da, h in zip(self.alphas, d_alpha, hv):
            da = torch.zeros_like(a) if da is None else da
            out.append(da - xi * h)
        return loss, out

    def hessian_vector(self, v: Sequence[Tensor | None], weight_batch, backup: Sequence[Tensor]) -> list[Tensor]:
        """d/da (v . grad_w L_trn(w, a)) by central differences; the weights are ``backup`` again after."""
        v = [torch.zeros_like(w) if d is None else d for w, d in zip(self.weights, v)]
        norm = torch.cat([d.flatten() for d in v]).norm()
        if float(norm) == 0.0:
            return [torch.zeros_like(a) for a in self.alphas]
        eps = 0.01 / norm
        sides = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, b, d in zip(self.weights, backup, v):
                    w.copy_(b + sign * eps * d)
            g = torch.autograd.grad(_total(self.loss_fn(weight_batch)), self.alphas, allow_unused=True)
            sides.append([torch.zeros_like(a) if x is None else x for a, x in zip(self.alphas, g)])
        self._restore(backup)
        return [(p - n) / (2 * eps) for p, n in zip(*sides)]

    def _restore(self, backup: Sequence[Tensor]) -> None:
        with torch.no_grad():
            for w, b in zip(self.weights, backup):
                w.copy_(b)


def _check_finite(loss: Tensor, which: str, losses: dict | None = None) -> None:
    if not torch.isfinite(loss.detach()):
        terms = {k: float(v.detach()) for k, v in (losses or {}).items()}
        raise TrainingDiverged(f"the {which} loss is not finite {terms or float(loss)}: lower search.darts.lr or raise "
                               "search.darts.scheduler.warmup_steps, then rerun to resume from the last checkpoint")


def split_halves(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(weight half, arch half) of ``range(n)``: disjoint, deterministic (``split_train_search`` at 0.5)."""
    if n < 2:
        raise DataError(f"a DARTS search needs at least 2 training images (one per half), got {n}")
    return split_train_search(n, 0.5, seed)


def build_optimizers(model: nn.Module, alphas: Sequence[nn.Parameter], d) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    """SGD over every trainable parameter but the alphas (no decay on norms and biases), Adam over the
    alphas. ``d``: nasdet.config.DartsConfig."""
    ids = {id(a) for a in alphas}
    groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]}
              for g in param_groups(model, d.weight_decay, norm_bias_decay=False)]
    w_optim = momentum_sgd([g for g in groups if g["params"]], lr=d.lr, momentum=d.momentum)
    a_optim = torch.optim.Adam(list(alphas), lr=d.alpha_lr, betas=tuple(d.alpha_betas), weight_decay=d.alpha_weight_decay)
    return w_optim, a_optim


def detection_loss(model: nn.Module, device: torch.device) -> LossFn:
    """A batch ``(images, targets)`` of the data loader -> the detector's training losses."""
    def loss(batch):
        images, targets = batch
        return model(to_model_input(images, device), targets_to(targets, device))
    return loss


class DartsSearch:
    """FAD's bi-level search of the alphas of ``model``'s FAD towers (a detector built with
    ``fad_search=True``): weights on ``weight_set``, alphas on ``arch_set``, per ``darts``; ``settings``
    gives the device, threads, seed, loader workers and the config stored in checkpoints. ``run()`` trains
    to the end (resuming from ``out_dir/ckpt/last.pt``) and writes the genotypes into ``out_dir``.
    ``DartsSearch.from_config(cfg)`` builds it from a run's config (the two halves, the search detector)."""

    def __init__(self, darts: DartsConfig, model: nn.Module, weight_set, arch_set, out_dir: str | Path,
                 settings: RunSettings, console: Console | None = None):
        self.d, self.settings = darts, settings
        self.console = console or Console()
        self.out_dir = Path(out_dir)
        self.ckpt_path = checkpoint_in(self.out_dir)
        towers = [m for m in model.modules() if isinstance(m, FADTowers)]
        if not towers:
            raise ConfigError("a darts search needs a detector with FAD's search head "
                              "(build_detector(..., fad_search=True))")
        set_torch_threads(settings.train.threads)
        self.device = resolve_device(settings.train.device)
        self.model = model.to(self.device)
        if settings.train.channels_last:  # as Trainer: NHWC convolutions are faster on CPUs (benchmarks/README)
            self.model.to(memory_format=torch.channels_last)
        size = training_input_size(self.model)  # the loader resizes to it, before the colour ops
        self.weight_set, self.arch_set = at_train_size(weight_set, size), at_train_size(arch_set, size)
        self.towers = towers[0]
        alphas = self.towers.arch_parameters()
        self.w_optim, self.a_optim = build_optimizers(self.model, alphas, self.d)
        weights = [p for g in self.w_optim.param_groups for p in g["params"]]
        self.bilevel = Bilevel(detection_loss(self.model, self.device), weights, alphas, self.w_optim, self.a_optim,
                               self.d.order, self.d.grad_clip)
        bs = self.d.batch_size
        self.steps_per_epoch = max(min(len(self.weight_set), len(self.arch_set)) // bs, 1)
        self.total_steps = self.steps_per_epoch * self.d.epochs
        self.scheduler = build_scheduler(self.w_optim, self.d.scheduler, self.total_steps)
        seed = settings.seed
        self.samplers = (EpochSampler(len(self.weight_set), seed), EpochSampler(len(self.arch_set), seed + 1))
        self.step = self.epoch = self.batch_in_epoch = 0
        self._resumed: bool | None = None
        self.start_note = "from scratch"  # where the weights start; from_config says what the config loaded

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, work_dir: str | Path | None = None,
                    console: Console | None = None) -> "DartsSearch":
        """The search of ``cfg`` into ``work_dir/search``: the two fixed halves of the images the search may
        use, and the config's FCOS / RetinaNet with FAD's search head."""
        from ..data.build import build_datasets
        from ..models import build_detector

        if not family_named(cfg.model.detector).fad_heads:
            able = " or ".join(sorted(n for n in DETECTORS if family_named(n).fad_heads))
            raise ConfigError(f"search.strategy darts searches FAD heads: model.detector must be {able}, "
                              f"not {cfg.model.detector!r}")
        torch.manual_seed(cfg.seed)  # before the detector is built: its init is the run's
        pool = build_datasets(cfg, need=("train",))["supernet_train"]
        w_idx, a_idx = split_halves(len(pool), cfg.data.split_seed)
        model = build_detector(cfg.model, num_classes=pool.num_classes, fad_search=True)
        search = cls(cfg.search.darts, model, pool.subset(w_idx), pool.subset(a_idx),
                     WorkDir.of(cfg, work_dir).search.root, RunSettings.of(cfg), console)
        search.start_note = start_note_of(cfg)  # build_detector loaded model.backbone.checkpoint / pretrained
        return search

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        box, cls = self.towers.genotypes()
        return {"model": self.model.state_dict(), "w_optim": self.w_optim.state_dict(),
                "a_optim": self.a_optim.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "total_steps": self.total_steps, "rng": rng_state(), "config": dict(self.settings.record),
                "paths": resolved_paths(self.settings.record), "start": self.start_note,
                "genotype": {"box": format_genotype(box), "cls": format_genotype(cls)}}

    def save(self) -> None:
        save_checkpoint(self.state_dict(), self.ckpt_path)

    def prepare(self) -> bool:
        """Take ``search/``'s writer lock and resume from ``ckpt/last.pt`` if there is one (once); errors
        before anything is written. The lock goes with this object (or the process)."""
        if self._resumed is None:
            self.lock = WriterLock(self.out_dir).acquire()
            try:
                self._resumed = self.try_resume()
            except BaseException:
                self.lock.release()
                raise
        return self._resumed

    def try_resume(self) -> bool:
        if not self.ckpt_path.is_file():  # a search stopped before its first checkpoint: its lines are logged again
            trim_jsonl(self.out_dir / LOG_FILE, "step", 0)
            self._trim_alpha_log(0)
            return False
        state = load_checkpoint(self.ckpt_path)
        refuse_changed_run(self.ckpt_path, state.get("config"), self.settings.record,
                           ("seed", "data", "model", "search.darts"),
                           (NOT_TRAINING - {"data.search_fraction", "data.split_seed"})
                           | {"search.darts.max_steps", "search.darts.ckpt_every_steps", "search.darts.log_every_steps"},
                           state.get("paths"))
        if state.get("total_steps") != self.total_steps:
            raise CheckpointError(f"{self.ckpt_path} was written for {state.get('total_steps')} total steps, this config gives "
                             f"{self.total_steps} (epochs, batch size or data changed); use a new work dir or delete it")
        load_model_weights(self.model, state, source=str(self.ckpt_path))
        self.w_optim.load_state_dict(state["w_optim"])
        self.a_optim.load_state_dict(state["a_optim"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        set_rng_state(state["rng"])
        self._trim_alpha_log(self.epoch)
        trim_jsonl(self.out_dir / LOG_FILE, "step", self.step)  # steps after the checkpoint are logged again
        return True

    # ------------------------------------------------------------------------------------- logs
    def _append(self, name: str, record: dict) -> None:
        append_jsonl(self.out_dir / name, record)

    def _trim_alpha_log(self, epoch: int) -> None:
        """Drop records of epochs after the checkpoint (written before a crash that lost their checkpoint)."""
        trim_jsonl(self.out_dir / ALPHAS_LOG, "epoch", epoch)

    def record_epoch(self, losses: dict[str, float], partial: bool = False) -> dict:
        """Append the alphas and genotypes to ``alphas.jsonl``; rewrite ``genotype.log`` / ``genotype.json``."""
        box, cls = self.towers.genotypes()
        t = self.towers
        record = {"epoch": self.epoch, "step": self.step, "partial": partial, "time": round(time.time(), 1),
                  "columns": list(ALPHA_COLUMNS),
                  "alphas": {"box": [a.detach().cpu().tolist() for a in t.alpha_box],
                             "cls": [a.detach().cpu().tolist() for a in t.alpha_cls]},
                  "softmax": {"box": [a.detach().softmax(-1).cpu().tolist() for a in t.alpha_box],
                              "cls": [a.detach().softmax(-1).cpu().tolist() for a in t.alpha_cls]},
                  "genotype": {"box": format_genotype(box), "cls": format_genotype(cls)},
                  "mean_losses": {k: round(v, 5) for k, v in losses.items()}, "start": self.start_note}
        self._append(ALPHAS_LOG, record)
        write_genotypes(self.out_dir, box, cls)
        return record

    # -------------------------------------------------------------------------------------- run
    def _loader(self, dataset, sampler, which: int) -> torch.utils.data.DataLoader:
        bs = self.d.batch_size
        workers = loader_workers(self.settings.num_workers, self.device)
        # the loader's own generator: creating an iterator draws a seed from it, and a draw from the global one
        # (made at the epoch's start, or where a resumed search starts) moved every later augmentation of a search
        # resumed mid-epoch away from the uninterrupted one's
        generator = torch.Generator().manual_seed((self.settings.seed * 1_000_003 + self.epoch) * 2 + which)
        return torch.utils.data.DataLoader(dataset, batch_size=bs, sampler=sampler, num_workers=workers,
                                           generator=generator,
                                           collate_fn=collate_detection, drop_last=len(dataset) >= bs,
                                           pin_memory=self.device.type == "cuda",
                                           worker_init_fn=serve_through_sigterm if workers else None)

    def _stop_saved(self, stop: StopAfterStep, saved: bool = False) -> None:
        """Save ``last.pt`` at the step reached (unless just ``saved``), say so, and stop."""
        if not saved:
            self.save()
        self.console.print(f"{stop.asked}: stopped after step {self.step}, saved in {escape(str(self.ckpt_path))}; "
                           "the same command continues from it (a second signal stops at once, losing the steps "
                           "since the last checkpoint)")
        raise KeyboardInterrupt

    def run(self) -> dict:
        resumed = self.prepare()
        limit = min(self.total_steps, self.d.max_steps or self.total_steps)
        self.console.print(
            f"[bold]darts search[/] {escape(str(self.out_dir))}: {len(self.weight_set)} weight + {len(self.arch_set)} arch images, "
            f"{self.steps_per_epoch} steps/epoch x {self.d.epochs} epochs, batch {self.d.batch_size}, "
            f"{self.d.order} order, on {self.device}, {f'resumed at step {self.step}' if resumed else escape(self.start_note)}")
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        progress = progress_bar(self.console, TextColumn("[bold blue]search epoch {task.fields[epoch]}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(),
                                TimeRemainingColumn(), label="darts search step", every=self.d.log_every_steps,
                                fields=lambda f: f"epoch {f['epoch']}, loss {f['loss']:.3f}")
        # Ctrl-C / a scheduler's SIGTERM: the step under way ends, last.pt is saved at it and the rerun continues
        # there (up to ckpt_every_steps, 500 in FAD's recipe, were lost without a word)
        with progress, StopAfterStep() as stop:
            task = progress.add_task("", total=limit, completed=self.step, epoch=self.epoch, loss=float("nan"))
            while self.step < limit and self.epoch < self.d.epochs:
                start = self.batch_in_epoch * self.d.batch_size
                for sampler in self.samplers:
                    sampler.set_epoch(self.epoch, start)
                for wb, ab in zip(self._loader(self.weight_set, self.samplers[0], 0),
                                  self._loader(self.arch_set, self.samplers[1], 1)):
                    govern()
                    stats = self.bilevel.step(wb, ab)
                    self.scheduler.step()
                    self.step += 1
                    self.batch_in_epoch += 1
                    n += 1
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                    if self.step % self.d.log_every_steps == 0 or self.step == limit:
                        self._append(LOG_FILE, {"step": self.step, "epoch": self.epoch, "time": round(time.time(), 1),
                                                   "lr": self.w_optim.param_groups[0]["lr"],
                                                   **{k: round(v, 5) for k, v in stats.items()}})
                    progress.update(task, completed=self.step, epoch=self.epoch, loss=stats["loss"])
                    epoch_done = self.batch_in_epoch >= self.steps_per_epoch
                    if stop.asked and not epoch_done and self.step < limit:
                        self._stop_saved(stop)
                    if self.step % self.d.ckpt_every_steps == 0 and not epoch_done:
                        self.save()
                    if epoch_done or self.step >= limit:
                        break
                if self.batch_in_epoch >= self.steps_per_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self.record_epoch({k: v / max(n, 1) for k, v in sums.items()})
                    sums, n = {}, 0
                    self.save()
                    if stop.asked and self.step < limit and self.epoch < self.d.epochs:
                        self._stop_saved(stop, saved=True)
        if (self.batch_in_epoch and n) or not (self.out_dir / GENOTYPE_JSON).is_file():
            self.record_epoch({k: v / max(n, 1) for k, v in sums.items()}, partial=True)  # stopped mid-epoch
        if n or not resumed:
            self.save()
        box, cls = self.towers.genotypes()
        self.console.print(genotype_table(box, cls, f"darts search: genotypes after {self.step} steps"))
        self.console.print(f"genotypes -> {escape(str(self.out_dir / GENOTYPE_LOG))}, {escape(str(self.out_dir / GENOTYPE_JSON))}")
        return {"genotypes": {"box": format_genotype(box), "cls": format_genotype(cls)}, "step": self.step,
                "epoch": self.epoch, "strategy": "darts", "start": self.start_note,
                "files": {n: str(self.out_dir / n) for n in (GENOTYPE_LOG, GENOTYPE_JSON, ALPHAS_LOG)}}


def genotype_table(box, cls, title: str) -> Table:
    table = Table(title=title)
    for col in ("tower", "node", "edges (op <- input)"):
        table.add_column(col)
    for name, g in (("box", box), ("cls", cls)):
        for i, node in enumerate(g.normal):
            table.add_row(name if i == 0 else "", str(i + 2), ", ".join(f"{op} <- {j}" for op, j in node))
    return table


