"""Local training of one round: the resident base + the plan's updates, then LoRA (PEFT) or dense targets.

Theory of operation
-------------------
The base model is loaded once from the local folder, straight onto the training device (in 4 or
8 bits with ``quantization``, see ``basemodel.load_base``), and stays there: no round copies it.
``merged_base`` applies the plan to that resident model: the ``merge`` adapter (the stacking
rules' cumulative ΔW = s·B·A) as frozen forward hooks beside the target weights
(``cumulative.FrozenDelta``), ``merge_dense`` and the dense rule's trained targets as float32
working copies of the target weights only (``cumulative.DenseOverlay``). ``prepare`` then either
unfreezes those dense targets (``plan.dense``) or wraps the model in a PEFT LoRA model on the full
target names (``lora_alpha = s·r`` so PEFT's α/r is the plan's s), copies ``plan.init`` into
``lora_A``/``lora_B`` and freezes A or B as the plan says. ``fit`` runs the loop and reads the
result back as a ``LocalUpdate``: the LoRA pairs PEFT holds, or W_after − W_before per target.
The next ``prepare`` (or ``release``) takes the round off again: PEFT's layers are unloaded, the
hooks removed and the original weight tensors put back, so the base is bit-identical to the one
loaded.

Evaluation (``loss_before``, ``loss_after``, ``eval_loss``) reads at most ``eval_batches`` batches
(default ``DEFAULT_EVAL_BATCHES``), so its cost is fixed per round and does not grow with the local
dataset; losses are weighted by the tokens (causal LM) or rows (classification) they average.

The loop is built for wrappers to slot in (subclasses): the model is on its device before
``_prepare(model, optimizer, loader)`` is called (identity here; Opacus's
``PrivacyEngine.make_private`` or ``DistributedDataParallel`` belong there, with
``self.planned_steps`` already set), batches are dicts of tensors, ``_loss`` is the single place
the loss is computed, ``_step_loss`` the loss a step back-propagates, and ``_clip_gradients`` the
single place batch gradients are clipped. Results are always read from the unwrapped model, so a
wrapper may return any module that forwards to it.

Several GPUs: ``agent/ddp_trainer.py`` (``DDPLoraTrainer``) is this trainer under ``torchrun`` or
``accelerate launch``, and ``agent/distributed.py`` decides which rank talks to the coordinator.
"""

from __future__ import annotations

import itertools
import math
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal, Protocol, Sequence, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]

from ..contract import DEFAULT_EVAL_BATCHES, TrainHyper
from ..strategies.base import LocalUpdate, TrainingPlan
from ..strategies.adapters import Task
from ..strategies.lora import Adapter, LoraFactors
from .basemodel import load_base, target_shapes
from .config import Quantization
from .cumulative import CumulativeError, DenseOverlay, FrozenDelta
from .device import resolve
from .saved_training import read_saved, start_saved

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Batch = dict[str, torch.Tensor]
_PEFT_PREFIX = "base_model.model."
_SEEDED_INIT = threading.Lock()


class TrainerError(ValueError):
    """A training plan or target list that does not fit the base model."""


class TrainingStopped(Exception):
    """The agent asked local training to stop (the coordinator closed the round, e.g. ``admin stop``)."""


@dataclass
class TrainResult:
    """What one round of local training produced."""

    update: LocalUpdate
    n_samples: int
    losses: list[float] = field(default_factory=list)
    """Training loss of every step."""
    loss_before: float = math.nan
    """Mean loss on the local data before training (base + merged updates + initial factors)."""
    loss_after: float = math.nan
    """Mean loss on the local data after training."""
    eval_loss: float = math.nan
    """Mean loss of the model as received (before local training) on the site's held-out data, if it has any."""


