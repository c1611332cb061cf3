"""The exponential moving average of a network's weights, the copy that evaluation and sampling use.

An EMA copy is a ``torch.optim.swa_utils.AveragedModel`` held as an attribute of the module next to its network
(``net`` and ``net_ema``), so the checkpoint's keys are ``net_ema.module.*`` and ``net_ema.n_averaged``. A decay of
0 means no copy (None): evaluation uses the network itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def _warmup_ema(decay: float):
    """averaged += (current - averaged) * (1 - d), d = min(decay, (1 + n) / (10 + n)), over all parameters at once (the
    same float32 operations, in the same order, as one tensor at a time; a few foreach calls instead of a Python loop
    of four operations per parameter)."""
    @torch.no_grad()
    def multi_avg_fn(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        d = min(decay, (1.0 + float(num_averaged)) / (10.0 + float(num_averaged)))
        diff = torch._foreach_sub(current, averaged)
        torch._foreach_mul_(diff, 1.0 - d)
        torch._foreach_add_(averaged, diff)
    return multi_avg_fn


def make_ema(net: nn.Module, decay: float, warmup: bool = True) -> AveragedModel | None:
    """An EMA copy of ``net`` (None for decay 0); ``warmup``: decay min(decay, (1 + n) / (10 + n))."""
    if decay <= 0:
        return None
    ema = (AveragedModel(net, multi_avg_fn=_warmup_ema(decay)) if warmup
           else AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay)))
    ema.requires_grad_(False)
    return ema


def evaluated(net: nn.Module, ema: AveragedModel | None) -> nn.Module:
    """The network as evaluation uses it: its EMA copy if it has one."""
    return ema.module if ema is not None else net


def update_ema(pairs: Iterable[tuple[nn.Module | None, AveragedModel | None]]) -> None:
    """One EMA update of every (network, EMA copy) pair that has a copy; call it inside the optimiser step, so that a
    checkpoint taken after the step includes the update."""
    for net, ema in pairs:
        if net is not None and ema is not None:
            update_parameters(ema, net)


class _Tensors:
    """The parameters and buffers of a module, in ``parameters()`` / ``buffers()`` order, found once. Every link
    that led to them is kept: each submodule with its parent and name, each tensor with every module that holds it
    and its name there (a tensor shared by two modules has two). A later call checks that every link still holds,
    one dict look-up each, instead of walking the module tree again. The module itself is not kept (its own tensors
    and children say ``None`` for it), so the cache does not keep it alive."""

    def __init__(self, module: nn.Module) -> None:
        own = lambda m: None if m is module else m  # noqa: E731
        self.links = [(own(parent), name, child) for parent in module.modules(remove_duplicate=False)
                      for name, child in parent._modules.items() if child is not None]
        self.slots = [(own(m), "_parameters", n, p) for m in module.modules(remove_duplicate=False)
                      for n, p in m._parameters.items() if p is not None]
        self.slots += [(own(m), "_buffers", n, b) for m in module.modules(remove_duplicate=False)
                       for n, b in m._buffers.items() if b is not None]
        self.param_list = list(module.parameters())
        self.buffer_list = list(module.buffers())

    def current(self, module: nn.Module) -> bool:
        return all((parent or module)._modules.get(name) is child for parent, name, child in self.links) \
            and all(getattr(owner or module, kind).get(name) is t for owner, kind, name, t in self.slots)


_found: weakref.WeakKeyDictionary[nn.Module, _Tensors] = weakref.WeakKeyDictionary()


def _tensors(module: nn.Module) -> _Tensors:
    """``module``'s parameters and buffers, found again where a submodule or a tensor was replaced since (e.g. by
    ``load_state_dict(..., assign=True)``, a move to a device that makes new tensors, or weights untied). The
    networks vsmd averages keep their structure once built: a module or tensor registered where there was none
    before would not be seen."""
    found = _found.get(module)
    if found is None or not found.current(module):
        found = _found[module] = _Tensors(module)
    return found


@torch.no_grad()
def update_parameters(ema: AveragedModel, net: nn.Module) -> None:
    """``ema.update_parameters(net)`` without its walk of per-parameter detach and device moves: the same
    operations on the same tensors (the first update copies, later ones apply the copy's ``multi_avg_fn`` to all
    parameters in one call; elementwise, so one call over every device and dtype equals one call per group), then
    the buffers are synced and ``n_averaged`` counts. Copies that average otherwise (an ``avg_fn``, buffers averaged,
    parameters on another device than the network's) take AveragedModel's own path. The tensors of both networks are
    found once and checked in place at each call (``_tensors``)."""
    mine, theirs = _tensors(ema.module), _tensors(net)
    averaged, current = mine.param_list, theirs.param_list
    if ema.multi_avg_fn is None or ema.use_buffers or len(averaged) != len(current) or not averaged \
            or averaged[0].device != current[0].device:
        ema.update_parameters(net)
        return
    if int(ema.n_averaged) == 0:
        torch._foreach_copy_(averaged, current)
    else:
        ema.multi_avg_fn(averaged, current, ema.n_averaged)
    for b_ema, b_net in zip(mine.buffer_list, theirs.buffer_list, strict=True):
        b_ema.copy_(b_net)
    ema.n_averaged += 1


def match_ema(state: dict[str, Tensor], has_copy: bool, net: str = "net", ema: str = "net_ema") -> None:
    """Let a resume switch EMA on or off (ema_decay 0 <-> > 0), in a checkpoint's state dict before it is loaded
    (Lightning loads it strictly): drop the checkpoint's EMA weights when this module has no copy, or start the new
    copy from the checkpoint's network (the next update copies the network)."""
    has_ema = any(k.startswith(f"{ema}.") for k in state)
    if not has_copy and has_ema:
        for k in [k for k in state if k.startswith(f"{ema}.")]:
            del state[k]
    elif has_copy and not has_ema:
        n = len(net) + 1
        state.update({f"{ema}.module.{k[n:]}": v.clone() for k, v in list(state.items()) if k.startswith(f"{net}.")})
        state[f"{ema}.n_averaged"] = torch.tensor(0, dtype=torch.long)
