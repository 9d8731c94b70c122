"""The architecture of a compacted model: per-layer widths that rebuild it, and the conv that carries folded constants.

``main.compaction`` removes dead channels; what it leaves is the ordinary model with narrower convs and BatchNorms,
some ASPP branches gone, and some convs that read a removed constant channel through zero padding
(``FoldedConv2d``).  ``compact_spec`` records exactly that (plain types), and ``apply_compact_spec`` turns a model
built from the run's config (``main.models.model_for``) into that shape, so a compact checkpoint is rebuilt by
``main.checkpoint.model_from_checkpoint`` like any other and can be evaluated, exported or trained (the fresh
modules carry the architecture's initialisation, so training from random init works on the rebuilt model too).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import MultiTaskModel
from .models.heads import ASPPHead
from .sparse import SoftThresholdConv2d

COMPACT_FORMAT = "adapmtl-compact-v1"


class FoldedConv2d(SoftThresholdConv2d):
    """A conv plus the exact contribution of removed input channels that were constant.

    A removed channel that was constant k (e.g. relu(β − γ·μ/σ) after a zero conv) contributed
    ``conv2d(k·ones, W[:, c])`` to this conv.  Inside the image that is a constant; within reach of the zero
    padding it is not, because padded taps read 0 instead of k.  With ``constant_taps[o, 0] = Σ_c k_c·W[o, c]``
    the contribution of all of them is ``conv2d(ones(H, W), constant_taps)`` with this conv's stride, padding and
    dilation: exact at every position, computed once per input size and cached (one input channel, so it costs
    out_channels·kh·kw numbers of storage).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("constant_taps", torch.zeros(self.out_channels, 1, *self.kernel_size))
        self._constant_cache: tuple[tuple, Tensor] | None = None

    @torch.no_grad()
    def constant_map(self, x: Tensor) -> Tensor:
        taps = self.constant_taps
        key = (tuple(x.shape[-2:]), x.device, taps._version, taps.data_ptr())
        if self._constant_cache is None or self._constant_cache[0] != key:
            ones = torch.ones((1, 1, *x.shape[-2:]), device=x.device, dtype=taps.dtype)
            plane = F.conv2d(ones, taps, None, self.stride, self.padding, self.dilation)
            self._constant_cache = (key, plane)
        return self._constant_cache[1]

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out + self.constant_map(x).to(out.dtype)


def compact_spec(model: MultiTaskModel) -> dict:
    """Every conv's (in, out, groups, bias, folded) and BatchNorm's width, and each head's surviving branches."""
    convs = {n: [m.in_channels, m.out_channels, m.groups, m.bias is not None, isinstance(m, FoldedConv2d)]
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    bns = {n: m.num_features for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    branches = {t: list(h.branch_names) for t, h in model.heads.items() if isinstance(h, ASPPHead)}
    return {"format": COMPACT_FORMAT, "convs": convs, "bns": bns, "branches": branches}


def new_conv(like: nn.Conv2d, cin: int, cout: int, groups: int, bias: bool, folded: bool) -> SoftThresholdConv2d:
    """A conv with ``like``'s geometry and the given widths (freshly initialised, on ``like``'s device)."""
    cls = FoldedConv2d if folded else SoftThresholdConv2d
    conv = cls(cin, cout, like.kernel_size, stride=like.stride, padding=like.padding, dilation=like.dilation,
               groups=groups, bias=bias, padding_mode=like.padding_mode)
    return conv.to(like.weight.device, like.weight.dtype)


def new_bn(like: nn.BatchNorm2d, features: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(features, eps=like.eps, momentum=like.momentum, affine=like.affine,
                        track_running_stats=like.track_running_stats)
    return bn.to(like.weight.device, like.weight.dtype)


def replace_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def rewrap(model: MultiTaskModel) -> MultiTaskModel:
    """A new ``MultiTaskModel`` around ``model``'s (modified) modules, so its per-component conv lists are current."""
    small = MultiTaskModel(model.backbone, dict(model.heads), sparse=model.sparse,
                           threshold_scope=model.threshold_scope)
    with torch.no_grad():
        for name, s in model.thresholds.items():
            small.thresholds[name].copy_(s)
    small.set_sparse(model.sparse)
    small.set_threshold_kernel(model.threshold_kernel)
    return small.train(model.training)


def apply_compact_spec(model: MultiTaskModel, spec: Mapping) -> MultiTaskModel:
    """``model`` (built from the run's config) reshaped as ``spec`` says; raises ``ValueError`` if it does not fit."""
    if spec.get("format") != COMPACT_FORMAT:
        raise ValueError(f"unknown compact format {spec.get('format')!r}")
    modules = dict(model.named_modules())
    for task, names in spec["branches"].items():
        head = model.heads[task]
        for name in [n for n in head.branch_names if n not in names]:
            head.remove_branch(name)
    for path, (cin, cout, groups, bias, folded) in spec["convs"].items():
        old = modules.get(path)
        if not isinstance(old, nn.Conv2d):
            raise ValueError(f"the model has no conv {path}")
        if [old.in_channels, old.out_channels, old.groups, old.bias is not None, isinstance(old, FoldedConv2d)] \
                != [cin, cout, groups, bias, folded]:
            replace_module(model, path, new_conv(old, cin, cout, groups, bias, folded))
    for path, features in spec["bns"].items():
        old = modules.get(path)
        if not isinstance(old, nn.BatchNorm2d):
            raise ValueError(f"the model has no BatchNorm {path}")
        if old.num_features != features:
            replace_module(model, path, new_bn(old, features))
    init = getattr(model.backbone, "_init_weights", None)
    if callable(init):  # fresh backbone modules get the architecture's initialisation (random-init training)
        init()
    return rewrap(model)