@runtime_checkable
class Trainer(Protocol):
    """Trains the local model for one round as a ``TrainingPlan`` says."""

    def target_names(self) -> dict[str, tuple[int, int]]:
        """Full names of the target modules -> (d_out, k_in) of their weights."""
        ...

    def train(self, plan: TrainingPlan, data: Dataset[Batch], hp: TrainHyper, progress: bool = True) -> TrainResult:
        """Run one round of local training and return the update."""
        ...


class LoraTrainer:
    """The default ``Trainer``: PEFT LoRA (or dense targets) on a local Hugging Face model."""

    def __init__(
        self,
        model_dir: Path,
        task: Task,
        target_modules: Sequence[str],
        device: str = "auto",
        seed: int | None = None,
        quantization: Quantization = Quantization.NONE,
        num_labels: int | None = None,
        head_seed: int | None = None,
    ) -> None:
        self.task: Task = task
        self.placement = resolve(device)
        """Training device, load dtype and autocast dtype."""
        self.quantization = Quantization(quantization)
        """``none``, or the bitsandbytes precision the frozen base is held in (CUDA only)."""
        base, self.tokenizer = load_base(model_dir, task, device=str(self.placement.device),
                                         dtype=self.placement.dtype, quantization=self.quantization,
                                         num_labels=num_labels, head_seed=head_seed)
        self._base: PreTrainedModel = base
        """The one resident copy of the base, on the training device; rounds never copy it."""
        self._targets = target_shapes(base, target_modules)
        self._seed = seed
        self._rounds = 0
        self.planned_steps = 0
        """Optimizer steps of the current ``fit``, set before ``_prepare`` (a DP wrapper needs it)."""
        self.eval_data: Dataset[Batch] | None = None
        self._prox_anchor: list[torch.Tensor] = []
        """FedProx's θ_start of the current ``fit`` (empty when μ = 0)."""
        """Held-out local data; when set, every round reports the received model's loss on it."""
        self._peft_model: Any = None
        self._hooks = FrozenDelta()
        self._overlay = DenseOverlay()

    def target_names(self) -> dict[str, tuple[int, int]]:
        """Full module names matching the target suffixes -> (d_out, k_in) of their weights."""
        return dict(self._targets)

    def merged_base(self, plan: TrainingPlan) -> PreTrainedModel:
        """The resident base with ``plan.merge`` hooked beside its targets and ``merge_dense`` added (no copy).

        Takes the previous round off first (``release``). Dense plans get float32 working copies of
        their target weights (trained in place); everything else of the base is shared, untouched.
        """
        self.release()
        if self.quantization is not Quantization.NONE and (plan.dense or plan.merge_dense):
            raise TrainerError(f"the {self.quantization.value} base cannot take dense updates (the 'dense' rule "
                               "trains and merges full weights): use a LoRA rule or quantization = \"none\"")
        try:
            dense_targets = self._targets if plan.dense else {}
            self._overlay = DenseOverlay.apply(self._base, dense_targets, plan.merge_dense)
            self._hooks = FrozenDelta.attach(self._base, plan.merge or {})
        except CumulativeError as exc:
            self.release()
            raise TrainerError(str(exc)) from None
        return self._base

    def release(self) -> None:
        """Take the last round off the resident base: unload PEFT, remove hooks, restore weights."""
        if self._peft_model is not None:
            peft_model, self._peft_model = self._peft_model, None
            peft_model.unload()
        self._hooks.remove()
        self._overlay.restore()
        self._base.requires_grad_(False)

    def prepare(self, plan: TrainingPlan) -> torch.nn.Module:
        """The model as training starts: the base with the plan's updates and trainable LoRA factors or dense targets."""
        if not plan.dense and not (plan.train_a or plan.train_b):
            raise TrainerError("the plan freezes both lora_A and lora_B: nothing to train")
        model = self.merged_base(plan)
        model.requires_grad_(False)
        if plan.dense:
            modules = dict(model.named_modules())
            for name in self._targets:
                _weight(modules[name], "weight", name).requires_grad_(True)  # float32 masters (DenseOverlay)
            start_saved(model, plan)  # issue 14: dense modules_to_save (no-op without them)
            return model
        try:
            return self._peft(model, plan)
        except BaseException:
            self.release()
            raise

    def _peft(self, model: PreTrainedModel, plan: TrainingPlan) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        if plan.rank <= 0:
            raise TrainerError(f"plan.rank must be > 0, got {plan.rank}")
        config = LoraConfig(
            r=plan.rank,
            lora_alpha=plan.scaling * plan.rank,  # type: ignore[arg-type]  # PEFT takes a float
            target_modules=sorted(self._targets),
            lora_dropout=0.0,
            bias="none",
            modules_to_save=list(plan.modules_to_save) or None,  # issue 14: e.g. a seq-cls head
        )
        # The lock: torch's CPU generator is process-wide, so agents in threads of one process (the e2e tests)
        # would otherwise draw each other's seeded LoRA init (issue 14 found it reproducing a wire round).
        with _SEEDED_INIT, torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # PEFT still calls a transformers method deprecated in v5; not ours to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if self._seed is not None:
                torch.manual_seed(self._seed + self._rounds)
            peft_model = get_peft_model(model, config)  # no task_type: a generic PeftModel
        self._peft_model = peft_model
        layers = {name: peft_model.get_submodule(_PEFT_PREFIX + name) for name in self._targets}
        for name, layer in layers.items():  # float32 masters even when PEFT followed a bf16 or 4-bit base
            for which in ("lora_A", "lora_B"):
                factor = _weight(layer, which, name)
                factor.data = factor.data.to(device=self.placement.device, dtype=torch.float32)
        if plan.init is not None:
            _copy_init(layers, plan.init, plan.scaling)
        for name, layer in layers.items():
            _weight(layer, "lora_A", name).requires_grad_(plan.train_a)
            _weight(layer, "lora_B", name).requires_grad_(plan.train_b)
        if plan.modules_to_save:
            start_saved(peft_model, plan)
        return peft_model

    def train(self, plan: TrainingPlan, data: Dataset[Batch], hp: TrainHyper, progress: bool = True) -> TrainResult:
        """Prepare the model as ``plan`` says, train it on ``data`` and return the update."""
        return self.fit(self.prepare(plan), plan, data, hp, progress)

    def fit(
        self, model: torch.nn.Module, plan: TrainingPlan, data: Dataset[Batch], hp: TrainHyper, progress: bool = True
    ) -> TrainResult:
        """Train a model from ``prepare(plan)`` and read its update back."""
        n = len(data)  # type: ignore[arg-type]
        if n == 0:
            raise TrainerError("the local dataset is empty")
        self._rounds += 1
        before = self._dense_snapshot(model) if plan.dense else {}
        loss_before = self.evaluate(model, data, hp)
        eval_loss = self.evaluate(model, self.eval_data, hp) if self.eval_data is not None else math.nan
        params = [p for p in model.parameters() if p.requires_grad]
        self._prox_anchor = [p.detach().clone() for p in params] if hp.prox_mu > 0 else []
        optimizer = _optimizer(params, hp)
        loader = self._loader(data, hp.batch_size, shuffle=True)
        steps = hp.local_steps if hp.local_steps is not None else (hp.epochs or 1) * len(loader)
        self.planned_steps = steps
        wrapped, optimizer, loader = self._prepare(model, optimizer, loader)
        losses = self._loop(wrapped, optimizer, loader, params, hp, steps, progress)
        loss_after = self.evaluate(model, data, hp)
        if plan.dense:
            after = self._dense_snapshot(model)
            update = LocalUpdate(dense={name: after[name] - before[name] for name in self._targets},
                                 saved=read_saved(model, plan))
        else:
            update = LocalUpdate(adapter=self._read_factors(model, plan.scaling), saved=read_saved(model, plan))
        return TrainResult(update, n, losses, loss_before, loss_after, eval_loss)

    def _loop(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: DataLoader[Batch],
        params: list[torch.nn.Parameter],
        hp: TrainHyper,
        steps: int,
        progress: bool,
    ) -> list[float]:
        losses: list[float] = []
        model.train()
        batches = _cycle(loader)
        with tqdm(total=steps, disable=not progress, desc="local training", unit="step") as bar:
            for _ in range(steps):
                batch = self._to_device(next(batches))
                with self.placement.autocast_context():
                    loss = self._step_loss(model, batch)
                loss.backward()  # type: ignore[no-untyped-call, unused-ignore]
                self._clip_gradients(params, hp)
                _proximal(params, self._prox_anchor, hp.prox_mu)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                bar.update(1)
        return losses

    def _prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[Batch]
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader[Batch]]:
        """Hook for wrappers (DP-SGD, DDP, accelerate); the model is already on its device."""
        return model, optimizer, loader

    def _clip_gradients(self, params: list[torch.nn.Parameter], hp: TrainHyper) -> None:
        """Clip the batch gradient to ``hp.max_grad_norm`` (a DP wrapper clips per sample instead)."""
        if hp.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)

    def _loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean loss of one batch (the model computes it from ``batch["labels"]``)."""
        loss: torch.Tensor = model(**batch).loss
        return loss

    def _step_loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The loss one training step back-propagates (``_loss``; DDP reweights its shard's share)."""
        return self._loss(model, batch)

    def evaluate(self, model: torch.nn.Module, data: Dataset[Batch], hp: TrainHyper) -> float:
        """Mean loss of ``model`` on ``data`` (at most ``hp.eval_batches`` batches), weighted as the loss averages."""
        total, count = self._eval_sums(model, data, hp)
        if count == 0:
            raise TrainerError("cannot evaluate on an empty dataset")
        return total / count

    def _eval_sums(self, model: torch.nn.Module, data: Dataset[Batch], hp: TrainHyper) -> tuple[float, float]:
        """(Σ weight·loss, Σ weight) over the evaluated batches (``loss_weight`` of each)."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0.0
        with torch.no_grad():
            for batch in itertools.islice(self._loader(data, hp.batch_size, shuffle=False), hp.eval_batches):
                weight = loss_weight(batch)
                if weight == 0:
                    continue
                with self.placement.autocast_context():
                    total += float(self._loss(model, self._to_device(batch))) * weight
                count += weight
        model.train(was_training)
        return total, count

    def _loader(self, data: Dataset[Batch], batch_size: int, shuffle: bool) -> DataLoader[Batch]:
        generator = None
        if shuffle and self._seed is not None:
            generator = torch.Generator().manual_seed(self._seed * 1_000_003 + self._rounds)
        elif not shuffle:  # a loader iterator without a generator draws its base seed from the process-wide RNG
            generator = torch.Generator().manual_seed(0)
        collate: Any = getattr(data, "collate", None)
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator)

    stop_requested: Any = None
    """A ``threading.Event`` the agent sets when the round is closed; every batch checks it (issue 13)."""

    def _to_device(self, batch: Batch) -> Batch:
        if self.stop_requested is not None and self.stop_requested.is_set():
            raise TrainingStopped("the coordinator closed the round; local training stopped")
        return {k: v.to(self.placement.device, non_blocking=True) for k, v in batch.items()}

    def _dense_snapshot(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        return {
            name: _weight(modules[name], "weight", name).detach().to(torch.float32).cpu().clone()
            for name in self._targets
        }

    def _read_factors(self, model: torch.nn.Module, scaling: float) -> Adapter:
        adapter: Adapter = {}
        for name in self._targets:
            layer = model.get_submodule(_PEFT_PREFIX + name)
            a = _weight(layer, "lora_A", name).detach().to(torch.float32).cpu().clone()
            b = _weight(layer, "lora_B", name).detach().to(torch.float32).cpu().clone()
            adapter[name] = LoraFactors(A=a, B=b, scaling=scaling)
        return adapter


def loss_weight(batch: Batch) -> float:
    """How many terms the batch's mean loss averages: predicted tokens (causal LM) or rows."""
    labels = batch.get("labels")
    if labels is None:
        return float(batch["input_ids"].shape[0]) if "input_ids" in batch else 0.0
    if labels.ndim == 2:  # causal LM: the model shifts the labels by one and ignores -100
        return float((labels[:, 1:] != -100).sum())
    return float(labels.shape[0])


