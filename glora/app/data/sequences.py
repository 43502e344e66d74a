"""One split of tokenized text (:class:`TextSet`): named fields as the tokenizer gave them, right-padded to one
length and kept in memory, and batches trimmed to their longest row on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from .batch import Batch

__all__ = ["TextSet"]


@dataclass
class TextSet:
    """Token sequences of one split.

    Args:
        fields: the model's inputs by name (``input_ids``, ``attention_mask``, ``token_type_ids``, ...), each
            (N, L), right-padded.
        targets: ``labels`` ((N,) classes or real values; (N, L) token labels for a causal LM) and, for multiple
            choice, ``choice_group`` and ``choice_correct`` (N,).
        lengths: real tokens per row (N,), on the host: a batch is cut to its longest row before it is placed on
            the device, so the host never waits for the device to learn it.
        num_classes: classes of a classification (1: a regression); None: a causal LM.
        class_names: label i -> name, when the data name them.
    """

    fields: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    lengths: torch.Tensor
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.lengths = torch.as_tensor(self.lengths, dtype=torch.long).cpu()
        self._host_lengths = self.lengths.tolist()
        n = len(self.lengths)
        for name, t in {**self.fields, **self.targets}.items():
            if t.shape[0] != n:
                raise ValueError(f"text field {name!r} has {t.shape[0]} rows, the split {n}")

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def labels(self) -> torch.Tensor:
        return self.targets["labels"]

    @property
    def width(self) -> int:
        """The padded length every row is stored at."""
        return int(next(iter(self.fields.values())).shape[1]) if self.fields else 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.fields.values(), *self.targets.values()))

    def to(self, device: torch.device | str) -> TextSet:
        """The same split with its tensors on ``device`` (the lengths stay on the host)."""
        return dataclasses.replace(
            self,
            fields={k: v.to(device) for k, v in self.fields.items()},
            targets={k: v.to(device) for k, v in self.targets.items()},
        )

    def subset(self, part: int | slice) -> TextSet:
        """The first ``part`` rows, or a slice."""
        sel = slice(0, part) if isinstance(part, int) else part
        return dataclasses.replace(
            self,
            fields={k: v[sel] for k, v in self.fields.items()},
            targets={k: v[sel] for k, v in self.targets.items()},
            lengths=self.lengths[sel],
        )

    def batch(self, rows: Sequence[int]) -> Batch:
        """Rows ``rows`` as one batch, every sequence field cut to the longest of them (at least one token)."""
        n = max((self._host_lengths[i] for i in rows), default=1) or 1
        idx = torch.tensor(list(rows), dtype=torch.long)
        device = next(iter(self.fields.values())).device
        idx = idx.to(device, non_blocking=True)
        return Batch(_cut(self.fields, idx, n, self.width), _cut(self.targets, idx, n, self.width))

    def batches(self, order: list[list[int]], seed: int = 0, workers: int = 0) -> _TextBatches:
        """The batches of ``order`` (lists of row indices), gathered as they are iterated."""
        return _TextBatches(self, order)


def _cut(fields: Mapping[str, torch.Tensor], idx: torch.Tensor, n: int, width: int) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of every field; a field as long as the padded rows is cut to ``n`` tokens."""
    out = {}
    for k, v in fields.items():
        rows = v.index_select(0, idx)
        out[k] = rows[:, :n] if rows.dim() > 1 and rows.shape[1] == width else rows
    return out


class _TextBatches:
    def __init__(self, data: TextSet, order: list[list[int]]) -> None:
        self.data, self.order = data, order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Batch]:
        for rows in self.order:
            yield self.data.batch(rows)
