"""The manual path (``manual``, formerly ``fused``): the folding math forward, a hand-written backward that only
pays for what the sampled choice needs. Opt-in through ``auto`` / ``manual``; the fastest eager path on CPU.

Forward is exactly what folding computes, ``y = x W_uniᵀ + b_uni`` (one matmul; a vector/scalar/lora B and a
vector/scalar A are all inside ``W_uni``). Autograd through that would take the full weight gradient
``G = gᵀx`` for every adapted layer; the backward here takes it only for a lora A, which needs it:

* lora A: ``G`` once; A's factors, and B's (any kind), follow from ``G`` with small products.
* lora B (A not lora): ``gᵀu`` and ``(g Bd)ᵀx`` with ``u = x Buᵀ`` (r columns), as LoRA does.
* vector/scalar B: ``gᵀ Σx`` (B x is constant along the input axis).
* vector/scalar A: ``Σ_t g ⊙ h`` with ``h = x W0ᵀ`` recovered from the saved output,
  ``h s = y - b_uni - B x``, using the sums already computed for b_uni and B, so neither ``h`` (an output-sized
  activation) nor ``G`` is needed. The output is usually kept alive downstream anyway (attention keeps q/k/v,
  GELU its input), so this costs no memory there. Exact up to rounding; when ``|1 + a|`` is tiny the layer uses
  the autograd path instead.

``W_uni`` (:func:`glora.formula.uni_weight`) is kept for the input gradient, as autograd keeps a linear layer's
weight: one weight-sized tensor per layer. Parameters a choice does not touch get no gradient (``None``), exactly as
autograd would leave them.

Cases it does not cover run on the autograd path, each for a named reason (:data:`FALLBACKS`), counted on the
model's path object (``ManualPath.fallbacks``) and logged once per reason at INFO: a GIFT A, a backbone weight that
trains, a non-float input, ``|1 + a|`` below the scale guard, a vector/scalar A beside a frozen B, supports in
another dtype than the frozen weight.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
from collections import Counter

import torch

from ..formula import choice_terms, uni_bias, uni_weight
from ..space import Choice, Kind
from . import LayerPath, register_path
from .autograd import autograd_forward

__all__ = ["ManualPath", "ScaleGuard", "FALLBACKS", "manual_linear"]

_logger = logging.getLogger(__name__)

_NONE, _LORA, _VECTOR, _SCALAR = Kind.NONE, Kind.LORA, Kind.VECTOR, Kind.SCALAR

# Why a layer runs on the autograd path instead (the keys of ManualPath.fallbacks).
FALLBACKS = {
    "gift": "A is a GIFT choice (its generator is shared across layers)",
    "weight-trains": "the backbone weight requires grad",
    "non-float-input": "the input is not a floating-point tensor",
    "scale-guard": "|1 + a| of a vector/scalar A is below the scale guard",
    "frozen-b": "a vector/scalar A beside a B that does not train",
    "mixed-precision": "the supports' dtype differs from the frozen weight's (fp32 supports over a bf16 backbone)",
}


def _dense(w0, Ad, Au, Bd, Bu, a: Choice, b: Choice):
    """W_uni for A in {none, vector, scalar, lora} and any B (the formula over :func:`choice_terms`'s slices)."""
    return uni_weight(w0, choice_terms({"Ad": Ad, "Au": Au, "Bd": Bd, "Bu": Bu}, (a, b)))


class _GLoRAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w0, bias, Ad, Au, Bd, Bu, a, b, copy_out, cpu_forms):
        a_kind, a_rank, b_kind, b_rank = a.kind, a.rank, b.kind, b.rank
        dev = x.device.type
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) and x.dtype != torch.float64 else None
        # Under autocast: W_uni in the weights' precision, then one cast for the matmul, where autocast would cast
        # W0 and every factor separately (each cast is a kernel launch) and round W_uni's sum in bf16.
        with torch.autocast(dev, enabled=False) if amp is not None else contextlib.nullcontext():
            w = _dense(w0, Ad, Au, Bd, Bu, a, b)
            w = w if amp is None else w.to(amp)
            xc = x if amp is None else _as(x, amp)
            y = torch.nn.functional.linear(xc, w, _as(bias, amp))
            x2 = xc.reshape(-1, x.shape[-1])
            y2 = y.reshape(-1, y.shape[-1])
            need = ctx.needs_input_grad
            a_grad = need[3] or need[4]
            b_grad = need[5] or need[6]
            u = sx = None
            if b_grad and a_kind != _LORA:
                if b_kind == _LORA:
                    u = x2 @ Bu[:b_rank].t().to(x2.dtype)
                elif b_kind in (_VECTOR, _SCALAR):
                    sx = x.reshape(-1, x.shape[-1]).sum(1)
        keep_x = (a_grad and a_kind == _LORA) or (b_grad and b_kind == _LORA)
        keep_y = a_grad and a_kind in (_VECTOR, _SCALAR)
        # (x2 is in autocast's dtype: what autograd would keep)
        # W_uni is kept for the input gradient, as autograd keeps a linear layer's weight: one weight-sized tensor per
        # layer (in the matmul's precision), cheaper than forming it again in backward.
        keep_w = ctx.needs_input_grad[0]
        saved = (x2 if keep_x else None, y2 if keep_y else None, u, sx, w if keep_w else None)
        ctx.save_for_backward(*saved, w0, bias, Ad, Au, Bd, Bu)
        ctx.plan = (a_kind, a_rank, b_kind, b_rank)
        ctx.cpu_forms = cpu_forms
        ctx.x_shape = x.shape
        # A parent that edits our output in place (BEiT's qkv += bias) gets its own copy: autograd forbids
        # editing a custom Function's output in place, and the saved output must stay as it was.
        return y.clone() if copy_out else y

    @staticmethod
    def backward(ctx, grad_out):
        # Backward runs without autocast; every product casts explicitly (the gradient arrives in autocast's dtype).
        x2, y2, u, sx, w, w0, bias, Ad, Au, Bd, Bu = ctx.saved_tensors
        a_kind, a_rank, b_kind, b_rank = ctx.plan
        acc = torch.promote_types(w0.dtype, torch.float32)  # accumulate in at least float32
        need = ctx.needs_input_grad
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_bias = gAd = gAu = gBd = gBu = None
        if need[0]:  # (the first adapted layer of a frozen backbone needs no input gradient)
            grad_x = (g2 @ w.to(g2.dtype)).view(ctx.x_shape)
        a_grad, b_grad = need[3] or need[4], need[5] or need[6]
        gsum = None  # Σ_t g: the bias gradient, and part of the vector/scalar-A gradient
        if a_kind == _LORA:
            G = (g2.t() @ x2.to(g2.dtype)).to(acc)
            if need[2]:
                gsum = _colsum(g2, acc)
            if b_grad:  # (before G is scaled in place below)
                gBd, gBu = _from_weight_grad(G, Bd, Bu, b_kind, b_rank, acc)
            if a_grad:
                dM = G.mul_(w0)
                gAd = _place(dM @ Au[:a_rank].to(acc).t(), Ad)
                gAu = _place(Ad[:, :a_rank].to(acc).t() @ dM, Au)
        else:
            want_sum = need[2] or y2 is not None
            thin = u if (b_grad and b_kind == _LORA) else sx.unsqueeze(1) if (b_grad and sx is not None) else None
            if thin is not None and want_sum and ctx.cpu_forms:
                # On CPU every reduction over tokens that B and the bias need comes from ONE skinny product
                # [1 | u or Σx]ᵀ g: one pass over g instead of two. (On a GPU the pass is cheap, a launch is not.)
                red = _token_dot(torch.cat([torch.ones_like(g2[:, :1]), thin.to(g2.dtype)], 1), g2, True).to(acc)
                gsum, red = red[0], red[1:]
            else:
                if thin is not None:
                    red = _token_dot(thin.to(g2.dtype), g2, ctx.cpu_forms).to(acc)
                if want_sum:
                    gsum = _colsum(g2, acc)
            gb = None  # per-output Σ_t g ⊙ (B x), reused for the A gradient below
            if b_grad and b_kind == _LORA:
                gBd_r = red.t()
                gBd = _place(gBd_r, Bd)
                # g Bd as a linear layer with a contiguous r x out weight: the layout CPU BLAS runs fastest.
                gu = torch.nn.functional.linear(g2, Bd[:, :b_rank].t().to(g2.dtype).contiguous())
                gBu = _place(_token_dot(gu, x2.to(gu.dtype), ctx.cpu_forms).to(acc), Bu)
                gb = (Bd[:, :b_rank].to(acc) * gBd_r).sum(1)
            elif b_grad and b_kind in (_VECTOR, _SCALAR):
                gsx = red[0]
                if b_kind == _VECTOR:
                    gBd = _place(gsx.unsqueeze(1), Bd)
                    gb = Bd[:, 0].to(acc) * gsx
                else:
                    gBd = _place(gsx.sum().view(1, 1), Bd)
                    gb = Bd[0, 0].to(acc) * gsx
            if y2 is not None:  # vector/scalar A: Σ_t g ⊙ h, h s = y - bias - B x
                corr = _column_dots(g2, y2, acc, ctx.cpu_forms)  # Σ_t g ⊙ y
                if bias is not None:
                    corr = corr - bias.to(acc) * gsum
                if gb is not None:  # B x's share of y (fused_linear only fuses this case with B trained)
                    corr = corr - gb
                if a_kind == _VECTOR:
                    gAd = _place((corr / (1 + Ad[:, 0].to(acc))).unsqueeze(1), Ad)
                else:
                    gAd = _place((corr.sum() / (1 + Ad[0, 0].to(acc))).view(1, 1), Ad)
        if need[2]:
            grad_bias = gsum.to(bias.dtype)
        return (
            grad_x,
            None,
            grad_bias,
            _cast(gAd, Ad),
            _cast(gAu, Au),
            _cast(gBd, Bd),
            _cast(gBu, Bu),
            None,
            None,
            None,
            None,
        )


