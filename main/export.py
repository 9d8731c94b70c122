"""Sparse export: the effective weights of a checkpoint, stored compactly in one safetensors file.

AdapMTL keeps dense weights plus a threshold and applies ``sign(W)·relu(|W| − τ)`` in every forward, so a
checkpoint is as large as a dense one.  The export bakes the thresholds (or hard masks: pruned weights are
already zero), then stores every prunable conv weight as a packed bitmask of its non-zeros plus the non-zero
values, and every other tensor as is.  Thresholds and optimiser state are dropped.  The config travels in the
metadata, so ``test.py --path FILE.safetensors`` evaluates the export directly.

    python -m main.export --path RUN/segment_semantic_normal_depth_zbuffer.model --out model.safetensors

``--compact`` instead removes the dead channels physically (``main.compaction``) and writes a smaller checkpoint:

    python -m main.export --path RUN/segment_semantic_normal_depth_zbuffer.model --compact --out small.model
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_write_bytes
from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from .compact_arch import apply_compact_spec
from .compaction import describe, write_compact
from .config import Config
from .data import dataset_info
from .errors import ArgumentParser, UserError, cli_main
from .masks import prunable_weights
from .models import MultiTaskModel, model_for
from .output_file import COMPACT_MODEL, OutputKind, check_output_file

FORMAT = "adapmtl-sparse-v1"
HEADER_LIMIT = 100 << 20  # safetensors' own bound on the header's JSON


def _pack(weight: Tensor) -> tuple[Tensor, Tensor]:
    nonzero = (weight != 0).flatten().numpy()
    return torch.from_numpy(np.packbits(nonzero)), weight.flatten()[torch.from_numpy(nonzero)].clone()


def _unpack(bits: Tensor, values: Tensor, shape: list[int]) -> Tensor:
    n = int(np.prod(shape))
    nonzero = torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool))
    out = torch.zeros(n, dtype=values.dtype)
    out[nonzero] = values
    return out.view(shape)


def export_model(model: MultiTaskModel, cfg: Config, out: str | Path, compact: dict | None = None) -> dict:
    """Write ``model``'s effective weights to ``out``; returns size information.  ``compact``: the architecture of
    a compacted model (its checkpoint's ``compact`` entry), stored so the export rebuilds at its widths."""
    from safetensors.torch import save

    model = model.cpu()
    model.bake_thresholds()
    packed = [w.param for w in prunable_weights(model)]
    param_names = {id(p): n for n, p in model.named_parameters()}
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for key, value in model.state_dict().items():
        if key.startswith("thresholds."):
            continue
        tensors[key] = value.detach().contiguous()
    for param in packed:
        key = param_names[id(param)]
        bits, values = _pack(param.detach())
        del tensors[key]
        tensors[f"{key}::bits"], tensors[f"{key}::values"] = bits, values
        shapes[key] = list(param.shape)
    cfg.dense = True
    metadata = {"format": FORMAT, "config": json.dumps(cfg.to_dict()), "shapes": json.dumps(shapes)}
    if compact is not None:
        metadata["compact"] = json.dumps(compact)
    atomic_write_bytes(out, save(tensors, metadata=metadata))
    return {"file_bytes": Path(out).stat().st_size, "packed_layers": len(shapes)}


def load_export(path: str | Path) -> tuple[Config, dict[str, Tensor]]:
    """(config, dense state dict of effective weights, thresholds omitted) from an export."""
    cfg, state, _ = _read_export(path)
    return cfg, state


def _read_export(path: str | Path) -> tuple[Config, dict[str, Tensor], dict | None]:
    """``load_export`` plus the compact architecture, if the exported model was a compacted one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors export ({e}); re-export it") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an export of this project (format {meta.get('format')!r})")
    cfg = Config.from_dict(json.loads(meta["config"]), source=str(path))
    state = {k: v for k, v in tensors.items() if "::" not in k}
    for key, shape in json.loads(meta["shapes"]).items():
        state[key] = _unpack(tensors[f"{key}::bits"], tensors[f"{key}::values"], shape)
    return cfg, state, (json.loads(meta["compact"]) if "compact" in meta else None)


def is_export(path: Path) -> bool:
    """An export of this project: a safetensors header (8-byte length, JSON) whose metadata names ``FORMAT``."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 2 <= size <= HEADER_LIMIT:
            return False
        try:
            header = json.loads(f.read(size))
        except (ValueError, UnicodeDecodeError):
            return False
    return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == FORMAT


SPARSE_EXPORT = OutputKind(f"a sparse export ({FORMAT} safetensors)", is_export)


def model_from_export(path: str | Path, device: torch.device, overrides: dict | None = None):
    """Rebuild a dense-storage model holding the exported effective weights."""
    cfg, state, compact = _read_export(path)
    for key, value in (overrides or {}).items():
        setattr(cfg, key, value)
    info = dataset_info(cfg)
    model = model_for(cfg, info.task_channels, sparse=False)
    if compact is not None:
        model = apply_compact_spec(model, compact)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("thresholds.") for k in missing):
        raise CheckpointError(f"{path} does not fit the model its config describes")
    return cfg, model.to(device)


def _load_any(path: str) -> tuple[Config, MultiTaskModel, int | None]:
    """(config, model, iteration) of a checkpoint or of a sparse export."""
    if str(path).endswith(".safetensors"):
        cfg, model = model_from_export(path, torch.device("cpu"))
        return cfg, model, None
    state = load_checkpoint(path)
    cfg, model = model_from_checkpoint(state, path, torch.device("cpu"))
    return cfg, model, state.get("iter")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m main.export", description="Export a checkpoint's effective weights "
                            "compactly (sparse, or with --compact as a physically smaller dense model).")
    parser.add_argument("--path", required=True, help="checkpoint (.model; with --compact also a .safetensors "
                        "export)")
    parser.add_argument("--out", required=True, help="output .safetensors file (--compact: a .model checkpoint)")
    parser.add_argument("--compact", action="store_true", help="remove every dead channel (and constant ASPP "
                        "branch) physically, folding their constants; writes a checkpoint test.py evaluates")
    parser.add_argument("--overwrite", action="store_true", help="let --out replace an existing file of another "
                        "kind (e.g. a training checkpoint)")
    ns = parser.parse_args(argv)
    # checked before the work: never the input, a device or link, nor a file of another kind unless --overwrite
    check_output_file(ns.out, "--out", COMPACT_MODEL if ns.compact else SPARSE_EXPORT, {"--path": ns.path},
                      overwrite=ns.overwrite)
    if ns.compact:
        if str(ns.out).endswith(".safetensors"):
            raise UserError(f"--compact writes a checkpoint, not a safetensors file; name --out like "
                            f"{Path(ns.out).with_suffix('.model')}")
        cfg, model, iteration = _load_any(ns.path)
        print("\n".join(describe(ns.out, write_compact(model, cfg, ns.out, ns.path, iteration))))
        return 0
    state = load_checkpoint(ns.path)
    cfg, model = model_from_checkpoint(state, ns.path, torch.device("cpu"))
    info = export_model(model, cfg, ns.out, compact=state.get("compact"))
    dense = Path(ns.path).stat().st_size
    print(f"wrote {ns.out}: {info['file_bytes']:,} bytes ({100 * info['file_bytes'] / dense:.1f}% of the "
          f"checkpoint's {dense:,}; {info['packed_layers']} conv weights packed as bitmask + values)")
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(main))
