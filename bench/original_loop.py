"""Iterations per second of the original authors' AdapMTL training loop against ours, same settings, as JSON.

Why: issue 17 asks that our AdapMTL loop run at >= 1.8x the original code's loop iterations/s, measured in one run,
in alternating fresh processes, at the paper's width (ResNet34 width 1, 64x64 crops, batch 4, 2 threads, 24
training scenes).  This script is that measurement.  ``bench/loop_overhead.py`` times our loop alone.

The original code is not part of this repository (it must not be copied in): it is imported from a checkout the
user names with ``--original``.  Get one with

    git clone https://github.com/MitchellX/AdapMTL /tmp/adapmtl_orig
    git -C /tmp/adapmtl_orig checkout 29ce7ba9c0553f5d99e0e3e0660bdc9b6713a887   # the commit this was written for

(or, from a bare mirror: ``git --git-dir=MIRROR archive HEAD | tar -x -C /tmp/adapmtl_orig``), then

    python -m bench.original_loop --original /tmp/adapmtl_orig [--iters 20] [--warmup 2] [--rounds 3]

What is timed.  Each measurement is a fresh subprocess (the original's ``main``/``args``/``models`` packages clash
with ours, and a fresh process keeps one side's allocator state off the other; the original's runs in its own
folder, so its packages come first on ``sys.path``, with this repository on ``PYTHONPATH`` for ``bench``);
rounds alternate which side runs first, so machine noise hits both alike.  Per process, seconds per iteration = the
wall time of iterations ``warmup .. iters-1`` of the loop (model building, the first ``warmup`` iterations and
anything before the loop are excluded), divided by their number.  The JSON gives per config the medians over
rounds, ``ratio`` = original s/it / ours s/it (the speed-up; issue 17's target is >= 1.8), every round's numbers
and the settings.

* ours: ``Trainer.train`` of AdapMTL (not dense) on the synthetic scenes, built by ``bench.loop_overhead``'s
  ``make_trainer`` (its loop's own callbacks: training log and TensorBoard; no validation, no checkpoints); the end
  of each iteration is stamped by one more callback.
* original: its ``main.trainer.Trainer.train`` (the loop of its ``baseline.py``), on the model ``baseline.py``
  builds for ResNet34 (``Deeplab_ResNet_Backbone`` + ``MTSeqModel`` with three ASPP heads, all thresholded), with
  the run's optimiser/scheduler/adaptive-weighting/stop-rule hyper-parameters set to ours (``args`` through
  ``sys.argv``, the rest through the ``Trainer`` constructor), validation and saving intervals beyond the timed
  iterations.  It is fed the same synthetic training scenes: the parent process renders our train split once
  (each sample with its default augmentation) into a temporary file, and a small adapter Dataset serves those
  samples in the dict format its loop reads (``input`` (3,H,W), ``segment_semantic`` (1,H,W), ``normal``
  (3,H,W), ``depth_zbuffer`` (1,H,W)) through a plain ``DataLoader(batch_size, shuffle=True)`` as in
  ``baseline.py``; the start of each iteration is stamped when the loop pulls its batch.

Patches applied to the original, all from this harness (its files are not edited):

1. ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return their object unchanged (its loop, losses and model
   call ``.cuda()``; the comparison runs on CPU).
2. ``sys.argv`` is set before its ``args.py`` is imported (it parses the command line at import time): batch
   size, save folder (a temporary folder), architecture resnet34, dataset NYUV2, ``--sInit_value``,
   ``--weight_decay`` and ``--ratio`` from our config.
3. ``proto.pytorch_pb2`` is replaced by an empty module: it was generated for protobuf 3.14 and does not load
   under current protobuf; it is only used to parse prototxt files, which ``MTSeqModel`` does not do.  (Setting
   ``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python`` would also load it, but would slow the TensorBoard writes
   its loop makes every iteration, so it is not used.)
4. ``Trainer.validate`` is a no-op: its loop validates once before the first iteration (outside the timed
   window; the other validations fall beyond ``iters``), and its metrics module needs scikit-learn, which this
   project does not depend on.
5. The layout ``MTSeqModel`` stores (metadata only, not used in its forward) is the all-shared layout built
   directly with its ``Layout`` class rather than through ``main.algorithms.enumerator`` (which imports
   ``antropy``); ``feature_dim`` is 512, the value ``baseline.py``'s probe forward returns for ResNet34 (the probe,
   a batch of 16 at 321x321, is skipped).
6. Its segmentation head and loss use our synthetic dataset's class count (8) instead of NYUv2's 40: the head
   is built with that ``cls_num`` and the criterion's ``num_seg_cls`` attribute is set to it, so both models have
   the same shapes.

Differences that remain (none favours ours): the original's data path here is cheaper than its real one (the
adapter serves pre-rendered tensors; its NYUv2 loader decodes PNGs and rescales with OpenCV), and its samples keep
one fixed augmentation while ours draws flips/jitter per epoch (ours renders and caches scenes on the fly).  Its
loop writes per-layer TensorBoard scalars every iteration and copies every thresholded weight to the CPU to count
sparsity: those are the costs of its loop and are kept.  The original has no width multiplier, so only the
``paper`` config (width 1) can be compared; ``--configs preset`` is reported as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 1.8
ORIGINAL_FILES = ("main/trainer.py", "main/auto_models.py", "models/Deeplab_ResNet34.py", "args.py")
TASKS = ("segment_semantic", "normal", "depth_zbuffer")
# Our Config fields the original run is given as well (args.py flags or Trainer constructor arguments).
SHARED = ("width_mult", "crop_size", "batch_size", "train_size", "sInit_value", "weight_decay", "ratio", "lr",
          "decay_lr_freq", "decay_lr_rate", "adaptive_begin", "adaptive_window", "log_every", "seed", "data_seed")
SKIPPED = {"preset": "the original code builds ResNet34 only at width 1 (no width multiplier), so the CPU preset "
                     "(width 0.125) has no original counterpart; measure it with bench.loop_overhead"}
ORIGINAL_HELP = ("a checkout of the original code, github.com/MitchellX/AdapMTL (git clone "
                 "https://github.com/MitchellX/AdapMTL /tmp/adapmtl_orig), e.g. --original /tmp/adapmtl_orig")


# ----------------------------------------------------------------------------------------- the timed loops


class _Stamp:
    """A last callback of our loop: stamps the end of each iteration."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, trainer, result) -> None:
        self.times.append(time.perf_counter())


