"""What a run learns and how it is judged: the loss of a training step and the metrics of an evaluation.

Three kinds of task share the commands:

- ``classification`` (images, text): cross-entropy (label smoothing optional); metrics ``accuracy``,
  ``matthews`` (Matthews correlation, CoLA's), ``f1`` of class 1 for two classes (MRPC's and QQP's) and ``loss``
  (mean cross-entropy over the split: on a small validation split it ranks subnets by a continuous number where
  accuracies tie or differ by a few rows).
- ``regression`` (STS-B): one output per row, mean squared error; metrics ``pearson``, ``spearman``, ``mse`` (and
  ``loss``, the same number: every kind has a ``loss``).
- ``causal-lm``: next-token cross-entropy on the tokens whose label is not ``-100`` (the response of an
  instruction), averaged per sequence; metrics ``loss`` (mean per response token over the split), ``perplexity``
  (its exponential), ``token_accuracy`` (greedy next-token hits on response tokens) and, where the split holds
  multiple-choice rows, ``mc_accuracy``: the option with the highest summed log-likelihood is the choice.
  Targets are ``labels`` (B, L: the token labels), ``choice_group`` (B: each sequence's multiple-choice question,
  -1: none) and ``choice_correct`` (B: whether it is the correct option, 1 for every plain sequence);
  :func:`lm_targets` builds them.

A task reads a batch's targets by name (:class:`glora.app.data.Batch`): ``labels``, and for a causal LM the two
multiple-choice fields. A bare tensor stands for ``{"labels": tensor}``.

Every evaluation computes all of a task's metrics; one of them, the task's ``metric``, is the *score* that
training logs and the search maximises (negated for the lower-is-better ones: ``mse``, ``loss``, ``perplexity``).
Metrics are computed from per-row statistics gathered over the whole split (:meth:`Task.stats`), so a
correlation is the split's, not a mean of per-batch ones, and data-parallel shards combine exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

__all__ = [
    "TASK_KINDS",
    "METRICS",
    "Metric",
    "Task",
    "Classification",
    "Regression",
    "CausalLM",
    "IGNORE_INDEX",
    "result_key",
    "lm_targets",
    "Targets",
]

TASK_KINDS = ("classification", "regression", "causal-lm")
IGNORE_INDEX = -100  # a label the causal-LM loss skips (prompt and padding tokens), as transformers marks them


@dataclass(frozen=True)
class Metric:
    name: str
    kinds: tuple[str, ...]  # the task kinds it applies to
    greater_is_better: bool = True
    description: str = ""


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", ("classification",), True, "top-1 accuracy"),
        Metric("matthews", ("classification",), True, "Matthews correlation coefficient (CoLA)"),
        Metric("f1", ("classification",), True, "F1 of class 1, two classes only (MRPC, QQP)"),
        Metric("pearson", ("regression",), True, "Pearson correlation (STS-B)"),
        Metric("spearman", ("regression",), True, "Spearman rank correlation"),
        Metric("mse", ("regression",), False, "mean squared error"),
        Metric("loss", TASK_KINDS, False, "the training loss on the split (cross-entropy; regression: squared error)"),
        Metric("perplexity", ("causal-lm",), False, "exp(loss)"),
        Metric("token_accuracy", ("causal-lm",), True, "greedy next-token accuracy on response tokens"),
        Metric("mc_accuracy", ("causal-lm",), True, "multiple-choice accuracy: the most likely option is the choice"),
    )
}


# A batch's targets by name, or the labels alone.
Targets = Mapping[str, torch.Tensor] | torch.Tensor


def lm_targets(
    tokens: torch.Tensor, group: torch.Tensor | None = None, correct: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Causal-LM targets from token labels (B, L): plain sequences (group -1, correct 1) by default."""
    n = tokens.shape[0]
    group = torch.full((n,), -1, dtype=torch.long) if group is None else group
    correct = torch.ones(n, dtype=torch.long) if correct is None else correct
    return {"labels": tokens, "choice_group": group.to(tokens), "choice_correct": correct.to(tokens)}


def _fields(targets: Targets) -> Mapping[str, torch.Tensor]:
    return {"labels": targets} if isinstance(targets, torch.Tensor) else targets


