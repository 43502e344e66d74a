"""The GLoRA search space: which choice each support tensor A-E may take.

A choice is one of ``lora_<r>``, ``gift_<r>`` (A only), ``vector``, ``scalar`` or ``none`` (paper Eq. 11).
Names are parsed once into :class:`Choice` (a :class:`Kind` and a rank) so hot paths never look at strings.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = ["SUPPORTS", "GIFT_SHARING", "BIAS_FREE", "Kind", "Choice", "LayerChoice", "SearchSpace"]

SUPPORTS: tuple[str, ...] = ("A", "B", "C", "D", "E")
GIFT_SHARING: tuple[str, ...] = ("type", "width", "layer")
# What a layer without a bias offers (SearchSpace.bias_free), and the supports that touch the bias.
BIAS_FREE: tuple[str, ...] = ("allow", "exclude")
_BIAS_SUPPORTS = ("C", "D", "E")


class Kind(str, enum.Enum):
    """What a support tensor is made of. A ``str`` so ``Kind.LORA == "lora"`` and YAML/JSON see plain names."""

    LORA = "lora"  # low-rank factors Xd[:, :r] @ Xu[:r] (A, B, C)
    GIFT = "gift"  # W0 phi[:, :r] psi[:r]: a generator shared by a group of layers (A only)
    VECTOR = "vector"  # one value per output row (per input for C)
    SCALAR = "scalar"  # one value for the whole layer
    NONE = "none"  # the support is not used

    @property
    def ranked(self) -> bool:
        """Whether choices of this kind carry a rank (``lora_8``, ``gift_4``)."""
        return self in (Kind.LORA, Kind.GIFT)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


# Which kinds of choice each support may take (paper Eq. 11; GIFT is one more way to scale W for A).
_KINDS: dict[str, tuple[Kind, ...]] = {
    "A": (Kind.LORA, Kind.GIFT, Kind.VECTOR, Kind.SCALAR, Kind.NONE),
    "B": (Kind.LORA, Kind.VECTOR, Kind.SCALAR, Kind.NONE),
    "C": (Kind.LORA, Kind.VECTOR, Kind.NONE),
    "D": (Kind.VECTOR, Kind.SCALAR, Kind.NONE),
    "E": (Kind.VECTOR, Kind.SCALAR, Kind.NONE),
}


@dataclass(frozen=True, slots=True)
class Choice:
    """One parsed choice: a :class:`Kind` and, for lora/gift, a rank > 0 (``Choice(Kind.LORA, 8)`` is lora_8)."""

    kind: Kind
    rank: int = 0

    def __post_init__(self) -> None:
        kind = Kind(self.kind)  # also accepts the plain name ("lora")
        object.__setattr__(self, "kind", kind)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or kind.ranked != (self.rank > 0):
            need = "a positive integer rank" if kind.ranked else "no rank"
            raise ValueError(f"a {kind.value} choice takes {need}, got rank {self.rank!r}")

    @property
    def name(self) -> str:
        return f"{self.kind.value}_{self.rank}" if self.kind.ranked else self.kind.value

    @staticmethod
    def parse(name: str) -> Choice:
        """Parse a choice name such as ``lora_8`` or ``vector``; raises ``ValueError`` if malformed."""
        return _parse_choice(name)

    def __str__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=1024)
def _parse_choice(name: str) -> Choice:
    if not isinstance(name, str):
        raise ValueError(f"choice must be a string such as 'lora_8' or 'vector', got {name!r}")
    if name in (Kind.VECTOR, Kind.SCALAR, Kind.NONE):
        return Choice(Kind(name))
    kind, sep, rank = name.partition("_")
    if sep and kind in (Kind.LORA, Kind.GIFT) and rank.isdigit() and int(rank) > 0 and rank == str(int(rank)):
        return Choice(Kind(kind), int(rank))
    raise ValueError(
        f"unknown choice {name!r}; choices are 'lora_<r>', 'gift_<r>' (r a positive integer), "
        "'vector', 'scalar' or 'none'"
    )


class LayerChoice(NamedTuple):
    """The five parsed choices of one layer."""

    A: Choice
    B: Choice
    C: Choice
    D: Choice
    E: Choice

    def names(self) -> dict[str, str]:
        return {s: c.name for s, c in zip(SUPPORTS, self)}


def _ranks(value: Iterable[int], what: str) -> tuple[int, ...]:
    try:
        ranks = tuple(value)
    except TypeError:
        raise ValueError(f"{what} must be a sequence of positive integers, got {value!r}") from None
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
            raise ValueError(f"{what} must hold positive integers, got {r!r} in {value!r}")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"{what} has repeated ranks: {value!r}")
    return tuple(sorted(ranks, reverse=True))


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """Choices per support tensor, shared by every adapted layer.

    Args:
        lora_ranks: LoRA ranks offered to A, B and C (paper presets: (8, 4), (4, 2), (2,)). Stored largest first.
        gift_ranks: GIFT generator ranks offered to A (empty: no GIFT).
        gift_sharing: which layers share one GIFT generator: ``type`` (names equal once numeric parts are
            wildcarded), ``width`` (same input width) or ``layer`` (one per layer).
        choices: optional per-support restriction, e.g. ``{"C": ["none"]}``; each name must be a choice the
            ranks above allow. Supports not named keep the full list.
        bias_free: what a layer without a bias offers (Llama, Mistral, Qwen projections): ``allow`` = the same
            choices (C and E then create a bias, a key the plain architecture may not have); ``exclude`` = only
            ``none`` for C and E, which would create one, and for D, which scales the bias and has nothing to
            scale there, so every subnet folds into the architecture as it is.

    Example:
        >>> SearchSpace(lora_ranks=(8, 4)).choice_names("C")
        ('lora_8', 'lora_4', 'vector', 'none')
    """

    lora_ranks: tuple[int, ...] = (8, 4)
    gift_ranks: tuple[int, ...] = ()
    gift_sharing: str = "type"
    choices: Mapping[str, tuple[str, ...]] | None = field(default=None, compare=False)
    bias_free: str = "allow"
    _table: tuple[tuple[Choice, ...], ...] = field(init=False, repr=False, compare=False)
    _names: tuple[dict[str, Choice], ...] = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_ranks", _ranks(self.lora_ranks, "lora_ranks"))
        object.__setattr__(self, "gift_ranks", _ranks(self.gift_ranks, "gift_ranks"))
        if self.bias_free not in BIAS_FREE:
            raise ValueError(f"bias_free must be one of {', '.join(BIAS_FREE)}; got {self.bias_free!r}")
        if self.gift_sharing not in GIFT_SHARING:
            raise ValueError(f"gift_sharing must be one of {', '.join(GIFT_SHARING)}; got {self.gift_sharing!r}")
        full = {s: self._full(s) for s in SUPPORTS}
        table = dict(full)
        if self.choices is not None:
            if not isinstance(self.choices, Mapping):
                raise ValueError(f"choices must map a support (A-E) to a list of choice names, got {self.choices!r}")
            for support, names in self.choices.items():
                if support not in SUPPORTS:
                    raise ValueError(f"choices: unknown support {support!r}; supports are {', '.join(SUPPORTS)}")
                if isinstance(names, str) or not isinstance(names, Sequence) or not names:
                    raise ValueError(f"choices[{support!r}] must be a non-empty list of choice names, got {names!r}")
                allowed = [c.name for c in full[support]]
                picked = []
                for name in names:
                    if name not in allowed:
                        raise ValueError(
                            f"choices[{support!r}]: {name!r} is not allowed for support {support} in this space; "
                            f"allowed: {', '.join(allowed)}"
                        )
                    picked.append(name)
                if len(set(picked)) != len(picked):
                    raise ValueError(f"choices[{support!r}] has repeated names: {list(names)!r}")
                # Keep the canonical order so gene indices do not depend on how the user listed them.
                table[support] = tuple(c for c in full[support] if c.name in picked)
            frozen = {s: tuple(c.name for c in table[s]) for s in SUPPORTS if s in self.choices}
            object.__setattr__(self, "choices", frozen)
        object.__setattr__(self, "_table", tuple(table[s] for s in SUPPORTS))
        # name -> Choice per support: a subnet is checked every training step, so the common case is one lookup
        object.__setattr__(self, "_names", tuple({c.name: c for c in table[s]} for s in SUPPORTS))
        # Hashed once: spaces key the per-step caches of choice codes.
        object.__setattr__(self, "_hash", hash(self._key()))
        if self.bias_free == "exclude":
            for s in _BIAS_SUPPORTS:
                if "none" not in self._names[SUPPORTS.index(s)]:
                    raise ValueError(
                        f"bias_free='exclude' gives layers without a bias only 'none' for {', '.join(_BIAS_SUPPORTS)}, "
                        f"but this space's choices for {s} leave 'none' out"
                    )

    def _key(self) -> tuple:
        return (self.lora_ranks, self.gift_ranks, self.gift_sharing, self._table, self.bias_free)

    def for_layer(self, has_bias: bool) -> SearchSpace:
        """The space one layer offers: this space, or with ``bias_free="exclude"`` and no bias, this space with C, D
        and E narrowed to ``none``."""
        if has_bias or self.bias_free == "allow":
            return self
        narrowed = dict(self.choices or {}) | {s: ("none",) for s in _BIAS_SUPPORTS}
        return dataclasses.replace(self, choices=narrowed)

    def _full(self, support: str) -> tuple[Choice, ...]:
        out: list[Choice] = []
        for kind in _KINDS[support]:
            if kind is Kind.LORA:
                out += [Choice(kind, r) for r in self.lora_ranks]
            elif kind is Kind.GIFT:
                out += [Choice(kind, r) for r in self.gift_ranks]
            else:
                out.append(Choice(kind))
        return tuple(out)

    # ------------------------------------------------------------------ queries
    def choices_for(self, support: str) -> tuple[Choice, ...]:
        """Parsed choices of ``support`` in canonical order (lora largest first, gift, vector, scalar, none)."""
        try:
            return self._table[SUPPORTS.index(support)]
        except ValueError:
            raise ValueError(f"unknown support {support!r}; supports are {', '.join(SUPPORTS)}") from None

    def choice_names(self, support: str) -> tuple[str, ...]:
        self.choices_for(support)  # (the error for an unknown support)
        return tuple(self._names[SUPPORTS.index(support)])

    def max_rank(self, support: str, kind: Kind = Kind.LORA) -> int:
        """Largest rank of ``kind`` offered to ``support`` (0 if none): the size of its entangled storage."""
        return max((c.rank for c in self.choices_for(support) if c.kind == kind), default=0)

    def offers(self, support: str, *kinds: Kind) -> bool:
        return any(c.kind in kinds for c in self.choices_for(support))

    @property
    def layer_size(self) -> int:
        """Number of distinct configurations of one layer (|A|·|B|·|C|·|D|·|E|)."""
        n = 1
        for s in SUPPORTS:
            n *= len(self.choices_for(s))
        return n

    def check(self, support: str, name: str) -> Choice:
        """Parse ``name`` and check that this space offers it for ``support``; ``ValueError`` otherwise."""
        if support in SUPPORTS and isinstance(name, str):
            hit = self._names[SUPPORTS.index(support)].get(name)
            if hit is not None:
                return hit
        allowed = self.choice_names(support)
        try:
            choice = Choice.parse(name)
        except ValueError:
            raise ValueError(f"unknown choice {name!r} for support {support}; allowed: {', '.join(allowed)}") from None
        if choice.name in allowed:
            return choice
        if choice.kind.ranked:
            largest = self.max_rank(support, choice.kind)
            if largest and choice.rank > largest:
                raise ValueError(
                    f"choice {name!r} for support {support} has rank {choice.rank}, above the supernet's largest "
                    f"{choice.kind} rank {largest}; allowed: {', '.join(allowed)}"
                )
        raise ValueError(
            f"choice {name!r} is not in this search space for support {support}; allowed: {', '.join(allowed)}"
        )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (YAML/JSON friendly) for checkpoints and configs."""
        out: dict[str, Any] = {
            "lora_ranks": list(self.lora_ranks),
            "gift_ranks": list(self.gift_ranks),
            "gift_sharing": self.gift_sharing,
        }
        if self.choices is not None:
            out["choices"] = {s: list(v) for s, v in self.choices.items()}
        if self.bias_free != "allow":  # (older checkpoints have no such key: they read as allow)
            out["bias_free"] = self.bias_free
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        if not isinstance(data, Mapping):
            raise ValueError(f"a search space must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {"lora_ranks", "gift_ranks", "gift_sharing", "choices", "bias_free"}
        if unknown:
            raise ValueError(
                f"unknown search-space keys: {', '.join(sorted(map(str, unknown)))}; "
                "allowed: lora_ranks, gift_ranks, gift_sharing, choices, bias_free"
            )
        return cls(**dict(data))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return self._key() == other._key()