def ours_worker(name: str, iters: int, warmup: int) -> dict:
    """Our AdapMTL ``Trainer.train`` for ``iters`` iterations: seconds per iteration after ``warmup``."""
    from bench.loop_overhead import make_trainer  # here, not at the top: the original's worker must not import ours

    with tempfile.TemporaryDirectory() as tmp:
        tr = make_trainer(name, False, iters, tmp)
        stamp, callbacks = _Stamp(), tr.callbacks
        tr.callbacks = lambda stack: [*callbacks(stack), stamp]
        with contextlib.redirect_stdout(sys.stderr):  # its log lines; stdout carries only the JSON
            tr.train()
    t = stamp.times
    _check_count("ours", len(t), iters)
    return {"s_per_it": (t[-1] - t[warmup - 1]) / (iters - warmup), "iterations_stamped": len(t),
            "params": sum(p.numel() for p in tr.model.parameters()),
            "settings": {k: getattr(tr.cfg, k) for k in SHARED}}


def _check_count(kind: str, stamped: int, iters: int) -> None:
    if stamped != iters:
        raise RuntimeError(f"the {kind} loop stamped {stamped} iterations, expected {iters}")


class SceneAdapter(Dataset):
    """Our rendered training scenes in the batch format the original loop reads (labels as (C,H,W) maps)."""

    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        out = {"input": s["input"].float()}
        for task in TASKS:
            y = s[task]
            out[task] = y[None] if y.dim() == 2 else y
        return out


class StampedLoader:
    """Wraps a DataLoader; stamps the start of each iteration (the moment the loop asks for its batch)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.starts = loader, []

    def __iter__(self) -> Iterator[dict]:
        batches = iter(self.loader)
        while True:
            self.starts.append(time.perf_counter())
            try:
                batch = next(batches)
            except StopIteration:  # end of an epoch: the original loop calls iter() again
                self.starts.pop()
                return
            yield batch


def _import_original(path: str, s: dict, save_dir: str) -> types.SimpleNamespace:
    """The original's classes, imported from ``path`` with patches 1-4 of the module docstring."""
    clash = sorted(m for m in ("main", "args", "models", "data") if m in sys.modules)
    if clash:
        raise RuntimeError(f"modules {clash} are already imported; the original's worker must start fresh")
    sys.argv = ["adapmtl-original", "--batch_size", str(s["batch_size"]), "--save_dir", save_dir + "/",
                "--architecture", "resnet34", "--dataset", "NYUV2", "--sInit_value", str(s["sInit_value"]),
                "--weight_decay", str(s["weight_decay"]), "--ratio", str(s["ratio"])]
    if Path(sys.path[0] or ".").resolve() != Path(path).resolve():
        raise RuntimeError("the original's worker must run in its folder (run_worker starts it there)")
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    load = importlib.import_module  # by name: these are the original's packages, which shadow ours here
    proto = load("proto")
    proto.pytorch_pb2 = sys.modules["proto.pytorch_pb2"] = types.ModuleType("proto.pytorch_pb2")
    Trainer = load("main.trainer").Trainer
    Trainer.validate = lambda self, *a, **k: None
    return types.SimpleNamespace(NYUCriterions=load("data.pixel2pixel_loss").NYUCriterions,
                                 MTSeqModel=load("main.auto_models").MTSeqModel, Layout=load("main.layout").Layout,
                                 Trainer=Trainer, Backbone=load("models.Deeplab_ResNet34").Deeplab_ResNet_Backbone)