def _copy_init(layers: dict[str, torch.nn.Module], init: Adapter, scaling: float) -> None:
    missing, extra = sorted(set(layers) - set(init)), sorted(set(init) - set(layers))
    if missing or extra:
        raise TrainerError(f"plan.init does not cover the targets: missing {missing}, unknown {extra}")
    with torch.no_grad():
        for name, f in init.items():
            if not math.isclose(f.scaling, scaling, rel_tol=1e-6):
                raise TrainerError(f"plan.init[{name!r}] has scaling {f.scaling}, the plan trains with {scaling}")
            a, b = _weight(layers[name], "lora_A", name), _weight(layers[name], "lora_B", name)
            for label, dst, src in (("A", a, f.A), ("B", b, f.B)):
                if tuple(dst.shape) != tuple(src.shape):
                    raise TrainerError(
                        f"plan.init[{name!r}].{label} is {tuple(src.shape)}, PEFT's lora_{label} is {tuple(dst.shape)}"
                    )
                dst.copy_(src.to(dst.dtype))


def _weight(module: torch.nn.Module, which: Literal["weight", "lora_A", "lora_B"], name: str) -> torch.Tensor:
    """``module.weight``, or the weight of its default LoRA factor ``which``."""
    holder: Any = module
    if which != "weight":
        factors: Any = getattr(module, which, None)
        holder = factors["default"] if factors is not None and "default" in factors else None
    weight = getattr(holder, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TrainerError(f"module {name!r} has no {which} weight")
    return weight


def _optimizer(params: list[torch.nn.Parameter], hp: TrainHyper) -> torch.optim.Optimizer:
    if not params:
        raise TrainerError("no trainable parameters")
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, weight_decay=hp.weight_decay)
    if hp.optimizer == "galore-adamw":
        return _galore(params, hp)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