def _colsum(t: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Sum over tokens, accumulated in at least float32 (bf16 activations under autocast)."""
    return t.sum(0) if t.dtype == acc else t.sum(0, dtype=acc)


# CPU token reductions aᵀb with a skinny a (T x r, r small) run as a batch of _TOKEN_CHUNKS partial products once
# T reaches _CHUNK_MIN_ROWS: MKL runs one (r x T)(T x n) product well below its GEMM speed (for a ViT-S fc1 at
# batch 32, 5.10 -> 3.53 ms for [1|u]ᵀg; measured in benchmarks/RESULTS.md).
_TOKEN_CHUNKS = 32
_CHUNK_MIN_ROWS = 2048


def _token_dot(a: torch.Tensor, b: torch.Tensor, cpu_forms: bool) -> torch.Tensor:
    """``aᵀ b``, a reduction over the token rows of ``a`` (T x r, r small) and ``b`` (T x n)."""
    rows = a.shape[0]
    if not cpu_forms or a.dtype not in (torch.float32, torch.float64) or rows < _CHUNK_MIN_ROWS:
        return a.t() @ b
    n = rows // _TOKEN_CHUNKS * _TOKEN_CHUNKS
    parts = torch.bmm(
        a[:n].view(_TOKEN_CHUNKS, -1, a.shape[1]).transpose(1, 2), b[:n].view(_TOKEN_CHUNKS, -1, b.shape[1])
    )
    out = parts.sum(0)
    if n < rows:
        out.addmm_(a[n:].t(), b[n:])
    return out


# Rows per block of the CPU column-dot reduction: a block of g ⊙ y stays in cache (about 1-3 MB).
_DOT_BLOCK_ELEMENTS = 1 << 19


def _column_dots(g: torch.Tensor, y: torch.Tensor, acc: torch.dtype, cpu_forms: bool) -> torch.Tensor:
    """``Σ_t g[t] ⊙ y[t]`` per column, accumulated in ``acc``.

    ``(g * y).sum(0)`` (which ``linalg.vecdot`` also does on CPU) materialises an output-sized product; for a
    ViT-S fc1 at batch 32 that is a fresh 39 MB buffer whose page faults cost 5x the arithmetic. On CPU the rows are
    reduced block by block instead, so the product never leaves the cache; on accelerators one fused call is best.
    """
    if not cpu_forms:
        return torch.linalg.vecdot(g.to(acc), y.to(acc), dim=0)
    rows = max(1, _DOT_BLOCK_ELEMENTS // max(1, g.shape[1]))
    if g.shape[0] <= rows:
        return (g.to(acc) * y.to(acc)).sum(0)
    out = torch.zeros(g.shape[1], dtype=acc, device=g.device)
    buf = torch.empty(rows, g.shape[1], dtype=acc, device=g.device)
    for start in range(0, g.shape[0], rows):
        n = min(rows, g.shape[0] - start)
        torch.mul(g[start : start + n].to(acc), y[start : start + n].to(acc), out=buf[:n])
        out += buf[:n].sum(0)
    return out


def _as(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return t if t is None or dtype is None else t.to(dtype)


def _place(block: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``block`` in the top-left corner of zeros shaped like ``like``: the gradient of a parameter whose leading
    rows/columns (a rank slice) were used. One pad instead of allocating zeros and copying in."""
    rows, cols = like.shape[0] - block.shape[0], like.shape[1] - block.shape[1]
    return torch.nn.functional.pad(block, (0, cols, 0, rows)) if rows or cols else block


def _cast(g: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return None if g is None else g.to(like.dtype)


def _from_weight_grad(G, Bd, Bu, b_kind, b_rank, acc):
    """B's gradients from the full weight gradient G (W_uni = ... + B)."""
    if b_kind == _NONE:
        return None, None
    gBu = None
    if b_kind == _LORA:
        gBd = _place(G @ Bu[:b_rank].to(acc).t(), Bd)
        gBu = _place(Bd[:, :b_rank].to(acc).t() @ G, Bu)
    elif b_kind == _VECTOR:
        gBd = _place(G.sum(1, keepdim=True), Bd)
    else:
        gBd = _place(G.sum().view(1, 1), Bd)
    return gBd, gBu


class ScaleGuard:
    """Answers "is every ``|1 + a|`` at least ``threshold``?" for a group of layers with one device read.

    Reading a device tensor on the host is a sync on a GPU: the host stops running ahead and waits, which asked once
    per vector/scalar-A layer cost a ViT-B step on an H100 about a third of its time. A group (the layers sharing a
    :class:`ManualPath`: one per model) reads column 0 of every member's ``Ad`` at once, and each member's answer
    is kept until its ``Ad`` changes (storage or version counter: an optimizer step or ``load_state_dict`` bumps
    it), so a training step pays one read. An edit through ``Ad.data`` bypasses the counter: edit ``Ad`` itself
    under ``torch.no_grad()`` instead.
    """

    def __init__(self, layers=(), threshold: float = 1e-2) -> None:
        self.layers = list(layers)
        self.threshold = threshold
        self._state: dict[int, tuple] = {}  # id(layer) -> (key, vector safe, scalar safe)

    def is_safe(self, layer, scalar: bool) -> bool:
        """For ``layer``'s vector A (all rows) or scalar A (row 0 only)."""
        state = self._state.get(id(layer))
        if state is None or state[0] != self._key(layer):
            self._refresh(layer)
            state = self._state[id(layer)]
        return state[2] if scalar else state[1]

    def _key(self, layer) -> tuple:
        return layer.Ad.data_ptr(), layer.Ad._version, self.threshold

    def _refresh(self, layer) -> None:
        ad = layer.Ad
        group = [m for m in self.layers if m is not layer and _same_kind(m.Ad, ad)] + [layer]
        with torch.no_grad():
            cols = torch.cat([m.Ad[:, 0] for m in group])
            bad = ((cols + 1).abs() < self.threshold).nonzero().flatten().tolist()  # the one device read
        starts = list(itertools.accumulate((m.Ad.shape[0] for m in group), initial=0))
        rows: dict[int, list[int]] = {}
        for i in bad:
            j = bisect.bisect_right(starts, i) - 1
            rows.setdefault(j, []).append(i - starts[j])
        for j, m in enumerate(group):
            hit = rows.get(j, [])
            self._state[id(m)] = (self._key(m), not hit, 0 not in hit)


def _same_kind(t: torch.Tensor | None, like: torch.Tensor) -> bool:
    return t is not None and t.device == like.device and t.dtype == like.dtype


@register_path
class ManualPath(LayerPath):
    """The hand-written backward, with its scale guard shared by the model's layers and its fallbacks counted."""

    name = "manual"
    shardable = False  # the scale guard reads every layer's supports at once, outside the blocks that hold them
    mixed_precision = False  # fp32 supports over a bf16 weight run on the autograd path

    def __init__(self, execution, layers=()) -> None:
        super().__init__(execution, layers)
        self.guard = ScaleGuard(self.layers, execution.scale_guard)
        self.fallbacks: Counter[str] = Counter()

    def unsupported(self, layer, x: torch.Tensor) -> str | None:
        """Why ``layer`` cannot run on this path for input ``x`` under its current choice (a key of
        :data:`FALLBACKS`), or ``None`` when it can."""
        a, b = layer.require_choice()[:2]
        if a.kind is Kind.GIFT:
            return "gift"
        if layer.weight.requires_grad:
            return "weight-trains"
        if layer.mixed_precision and not self.mixed_precision:
            return "mixed-precision"
        if not x.is_floating_point():
            return "non-float-input"
        if a.kind in (_VECTOR, _SCALAR):
            if not self.guard.is_safe(layer, scalar=a.kind == _SCALAR):
                return "scale-guard"
            if b.kind != _NONE and not layer.Bd.requires_grad:
                return "frozen-b"  # B's share of y is only known through its own gradient sums
        return None

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        reason = self.unsupported(layer, x)
        if reason is None:
            return manual_linear(layer, x, self.execution.forms)
        if not self.fallbacks[reason]:  # once per reason and model: a run sees each reason once in its log
            _logger.info(
                "GLoRA: layers run on the autograd path where the %s path cannot: %s (first: %r)",
                self.name,
                FALLBACKS[reason],
                layer.name,
            )
        self.fallbacks[reason] += 1
        return autograd_forward(layer, x)


def manual_linear(layer, x: torch.Tensor, forms: str = "auto") -> torch.Tensor:
    """``layer``'s output under its current choice through the hand-written backward (no fallback checks: see
    :meth:`ManualPath.unsupported`)."""
    choice = layer.require_choice()
    cpu_forms = forms == "cpu" or (forms == "auto" and x.device.type == "cpu")
    bias = uni_bias(layer.bias, layer.weight, layer.terms(choice))
    return _GLoRAFunction.apply(
        x,
        layer.weight,
        bias,
        layer.Ad,
        layer.Au,
        layer.Bd,
        layer.Bu,
        choice.A,
        choice.B,
        layer.output_edited_in_place,
        cpu_forms,
    )