def result_key(metric: str) -> str:
    """A metric's name in logs and result files after ``val_`` / ``test_``: ``val_acc``, ``val_matthews``."""
    return "acc" if metric == "accuracy" else metric


@dataclass(frozen=True)
class Task:
    """The task of a run (stored in its checkpoints): kind, selection metric and number of classes.

    ``Task(kind, metric, num_classes)`` gives the kind's own class (:class:`Classification`, :class:`Regression`,
    :class:`CausalLM`), which owns its loss, per-row statistics, metrics and defaults; nothing outside this module
    branches on the kind's name.
    """

    kind: str = "classification"
    metric: str | None = None  # None: the kind's default (accuracy, pearson, loss)
    num_classes: int | None = None

    KIND: ClassVar[str] = ""  # the kind a subclass is
    default_metric: ClassVar[str] = ""
    # Whether a student can learn this task from a teacher's outputs (in-place distillation, --teacher-weight).
    distills: ClassVar[bool] = True
    # Rows per evaluation batch when the command is not told (a causal LM's logits span the vocabulary per token).
    eval_batch_size: ClassVar[int] = 256

    def __new__(cls, kind: str = "classification", *args: Any, **kwargs: Any) -> Task:
        if cls is Task:
            if kind not in _KINDS:
                raise ValueError(f"task kind must be one of {', '.join(TASK_KINDS)}; got {kind!r}")
            cls = _KINDS[kind]
        return object.__new__(cls)

    def __post_init__(self) -> None:
        if _KINDS.get(self.kind) is not type(self):
            raise ValueError(f"a {type(self).__name__} task has kind {type(self).KIND!r}, not {self.kind!r}")
        if self.metric is not None and self.metric not in self.metric_names:
            raise ValueError(
                f"metric {self.metric!r} does not apply to {self._what()}; use one of {', '.join(self.metric_names)}"
            )

    def _what(self) -> str:
        return self.kind

    @property
    def selection(self) -> str:
        """The metric that ranks runs and subnets."""
        return self.metric or self.default_metric

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Every metric an evaluation of this task reports."""
        return tuple(m.name for m in METRICS.values() if self.kind in m.kinds)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Task:
        """The stored task; checkpoints written before tasks existed are classification by accuracy."""
        return Task(**dict(data)) if data else Task()

    def check_split(self, targets: Targets, what: str) -> None:
        """Refuse, before any work, a split (its targets) the selection metric cannot be computed on."""

    def validation_batch_size(self, train_batch_size: int) -> int:
        """Rows per batch when training validates: at least :attr:`eval_batch_size` (inference holds no gradients)."""
        return max(train_batch_size, self.eval_batch_size)

    # ------------------------------------------------------------------ training
    def loss(self, out: torch.Tensor, targets: Targets, smoothing: float = 0.0) -> torch.Tensor:
        """The loss summed over the batch's rows (the trainer divides by the global batch size)."""
        raise NotImplementedError

    def distill_loss(self, out: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Learning a teacher's outputs (in-place distillation), summed over the batch's rows; the teacher's outputs
        are constants."""
        raise ValueError(f"in-place distillation (--distill) is for classification and regression, not {self.kind}")

    # ------------------------------------------------------------------ evaluation
    def stats(self, out: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, ...]:
        """Per-row statistics of one batch, enough for every metric (:meth:`compute` turns a split's into metrics)."""
        raise NotImplementedError

    def empty_stats(self) -> tuple[torch.Tensor, ...]:
        """:meth:`stats` of no row: the same columns, of the same types (a data-parallel rank with no validation
        rows gathers these with the others' rows)."""
        raise NotImplementedError

    def compute(self, stats: Sequence[torch.Tensor]) -> dict[str, float]:
        """Every metric of the task from a split's concatenated :meth:`stats` (empty split: NaN)."""
        stats = [s.detach().to("cpu") for s in stats]
        if len(stats[0]) == 0:
            return {name: math.nan for name in self.metric_names}
        return self._compute(stats)

    def _compute(self, stats: Sequence[torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def score(self, metrics: Mapping[str, float]) -> float:
        """The selection metric as a number to maximise."""
        if self.selection not in metrics:
            raise ValueError(
                f"metric {self.selection} needs multiple-choice rows (options and an answer) in the split; use "
                f"{', '.join(m for m in metrics)}"
            )
        value = metrics[self.selection]
        return value if METRICS[self.selection].greater_is_better else -value

    def describe(self, metrics: Mapping[str, float]) -> str:
        """``accuracy 0.9100, matthews 0.8200`` with the selection metric first."""
        names = [self.selection] * (self.selection in metrics)
        names += [n for n in self.metric_names if n != self.selection and n in metrics]
        return ", ".join(f"{n} {metrics[n]:.4f}" for n in names)


@dataclass(frozen=True)
class Classification(Task):
    """Classes (images, text): cross-entropy (label smoothing optional); accuracy, Matthews, F1 (two classes) and
    the mean cross-entropy. Statistics per row: (prediction, label, cross-entropy)."""

    kind: str = "classification"
    KIND: ClassVar[str] = "classification"
    default_metric: ClassVar[str] = "accuracy"

    def _what(self) -> str:
        return f"{self.kind} with {self.num_classes} classes" if self.num_classes else self.kind

    @property
    def metric_names(self) -> tuple[str, ...]:
        """f1 only for two classes."""
        return tuple(n for n in super().metric_names if n != "f1" or self.num_classes == 2)

    def loss(self, out: torch.Tensor, targets: Targets, smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(out.float(), _fields(targets)["labels"], label_smoothing=smoothing, reduction="sum")

    def distill_loss(self, out: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Cross-entropy to the teacher's class probabilities."""
        return -(teacher.detach().float().softmax(-1) * out.float().log_softmax(-1)).sum()

    def stats(self, out: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, ...]:
        out, y = out.float(), _fields(targets)["labels"]
        return out.argmax(-1), y, F.cross_entropy(out, y, reduction="none")

    def empty_stats(self) -> tuple[torch.Tensor, ...]:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0)

    def _compute(self, stats: Sequence[torch.Tensor]) -> dict[str, float]:
        pred, label = stats[0].long(), stats[1].long()
        out = {"accuracy": (pred == label).double().mean().item(), "matthews": _matthews(pred, label)}
        if "f1" in self.metric_names:
            out["f1"] = _f1(pred, label)
        out["loss"] = stats[2].double().mean().item()
        return out


@dataclass(frozen=True)
class Regression(Task):
    """One output per row (STS-B): mean squared error; Pearson, Spearman, MSE (and ``loss``, the same number).
    Statistics per row: (prediction, label)."""

    kind: str = "regression"
    KIND: ClassVar[str] = "regression"
    default_metric: ClassVar[str] = "pearson"

    def loss(self, out: torch.Tensor, targets: Targets, smoothing: float = 0.0) -> torch.Tensor:
        return F.mse_loss(out.float().reshape(-1), _fields(targets)["labels"].float(), reduction="sum")

    def distill_loss(self, out: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Squared distance to the teacher's outputs."""
        return F.mse_loss(out.float().reshape(-1), teacher.detach().float().reshape(-1), reduction="sum")

    def stats(self, out: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, ...]:
        return out.float().reshape(-1), _fields(targets)["labels"].float()

    def empty_stats(self) -> tuple[torch.Tensor, ...]:
        return torch.zeros(0), torch.zeros(0)

    def _compute(self, stats: Sequence[torch.Tensor]) -> dict[str, float]:
        pred, label = stats[0].double(), stats[1].double()
        out = {
            "pearson": _pearson(pred, label),
            "spearman": _pearson(_ranks(pred), _ranks(label)),
            "mse": ((pred - label) ** 2).mean().item(),
        }
        out["loss"] = out["mse"]
        return out


@dataclass(frozen=True)
class CausalLM(Task):
    """Next-token cross-entropy on the tokens whose label is not ``-100`` (the response), averaged per sequence;
    loss, perplexity, token accuracy and, with multiple-choice rows, mc_accuracy. Statistics per sequence: (summed
    NLL, response tokens, greedy hits, choice group, correct)."""

    kind: str = "causal-lm"
    KIND: ClassVar[str] = "causal-lm"
    default_metric: ClassVar[str] = "loss"
    distills: ClassVar[bool] = False
    eval_batch_size: ClassVar[int] = 8

    def validation_batch_size(self, train_batch_size: int) -> int:
        return train_batch_size  # logits over the vocabulary per token: no larger than a training batch

    def check_split(self, targets: Targets, what: str) -> None:
        group = _fields(targets).get("choice_group")
        if self.selection == "mc_accuracy" and (group is None or not bool((group >= 0).any())):
            raise ValueError(
                f"metric mc_accuracy needs multiple-choice rows (options and an answer) in the split; the {what} "
                "split has none (use --metric loss, or give rows with options)"
            )

    def loss(self, out: torch.Tensor, targets: Targets, smoothing: float = 0.0) -> torch.Tensor:
        nll, count, _ = _token_stats(out.float(), _fields(targets)["labels"], need_hits=False)
        return (nll / count.clamp(min=1)).sum()

    def stats(self, out: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, ...]:
        fields = _fields(targets)
        y = fields["labels"]
        n = len(y)
        group = fields.get("choice_group", torch.full((n,), -1, dtype=torch.long, device=y.device))
        correct = fields.get("choice_correct", torch.ones(n, dtype=torch.long, device=y.device))
        return (*_token_stats(out.float(), y, need_hits=True), group, correct)

    def empty_stats(self) -> tuple[torch.Tensor, ...]:
        return torch.zeros(0), *(torch.zeros(0, dtype=torch.long) for _ in range(4))

    def _compute(self, stats: Sequence[torch.Tensor]) -> dict[str, float]:
        nll, count, hits, group, correct = stats
        right = correct == 1  # plain sequences, and the correct option of a multiple-choice row
        total, tokens = nll[right].double().sum().item(), count[right].sum().item()
        loss = total / tokens if tokens else math.nan
        out = {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)) if tokens else math.nan,
            "token_accuracy": hits[right].sum().item() / tokens if tokens else math.nan,
        }
        if (group >= 0).any():
            out["mc_accuracy"] = _choice_accuracy(nll.double(), group, correct)
        return out


_KINDS: dict[str, type[Task]] = {cls.KIND: cls for cls in (Classification, Regression, CausalLM)}


def _token_stats(
    logits: torch.Tensor, labels: torch.Tensor, need_hits: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Next-token NLL summed per row, the number of scored tokens per row, and greedy hits per row. Logits may be
    shorter than the labels: the labels are cut to match."""
    n = logits.shape[1]
    target = labels[:, 1:n]
    pred = logits[:, : n - 1]
    keep = target != IGNORE_INDEX
    nll = F.cross_entropy(pred.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    hits = (pred.argmax(-1) == target) & keep if need_hits else keep[:, :0]
    return nll.sum(1), keep.sum(1), hits.sum(1)


def _choice_accuracy(nll: torch.Tensor, group: torch.Tensor, correct: torch.Tensor) -> float:
    """Share of multiple-choice groups whose most likely option (lowest summed NLL; ties: the first) is correct."""
    rows = (group >= 0).nonzero().flatten()
    hits, seen = 0, 0
    for g in group[rows].unique():
        members = rows[group[rows] == g]
        choice = members[int(torch.argmin(nll[members]))]
        hits += int(correct[choice] == 1)
        seen += 1
    return hits / seen


def _matthews(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K); 0 when undefined (one class predicted)."""
    k = int(max(pred.max().item(), label.max().item())) + 1
    confusion = torch.bincount(label * k + pred, minlength=k * k).reshape(k, k).double()
    t, p = confusion.sum(1), confusion.sum(0)  # true and predicted counts per class
    c, s = confusion.trace(), confusion.sum()
    denom = math.sqrt(float(s * s - (p * p).sum())) * math.sqrt(float(s * s - (t * t).sum()))
    return float(c * s - (t * p).sum()) / denom if denom > 0 else 0.0


def _f1(pred: torch.Tensor, label: torch.Tensor) -> float:
    tp = int(((pred == 1) & (label == 1)).sum())
    fp = int(((pred == 1) & (label != 1)).sum())
    fn = int(((pred != 1) & (label == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation; 0 when either side is constant (undefined)."""
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n with ties sharing their mean rank (what Spearman's coefficient correlates)."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=x.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=x.dtype).index_add_(0, inverse, torch.ones_like(x))
    return (sums / counts)[inverse]