def _galore(params: list[torch.nn.Parameter], hp: TrainHyper) -> torch.optim.Optimizer:
    """GaLore AdamW (Zhao et al. 2024): gradients of 2-D weights projected to a low rank subspace."""
    try:
        from galore_torch import GaLoreAdamW
    except ImportError as exc:
        raise TrainerError(f"optimizer 'galore-adamw' needs the galore-torch package ({exc})") from None
    matrices = [p for p in params if p.ndim == 2]
    others = [p for p in params if p.ndim != 2]
    groups: list[dict[str, Any]] = [{"params": others}] if others else []
    groups.append({"params": matrices, "rank": hp.galore_rank, "update_proj_gap": hp.galore_update_proj_gap,
                   "scale": hp.galore_scale, "proj_type": "std"})
    optimizer: torch.optim.Optimizer = GaLoreAdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
    return optimizer


def _proximal(params: list[torch.nn.Parameter], anchor: list[torch.Tensor], mu: float) -> None:
    """FedProx: add μ·(θ − θ_start), the gradient of μ/2·‖θ − θ_start‖², to every trainable parameter."""
    if mu <= 0:
        return
    with torch.no_grad():
        for p, p0 in zip(params, anchor):
            if p.grad is not None:
                p.grad.add_(p.detach() - p0, alpha=mu)


def _cycle(loader: DataLoader[Batch]) -> Iterator[Batch]:
    while True:
        yield from loader