def _original_trainer(orig: types.SimpleNamespace, s: dict, loader: StampedLoader, iters: int):
    """The model and ``Trainer`` of the original's ``baseline.py`` (ResNet34), with our hyper-parameters."""
    blocks = 18  # ResNet34's fine-grained blocks in baseline.py's mapping (0..17); the layout is metadata only
    layout = orig.Layout(len(TASKS), blocks, [[set(range(len(TASKS)))] for _ in range(blocks)])
    cls_num = {"segment_semantic": s["num_classes"], "normal": 3, "depth_zbuffer": 1}
    model = orig.MTSeqModel("models/deeplab_resnet34_adashare.prototxt", orig.Backbone(), layout=layout,
                            feature_dim=512, cls_num=cls_num, verbose=False)
    criteria = {t: orig.NYUCriterions(t) for t in TASKS}
    criteria["segment_semantic"].num_seg_cls = s["num_classes"]
    far = 10 * iters + 1  # validation and saving beyond the timed iterations
    trainer = orig.Trainer(model, list(TASKS), loader, [], criteria, {}, architecture="resnet34",
                           lr=s["lr"], decay_lr_freq=s["decay_lr_freq"], decay_lr_rate=s["decay_lr_rate"],
                           val_iters=far, print_iters=s["log_every"], save_iters=far,
                           adaptive_loss_begin=s["adaptive_begin"], sliding_window=s["adaptive_window"])
    return model, trainer


def original_worker(path: str, data_file: str, s: dict, iters: int, warmup: int) -> dict:
    """The original's ``Trainer.train`` for ``iters`` iterations: seconds per iteration after ``warmup``."""
    with tempfile.TemporaryDirectory() as tmp:
        orig = _import_original(path, s, tmp)
        torch.manual_seed(s["seed"])
        samples = torch.load(data_file)
        loader = StampedLoader(DataLoader(SceneAdapter(samples), batch_size=s["batch_size"], shuffle=True))
        model, trainer = _original_trainer(orig, s, loader, iters)
        with contextlib.redirect_stdout(sys.stderr):
            trainer.train(iters=iters, savePath=tmp + "/", writerPath=tmp)
        end = time.perf_counter()
    _check_count("original", len(loader.starts), iters)
    return {"s_per_it": (end - loader.starts[warmup]) / (iters - warmup), "iterations_stamped": len(loader.starts),
            "params": sum(p.numel() for p in model.parameters())}


# ----------------------------------------------------------------------------------------- orchestration


def config_settings(name: str, iters: int) -> tuple[dict, list[dict]]:
    """Our config's settings for ``name`` (as ``make_trainer`` builds it) and its rendered training scenes."""
    from bench.loop_overhead import CONFIGS
    from main.config import Config
    from main.data import build_dataset, dataset_info

    cfg = Config(**{"train_size": max(16, 8 * iters), **CONFIGS[name]["settings"]}, device="cpu").check()
    settings = {k: getattr(cfg, k) for k in SHARED}
    settings["num_classes"] = dataset_info(cfg).num_classes
    train_set = build_dataset(cfg, "train")
    return settings, [train_set[i] for i in range(len(train_set))]


