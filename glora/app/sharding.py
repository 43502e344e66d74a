"""Fully sharded data parallelism (``--fsdp``): a supernet whose frozen backbone does not fit on one device.

Under ``torchrun`` with ``--fsdp``, each transformer block (and then the root) is wrapped by torch's FSDP2
``fully_shard``: every parameter, frozen or trainable, is split along its first dimension over the processes, and
a block's full weights exist only while that block runs. How a sharded run stays the run one process makes:

* every rank draws the same subnet from the same seeded RNG (the choice codes are buffers, never sharded), and the
  subnet's unused supports keep ``grad = None`` (their sharded gradients are dropped after the reduce-scatter);
* each rank's loss is its share of the global batch's mean, so gradients are reduce-scattered as a plain sum
  (:func:`shard_model` sets the divide factor to 1: FSDP's default average would halve every step's gradient
  on two ranks);
* only rank 0 reads the pretrained weights into host memory; the others build the architecture on the meta device
  (:func:`skeleton`, no memory) and receive their shards from rank 0 (:func:`distribute_from_rank0`);
* checkpoints hold full, unsharded tensors (trainable values and AdamW state, gathered on every rank, written by
  rank 0): the same file as a run without ``--fsdp``, so a run may resume with or without sharding, and search and
  export read it as any other.

Only the static and autograd execution paths run sharded: the manual path's scale guard reads every layer's
tensors at once, outside the block that holds them unsharded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from glora._text import first_line

__all__ = [
    "available",
    "shard_model",
    "is_sharded",
    "shard_units",
    "full",
    "assign_",
    "full_optimizer_state",
    "sharded_optimizer_state",
    "check_path",
    "fsdp_wanted",
    "skeleton",
    "distribute_from_rank0",
    "align_to_rank0",
    "build_on_ranks",
    "place_model",
    "weightless",
]

_logger = logging.getLogger(__name__)


def available() -> str | None:
    """None when this torch has FSDP2 (``torch.distributed.fsdp.fully_shard``), else why not."""
    if not torch.distributed.is_available():
        return f"torch {torch.__version__} was built without torch.distributed"
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2 needs torch >= 2.6)"
    return None


def _dtensor_class() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed
        return None
    return DTensor


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or a module in it) is wrapped by ``fully_shard``."""
    if available() is not None:
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules each get their own ``fully_shard`` (one all-gather per unit, freed after it runs): a transformers
    model's ``_no_split_modules`` blocks, else the repeated blocks of the longest container of same-class modules
    (timm's ``blocks``). Empty when the model has no repeated blocks (the root alone is then sharded). A unit holding
    a tensor that a module outside it also uses (embeddings tied to the output layer) is left to the root, which is
    whole whenever any of its users runs."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    if names:
        found = [m for m in model.modules() if type(m).__name__ in names]
        if found:
            return _self_contained(model, _outermost(found))
    return _self_contained(model, _repeated_blocks(model))


def _self_contained(model: nn.Module, units: list[nn.Module]) -> list[nn.Module]:
    """The units none of whose tensors is used outside them."""
    users: dict[int, int] = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return [u for u in units if all(users[id(p)] == n for p, n in _uses(u).items())]


def _uses(module: nn.Module) -> dict[nn.Parameter, int]:
    """How many times each parameter is registered inside ``module``."""
    counts: dict[nn.Parameter, int] = {}
    for _, p in module.named_parameters(remove_duplicate=False):
        counts[p] = counts.get(p, 0) + 1
    return counts


def _repeated_blocks(model: nn.Module) -> list[nn.Module]:
    best: list[nn.Module] = []
    for container in model.modules():
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(container.children())
        kinds = Counter(type(c) for c in children)
        if len(children) >= 2 and len(kinds) == 1 and len(children) > len(best):
            if any(True for _ in children[0].parameters()):
                best = children
    return best


def _outermost(modules: list[nn.Module]) -> list[nn.Module]:
    """Drop the modules nested inside another listed one (a block class used at two levels)."""
    inner = {id(sub) for m in modules for sub in m.modules() if sub is not m}
    return [m for m in modules if id(m) not in inner]


def shard_model(model: nn.Module, device: torch.device, world: int) -> int:
    """Wrap ``model`` with FSDP2 over ``world`` processes on ``device``'s type (the process group must exist): each
    block, then the root. Parameters move to ``device`` as their shards. Returns the number of blocks."""
    why = available()
    if why is not None:
        raise ValueError(f"--fsdp: {why}")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    units = shard_units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            # A plain sum (each rank's loss is already its share of the global mean); a sum with a factor of 1 as
            # well, not a pre-multiplied one, which gloo lacks.
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    _logger.info("FSDP: %d blocks and the root sharded over %d processes", len(units), world)
    return len(units)


def weightless(spec: Any) -> Any:
    """A :class:`glora.app.backbone.BackboneSpec` that builds the same architecture without reading weights."""
    import dataclasses

    return dataclasses.replace(spec, pretrained=False, pretrained_file=None)


def skeleton(build: Callable[[torch.device | str], nn.Module]) -> nn.Module:
    """``build(device)``'s model on the meta device: shapes and dtypes, no memory and no weights read. A model whose
    constructor computes values (which the meta device cannot) is built on the host instead, without pretrained
    weights."""
    try:
        with torch.device("meta"):
            return build("meta")
    except Exception as e:  # any architecture: whatever its constructor does on the meta device
        _logger.warning("cannot build the model on the meta device (%s); building it on the host", first_line(e))
        return build("cpu")


def _layout(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {n: (tuple(t.shape), t.dtype) for n, t in [*model.named_parameters(), *model.named_buffers()]}


def _match(model: nn.Module, layout: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    """Give the skeleton rank 0's dtypes (a checkpoint's own dtype is known only once its weights are read), keeping
    tied tensors tied; ``ValueError`` when the two models differ."""
    own = _layout(model)
    if own.keys() != layout.keys():
        diff = sorted(own.keys() ^ layout.keys())
        raise ValueError(f"--fsdp: this rank built another model than rank 0 ({len(diff)} tensors differ: {diff[0]!r})")
    for name, (shape, _) in layout.items():
        if own[name][0] != shape:
            raise ValueError(f"--fsdp: {name!r} has shape {own[name][0]} here, {shape} on rank 0")
    wanted = {id(t): layout[n][1] for n, t in [*model.named_parameters(), *model.named_buffers()]}
    replaced: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for module in model.modules():
            for store, make in ((module._parameters, _as_param), (module._buffers, lambda t, old: t)):
                for key, t in store.items():
                    if t is None or id(t) not in wanted or t.dtype == wanted[id(t)]:
                        continue
                    if id(t) not in replaced:  # a tensor shared by two modules (tied embeddings) is cast once
                        replaced[id(t)] = make(t.to(wanted[id(t)]), t)
                    store[key] = replaced[id(t)]


def _as_param(data: torch.Tensor, old: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(data, requires_grad=old.requires_grad)


def align_to_rank0(model: nn.Module, job: Any) -> None:
    """A :func:`skeleton` takes rank 0's dtypes (checked to have its names and shapes): call it on every rank."""
    layout = job.broadcast_object(_layout(model) if job.main else None)
    if not job.main:
        _match(model, layout)


def distribute_from_rank0(model: nn.Module, job: Any, device: torch.device) -> int:
    """Shard ``model`` (whole on rank 0, a :func:`skeleton` elsewhere) and give every rank its shards of rank 0's
    tensors: only rank 0 reads the pretrained weights into host memory. Returns the number of blocks sharded."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    align_to_rank0(model, job)
    state = model.state_dict() if job.main else {}
    blocks = shard_model(model, device, job.world)
    if not job.main:
        model.to_empty(device=device)
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del state
    with torch.no_grad():  # buffers the state dict leaves out (computed in a constructor: rotary frequencies)
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    return blocks


def build_on_ranks(
    whole: Callable[[], nn.Module], shell: Callable[[torch.device | str], nn.Module], job: Any, sharded: bool
) -> nn.Module:
    """The model a rank builds: ``whole()`` (weights read) on every rank unsharded, on rank 0 alone sharded; the
    other ranks of a sharded job build ``shell(device)``'s :func:`skeleton` with rank 0's dtypes. Train and search
    build their models through this, then :func:`place_model`."""
    if not sharded or job.main:
        model = whole()
    else:
        model = skeleton(shell)
    if sharded:
        align_to_rank0(model, job)
    return model


def place_model(model: nn.Module, job: Any, device: torch.device, sharded: bool) -> nn.Module:
    """The model where it runs: moved to ``device``, or sharded over the job's ranks from rank 0's tensors."""
    if sharded:
        distribute_from_rank0(model, job, device)
        return model
    return model.to(device)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank must call it for the same tensors, in the same order);
    a plain tensor as it is."""
    dtensor = _dtensor_class()
    if dtensor is not None and isinstance(t, dtensor):
        return t.full_tensor()
    return t


def _like(template: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor, present on every rank) laid out as ``template``: this rank's shard when the
    template is sharded, no communication."""
    dtensor = _dtensor_class()
    value = value.to(device=template.device, dtype=template.dtype)
    if dtensor is None or not isinstance(template, dtensor):
        return value
    from torch.distributed.tensor import distribute_tensor

    try:
        return distribute_tensor(value, template.device_mesh, template.placements, src_data_rank=None)
    except TypeError:  # a torch without src_data_rank: scattered from rank 0 instead (every rank holds the same)
        return distribute_tensor(value, template.device_mesh, template.placements)


@torch.no_grad()
def assign_(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole tensor into ``param`` (sharded or not)."""
    param.copy_(_like(param, value))


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with every sharded tensor whole, on the CPU: the same layout a run without
    sharding saves (a collective under FSDP: call it on every rank)."""
    state = optimizer.state_dict()
    return {
        **state,
        "state": {
            i: {k: full(v).to("cpu", copy=True) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            for i, s in state["state"].items()
        },
    }


def sharded_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> dict[str, Any]:
    """A saved (whole) optimizer state laid out as ``optimizer``'s parameters are: each moment becomes this rank's
    shard of it. Scalars (the step count) stay as they are."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    out: dict[int, dict[str, Any]] = {}
    for key, s in state["state"].items():
        p = params[int(key)]
        out[key] = {
            k: _like(p, v) if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape) else v
            for k, v in s.items()
        }
    return {**state, "state": out}


def fsdp_wanted(args: Any, job: Any) -> bool:
    """Whether a command shards its model: ``--fsdp`` under torchrun with more than one process. Refuses the options
    a sharded model cannot run with, before anything is built."""
    if not getattr(args, "fsdp", False):
        return False
    if not job.enabled:
        _logger.warning(
            "--fsdp in a single process: nothing to shard over, running unsharded (start it with torchrun "
            "--nproc_per_node=N to shard)"
        )
        return False
    why = available()
    if why is not None:
        raise ValueError(f"--fsdp: {why}")
    if getattr(args, "compile", None):
        raise ValueError("--compile cannot be combined with --fsdp: a sharded supernet runs eagerly; drop --compile")
    check_path(getattr(args, "execution", "auto"))
    return True


def check_path(path: str) -> str:
    """The execution path a sharded model runs (the paths declare it: ``auto`` becomes ``static``; ``manual``,
    whose scale guard reads every layer at once, is refused)."""
    from glora.paths import sharded_path

    try:
        return sharded_path(path)
    except ValueError as e:
        raise ValueError(f"--execution {path} cannot run under --fsdp ({e})") from None
