"""The benchmark's noise floor for one training setting: N dense seeds, each one's Δ_T against the mean of the others.

    python -m bench.noise_floor --name crop48_1500 --seeds 5 -- --crop_size 48 --iters 1500 --train_size 0 ...

Why: a comparison of pruning methods can only rank what it can tell apart, and what it can tell apart is set by how
much a model *equal* to dense scatters in Δ_T from seed to seed.  This trains ``--seeds`` dense models with the given
``baseline.py`` flags (on top of ``--config``), evaluates each on the test split (both metric definitions from one
pass), and writes ``logs/noise_floor/<name>.json``: the leave-one-out Δ_T per seed, its std and max |·| overall and
per task, for both definitions, the commands and wall times.  Seeds already evaluated are skipped (resumable);
``--jobs`` seeds train side by side with one thread each, as in ``bench.compare``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from bench.compare import run_commands
from bench.compare_protocol import CKPT
from bench.comparison_stats import NoiseFloor, metrics_of
from main.atomic import atomic_write_text
from main.errors import UserError, cli_main

ROOT = Path(__file__).resolve().parents[1]

DEFINITIONS = ("standard", "parity")


def seed_commands(ns: argparse.Namespace, seed: int, save: Path) -> list[list[str]]:
    return [["baseline.py", "--config", ns.config, "--dense", "--seed", str(seed), "--progress", "off", "--save_dir",
             str(save), "--overwrite", *ns.flags]]


def run_seed(ns: argparse.Namespace, seed: int, threads: int | None) -> dict:
    """Train and evaluate one seed unless its test JSON exists; returns its record."""
    folder = Path(ns.out) / ns.name / f"seed{seed}"
    out_json = folder / "test.json"
    record_path = folder / "record.json"
    if out_json.is_file() and record_path.is_file():
        return json.loads(record_path.read_text())
    cmds = seed_commands(ns, seed, folder / "run")
    wall = run_commands(cmds, folder / "log.txt", threads).wall
    run_commands([["test.py", "--path", str(folder / "run" / CKPT), "--json", str(out_json), "--progress", "off"]],
                 folder / "log.txt", threads)
    record = {"seed": seed, "wall_s": round(wall, 1), "commands": [shlex.join(["python", *c]) for c in cmds]}
    atomic_write_text(record_path, json.dumps(record, indent=1))
    print(f"[noise_floor] {ns.name} seed {seed}: {wall / 60:.1f} min", flush=True)
    return record


def summarise(ns: argparse.Namespace, records: Sequence[dict]) -> dict:
    results = [json.loads((Path(ns.out) / ns.name / f"seed{r['seed']}" / "test.json").read_text()) for r in records]
    out: dict = {"name": ns.name, "config": ns.config, "flags": ns.flags, "seeds": [r["seed"] for r in records],
                 "records": list(records)}
    for d in DEFINITIONS:
        floor = NoiseFloor.of([metrics_of(r, d) for r in results])
        out[d] = {**asdict(floor), "metrics": [metrics_of(r, d) for r in results]}
    out["val_loss"] = {r["seed"]: _val_loss_curve(Path(ns.out) / ns.name / f"seed{r['seed']}" / "run") for r in records}
    return out


def _val_loss_curve(run: Path) -> dict[str, list]:
    """The run's validation loss per task at each evaluation (TensorBoard ``Loss/val/<task>``): has it plateaued?"""
    from bench.plots import read_scalars

    try:
        scalars = read_scalars(run)
    except (ValueError, OSError):  # no events (--no-tensorboard) or the folder is gone
        return {}
    return {tag.split("/", 2)[2]: [[step, round(v, 5)] for step, v in points]
            for tag, points in scalars.items() if tag.startswith("Loss/val/")}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="name of the setting (folder and JSON name)")
    p.add_argument("--seeds", type=int, default=5, help="dense seeds (default 5)")
    p.add_argument("--config", default="configs/synthetic.yaml", help="base preset (default configs/synthetic.yaml)")
    p.add_argument("--jobs", type=int, default=2, help="seeds trained side by side, one thread each (default 2)")
    p.add_argument("--out", default="outputs/noise_floor", help="run folders (default outputs/noise_floor)")
    p.add_argument("--logs", default="logs/noise_floor", help="where the summary JSON goes (default logs/noise_floor)")
    p.add_argument("flags", nargs=argparse.REMAINDER, help="baseline.py flags of the setting, after --")
    ns = p.parse_args(argv)
    ns.flags = [f for f in ns.flags if f != "--"]
    if ns.seeds < 2 or ns.jobs < 1:
        raise UserError("--seeds must be >= 2 (a noise floor compares seeds) and --jobs >= 1")
    if "/" in ns.name or not ns.name:
        raise UserError(f"--name must be a plain name, got {ns.name!r}")
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse(argv)
    start = time.time()
    threads = None if ns.jobs == 1 else 1
    with ThreadPoolExecutor(max_workers=ns.jobs) as pool:
        records = list(pool.map(functools.partial(run_seed, ns, threads=threads), range(ns.seeds)))
    summary = summarise(ns, records)
    path = Path(ns.logs) / f"{ns.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=1))
    for d in DEFINITIONS:
        s = summary[d]
        if s["std"] is None:  # e.g. a dense metric of 0 makes every Δ_T undefined
            print(f"[noise_floor] {ns.name} ({d}): Δ_T undefined (a dense metric is 0)")
            continue
        tasks = ", ".join(f"{t} {v:.2f}" for t, v in s["task_std"].items() if v is not None)
        print(f"[noise_floor] {ns.name} ({d}): leave-one-out Δ_T std {s['std']:.2f}, max |·| {s['max_abs']:.2f} "
              f"over {s['n']} seeds ({tasks})")
    print(f"[noise_floor] wrote {path} ({(time.time() - start) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    cli_main(main)