def run_worker(kind: str, ns: argparse.Namespace, name: str, threads: int, extra: list[str]) -> dict:
    """One measurement in a fresh process; its last stdout line is the JSON result."""
    cmd = [sys.executable, "-m", "bench.original_loop", "--worker", kind, "--configs", name, "--iters",
           str(ns.iters), "--warmup", str(ns.warmup), "--threads", str(threads),
           "--original", str(Path(ns.original).resolve()), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cwd = REPO
    if kind == "original":  # its folder first on sys.path, so its main/args/models/data shadow ours; bench from REPO
        cwd = Path(ns.original).resolve()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} worker failed (exit {proc.returncode}); its stderr is above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(name: str, ns: argparse.Namespace) -> dict:
    """``ns.rounds`` alternating measurements of each side for config ``name``, summarised."""
    from bench.loop_overhead import CONFIGS

    threads = ns.threads or CONFIGS[name]["threads"] or torch.get_num_threads()
    settings, samples = config_settings(name, ns.iters)
    runs: dict[str, list[dict]] = {"original": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_file = os.path.join(tmp, "scenes.pt")
        torch.save(samples, data_file)
        extra = {"original": ["--data", data_file, "--settings", json.dumps(settings)], "ours": []}
        order = []
        for r in range(ns.rounds):
            for kind in (("original", "ours") if r % 2 == 0 else ("ours", "original")):
                print(f"[original_loop] {name} round {r + 1}/{ns.rounds}: {kind}", file=sys.stderr, flush=True)
                runs[kind].append(run_worker(kind, ns, name, threads, extra[kind]))
                order.append(kind)
    return summarise(name, settings, threads, runs, order)


def summarise(name: str, settings: dict, threads: int, runs: dict, order: list[str]) -> dict:
    med = {k: statistics.median(r["s_per_it"] for r in v) for k, v in runs.items()}
    ours_settings = runs["ours"][0]["settings"]
    mismatch = {k: [settings[k], ours_settings[k]] for k in SHARED if settings[k] != ours_settings[k]}
    ratio = med["original"] / med["ours"]
    return {"config": name, "threads": threads, "settings": settings, "settings_mismatch": mismatch,
            "original_s_per_it": med["original"], "ours_s_per_it": med["ours"], "ratio": ratio,
            "original_it_per_s": 1 / med["original"], "ours_it_per_s": 1 / med["ours"],
            "target_ratio": TARGET_SPEEDUP, "meets_target": ratio >= TARGET_SPEEDUP,
            "params": {"original": runs["original"][0]["params"], "ours": runs["ours"][0]["params"]},
            "order": order, "runs_s_per_it": {k: [r["s_per_it"] for r in v] for k, v in runs.items()}}


def original_commit(path: str) -> str | None:
    """The checkout's commit, when it is a git work tree of its own (an exported tree has none)."""
    if not (Path(path) / ".git").exists():
        return None
    out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def check_original(path: str | None) -> str | None:
    """Why ``path`` is not usable as the original checkout (None if it is)."""
    if not path:
        return f"--original PATH is required: {ORIGINAL_HELP}"
    if not Path(path).is_dir():
        return f"--original {path}: no such folder; it must be {ORIGINAL_HELP}"
    missing = [f for f in ORIGINAL_FILES if not (Path(path) / f).is_file()]
    if missing:
        return f"--original {path} lacks {', '.join(missing)}; it must be {ORIGINAL_HELP}"
    return None


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.original_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--original", help=ORIGINAL_HELP)
    parser.add_argument("--configs", nargs="+", default=["paper"], choices=["paper", "preset"])
    parser.add_argument("--iters", type=int, default=20, help="loop iterations per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="leading iterations left out of the timing")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per side, alternating")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    parser.add_argument("--worker", choices=["original", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker_main(ns: argparse.Namespace) -> int:
    torch.set_num_threads(ns.threads)
    name = ns.configs[0]
    if ns.worker == "ours":
        result = ours_worker(name, ns.iters, ns.warmup)
    else:
        result = original_worker(ns.original, ns.data, json.loads(ns.settings), ns.iters, ns.warmup)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    problem = check_original(ns.original)
    if problem is None and not 1 <= ns.warmup < ns.iters:
        problem = f"--warmup {ns.warmup} must be at least 1 and below --iters {ns.iters}"
    if problem is None and ns.rounds < 1:
        problem = f"--rounds {ns.rounds} must be at least 1"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if ns.worker:
        return worker_main(ns)
    results = [{"config": n, "skipped": SKIPPED[n]} if n in SKIPPED else measure(n, ns) for n in ns.configs]
    print(json.dumps({"machine": platform.machine(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                      "python": platform.python_version(), "torch": torch.__version__,
                      "original": {"path": str(Path(ns.original).resolve()), "commit": original_commit(ns.original)},
                      "iters": ns.iters, "warmup": ns.warmup, "rounds": ns.rounds, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
