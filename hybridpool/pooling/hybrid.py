"""HybridPool: several global poolings of the same feature map, mixed by learned weights.

Mixing modes, for ``n`` branches whose descriptors ``D`` are ``(B, n, C)``:

- ``"scalar"``: one softmax weight per branch, ``out = sum_i w_i D_i``;
- ``"channel"``: per-channel softmax weights ``(n, C)``;
- ``"gate"``: per-sample weights ``(B, n)`` from a small gating network on the branch descriptors;
- ``"concat"``: concatenation ``(B, n * C)`` (``feat_mult() == n``), the fixed baseline.

``branch_norm=True`` puts the branches on one scale before mixing: each descriptor ``D_i`` is divided by its
per-sample RMS over channels, and the mix is multiplied back by the avg branch's RMS (the mean RMS of the branches
without one), so max (larger) and avg (smaller) descriptors enter the weighted sum alike and the output keeps GAP's
scale; with ``init="gap"`` it starts as GAP up to rounding.

``init="gap"`` starts as exact global average pooling, so swapping the layer into a trained GAP model changes
nothing at step 0: the output is ``(1 - blend) * GAP + blend * mix(D)`` with a learnable ``blend`` that starts at 0.
The weights actually applied (``effective_weights``) account for the blend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._base import PoolBase, check_channels, scale_free_layer_norm
from .kernels import pool_branches
from .registry import SINGLE_POOLS, canonical_name

MIXING_MODES = ("scalar", "channel", "gate", "concat")
INITS = ("uniform", "gap")
_FUSABLE = ("avg", "max", "gem", "attn")
_WHOLE_MAP = ("flatten",)  # registered layers that are not poolings: their width is C * H * W, not C


def _branch_names(branches: Sequence[str]) -> dict[str, str]:
    """Unique branch name -> canonical layer name; a repeated layer gets a suffix (``gem``, ``gem_1``)."""
    names: dict[str, str] = {}
    for spec in branches:
        base = canonical_name(spec)
        name, i = base, 1
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names[name] = base
    return names


class HybridPool(PoolBase):
    """A learned mixture of global poolings (any subset of avg, max, gem, lse, kmax, attn, qattn).

    Args:
        channels: input channels ``C`` (required).
        branches: branch layer names, e.g. ``("avg", "max", "gem", "attn")``; a repeated name gets a suffix.
        mixing: ``"scalar"``, ``"channel"``, ``"gate"`` or ``"concat"`` (see the module docstring).
        init: ``"uniform"`` (equal weights) or ``"gap"`` (exact GAP at step 0; needs an ``"avg"`` branch and a
            weighted mixing mode).
        gate_hidden: hidden width of the gating network (``mixing="gate"``).
        branch_kwargs: constructor arguments per branch name, e.g. ``{"gem": {"p": 2.0}, "attn": {"heads": 4}}``.
        branch_norm: mix RMS-normalised descriptors, rescaled to the avg branch's RMS (module docstring).
        fused: compute the avg, max, gem and attn branches together in one pass with a shared backward
            (:mod:`hybridpool.pooling.kernels`); ``False`` runs every branch on its own (same values).
    """

    def __init__(
        self,
        channels: int,
        branches: Sequence[str] = ("avg", "max", "gem", "attn"),
        mixing: str = "scalar",
        init: str = "uniform",
        gate_hidden: int = 64,
        branch_kwargs: Mapping[str, Mapping] | None = None,
        branch_norm: bool = False,
        fused: bool = True,
        flatten: bool = True,
        input_fmt: str = "NCHW",
    ) -> None:
        check_channels(channels, "HybridPool", required=True)
        super().__init__(channels, flatten, input_fmt)
        if isinstance(branches, str):
            raise TypeError(f"branches must be a sequence of names such as ('avg', 'gem'), got the string {branches!r}")
        if len(branches) < 1:
            raise ValueError("HybridPool needs at least one branch")
        if mixing not in MIXING_MODES:
            raise ValueError(f"unknown mixing {mixing!r}; accepted: {', '.join(MIXING_MODES)}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; accepted: {', '.join(INITS)}")
        layer_of = _branch_names(list(branches))
        names = list(layer_of)
        branch_kwargs = dict(branch_kwargs or {})
        unknown = set(branch_kwargs) - set(names)
        if unknown:
            raise ValueError(f"branch_kwargs for {sorted(unknown)}, which are not branches; branches: {names}")
        for name, layer in layer_of.items():
            if layer in _WHOLE_MAP:  # before construction, so that no constructor error asks for its arguments
                raise ValueError(
                    f"HybridPool branch {name!r} is not a pooling: {SINGLE_POOLS[layer].__name__} returns "
                    f"(B, C * H * W) (feat_mult() = H * W), but every branch must return (B, C) to be mixed with the "
                    f"others; use {layer!r} as the model's pool on its own instead"
                )
        self.branches = nn.ModuleDict(
            {name: SINGLE_POOLS[layer](channels, **branch_kwargs.get(name, {})) for name, layer in layer_of.items()}
        )
        for name, branch in self.branches.items():
            if branch.feat_mult() != 1:
                raise ValueError(
                    f"HybridPool branch {name!r} ({type(branch).__name__}) returns {branch.feat_mult()} * C features "
                    f"per sample (feat_mult() = {branch.feat_mult()}), but every branch must return (B, C) to be "
                    f"mixed with the others"
                )
        if branch_norm and mixing == "concat":
            raise ValueError("branch_norm=True needs a weighted mixing mode, not mixing='concat'")
        self.mixing = mixing
        self.init = init
        self.branch_norm = bool(branch_norm)
        self.fused = fused
        # The first avg / max / gem / attn branch of each kind can share one pass (see kernels/).
        self._fusable = {layer: name for name, layer in reversed(layer_of.items()) if layer in _FUSABLE}
        n = len(names)
        if init == "gap":
            if "avg" not in names:
                raise ValueError(f"init='gap' needs an 'avg' branch; branches: {names}")
            if mixing == "concat":
                raise ValueError("init='gap' is not available with mixing='concat' (its output is wider than GAP's)")
            self.blend = nn.Parameter(torch.zeros(()))
        if mixing == "scalar":
            self.mix_logits = nn.Parameter(torch.zeros(n))
        elif mixing == "channel":
            self.mix_logits = nn.Parameter(torch.zeros(n, channels))
        elif mixing == "gate":
            self.mix_logits = nn.Parameter(torch.zeros(n))  # the input-independent part of the gate
            self.gate = nn.Sequential(  # applied to scale_free_layer_norm(descriptors)
                nn.Linear(n * channels, gate_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(gate_hidden, n),
            )
            nn.init.zeros_(self.gate[-1].weight)  # starts at the static weights, then learns to condition
            nn.init.zeros_(self.gate[-1].bias)

    @property
    def branch_names(self) -> list[str]:
        return list(self.branches.keys())

    def feat_mult(self) -> int:
        return len(self.branches) if self.mixing == "concat" else 1

    def _fused_descriptors(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fusable branches in one pass: ``x`` ``(B, C, H, W)`` -> (``(B, k, C)`` in the order avg, max, gem,
        attn, {branch.attn: map})."""
        gem = self.branches[self._fusable["gem"]] if "gem" in self._fusable else None
        attn = self.branches[self._fusable["attn"]] if "attn" in self._fusable else None
        descriptors, attn_map = pool_branches(
            x,
            tuple(layer in self._fusable for layer in _FUSABLE),
            p=gem.p if gem is not None else None,
            weight=attn.proj.weight if attn is not None else None,
            log_temperature=attn.log_temperature if attn is not None else None,
            eps=gem.eps if gem is not None else 0.0,
            exact_avg=self.init == "gap",  # GAP at step 0, bit for bit
        )
        extras = {} if attn_map is None else {f"{self._fusable['attn']}.attn": attn_map}
        return descriptors, extras

    def _descriptors(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x`` ``(B, C, H, W)`` -> branch descriptors ``(B, n, C)`` and the branches' extras, keyed by branch."""
        outs, extras = {}, {}
        if self.fused and len(self._fusable) > 1:
            descriptors, extras = self._fused_descriptors(x)
            names = [self._fusable[layer] for layer in _FUSABLE if layer in self._fusable]
            if names == self.branch_names:  # every branch fused, in the fused order: no unbind and re-stack
                return descriptors, extras
            outs = dict(zip(names, descriptors.unbind(1), strict=True))
        for name, branch in self.branches.items():
            if name not in outs:
                outs[name], branch_extras = branch.pool(x, need_extras)
                extras.update({f"{name}.{k}": v for k, v in branch_extras.items()})
        return torch.stack([outs[name] for name in self.branches], dim=1), extras

    def _weights(self, descriptors: torch.Tensor) -> torch.Tensor:
        """Effective mixing weights: ``(n,)`` scalar, ``(n, C)`` channel or ``(B, n)`` gate; they sum to 1 over n."""
        logits = self.mix_logits
        if self.mixing == "gate":
            logits = logits + self.gate(scale_free_layer_norm(descriptors.flatten(1).to(logits.dtype)))  # (B, n)
        branch_dim = -2 if self.mixing == "channel" else -1
        return self._blend_with_gap(torch.softmax(logits, dim=branch_dim), branch_dim)

    def _blend_with_gap(self, weights: torch.Tensor, branch_dim: int) -> torch.Tensor:
        """With ``init="gap"``: ``(1 - blend) * onehot(avg) + blend * weights`` along ``branch_dim``."""
        if not hasattr(self, "blend"):
            return weights
        onehot = torch.zeros_like(weights)
        onehot.select(branch_dim, self.branch_names.index("avg")).fill_(1.0)
        return torch.lerp(onehot, weights, self.blend)

    def pool(self, x: torch.Tensor, need_extras: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        descriptors, extras = self._descriptors(x, need_extras)  # (B, n, C)
        if self.mixing == "concat":
            out = descriptors.flatten(1)
            weights = None
        else:
            # mixed in the weights' dtype (float32 for half-precision descriptors): the mixing-logit gradient
            # sum(g * D) overflows float16 long before the descriptors do
            weights = self._weights(descriptors)
            work = descriptors.to(weights.dtype) if descriptors.dtype != weights.dtype else descriptors
            scale = None
            if self.branch_norm:
                rms = work.pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()  # (B, n, 1)
                names = self.branch_names
                scale = rms[:, names.index("avg")] if "avg" in names else rms.mean(1)  # (B, 1)
                work = work / rms
            if self.mixing == "gate":
                out = torch.einsum("bn,bnc->bc", weights, work)
            elif self.mixing == "channel":
                out = (work * weights).sum(1)
            elif torch.is_grad_enabled():
                out = torch.einsum("n,bnc->bc", weights, work)
            else:  # the same sum; on a CPU matmul's forward is about 3x faster and einsum's backward 2x
                out = torch.matmul(weights, work)
            if scale is not None:
                out = out * scale
            out, weights = out.to(descriptors.dtype), weights.to(descriptors.dtype)
        if need_extras:
            extras["descriptors"] = descriptors
            attn_keys = [k for k in extras if k.endswith(".attn")]
            if attn_keys:
                extras["attn"] = extras[attn_keys[0]]
            if weights is not None:
                b, n = descriptors.shape[:2]
                extras["mix"] = (
                    weights.expand(b, *weights.shape[-2:]) if self.mixing == "channel" else (weights.expand(b, n))
                )
        return out, extras

    @torch.no_grad()
    def effective_weights(self) -> dict[str, torch.Tensor]:
        """Current input-independent mixing weights per branch: ``()`` (scalar, gate bias) or ``(C,)`` (channel)."""
        if self.mixing == "concat":
            return {}
        weights = self._blend_with_gap(torch.softmax(self.mix_logits, dim=0), 0)
        return {name: weights[i] for i, name in enumerate(self.branch_names)}

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, w in self.effective_weights().items():
            out[f"mix/{name}"] = float(w.float().mean())
            if w.dim():
                out[f"mix/{name}_std"] = float(w.float().std(unbiased=False))
        if hasattr(self, "blend"):
            out["mix/blend"] = float(self.blend)
        for name, branch in self.branches.items():
            out.update({f"{name}/{k}": v for k, v in branch.stats().items()})
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mixing={self.mixing!r}, init={self.init!r}"
