"""Epoch time (train + test) of the Fashion-MNIST tutorial config: the engine's fast path, its DataLoader
path, and the tutorial's own loop, all in one run on this machine. Prints JSON.

    .venv/bin/python -m bench.engine_epoch [--data ../shared/data] [--epochs 3]
"""

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch

from app.core.config import Settings
from bench.tutorial_loop import run_tutorial
from spec.job import JobSpec
from worker.training.build import run_job
from worker.training.hooks import EpochMetrics, Hooks, LossChunk

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class _Collect(Hooks):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.epochs: list[EpochMetrics] = []

    def on_losses(self, chunk: LossChunk) -> None:
        self.losses.extend(chunk.losses)

    def on_epoch(self, metrics: EpochMetrics, checkpoint_dir: Path) -> None:
        self.epochs.append(metrics)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="taas-bench-"))
    try:
        root = work / "data"
        root.mkdir()
        for name in ("FashionMNIST",):
            shutil.copytree(args.data / name, root / name)

        stamps = [time.perf_counter()]
        reference, ref_losses = run_tutorial(root, epochs=args.epochs, seed=args.seed,
                                             on_epoch=lambda _: stamps.append(time.perf_counter()))
        tutorial_s = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        out: dict = {
            "benchmark": "fashion-mnist tutorial config (mlp, sgd lr 1e-3, batch 64, no shuffle)",
            "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__, "device": "cpu"},
            "epochs": args.epochs,
            "tutorial_loop": {"epoch_seconds": tutorial_s, "median_s": statistics.median(tutorial_s),
                              "test_loss": [r[0] for r in reference], "test_accuracy": [r[1] for r in reference]},
        }
        spec = JobSpec.model_validate({"epochs": args.epochs, "seed": args.seed, "device": "cpu"})
        modes: list[tuple[str, Literal["memory", "loader"]]] = [("engine_fast_path", "memory"),
                                                               ("engine_dataloader_path", "loader")]
        for label, mode in modes:
            hooks = _Collect()
            settings = Settings(state_dir=work / mode, data_root=root, data_mode=mode)
            run_job(spec, work / mode / "job", settings=settings, hooks=hooks)
            secs = [m.seconds for m in hooks.epochs]
            out[label] = {
                "epoch_seconds": secs,
                "median_s": statistics.median(secs),
                "vs_tutorial": statistics.median(secs) / statistics.median(tutorial_s),
                "test_loss": [m.test_loss for m in hooks.epochs],
                "test_accuracy": [m.test_accuracy for m in hooks.epochs],
                "max_abs_batch_loss_diff_vs_tutorial": max(
                    abs(a - b) for a, b in zip(hooks.losses, ref_losses, strict=True)),
                "same_test_metrics_as_tutorial": [(m.test_loss, m.test_accuracy) for m in hooks.epochs]
                == reference,
            }
        out["goal"] = "engine_fast_path.vs_tutorial <= 0.5 with equal losses"
        out["goal_met"] = (out["engine_fast_path"]["vs_tutorial"] <= 0.5
                           and out["engine_fast_path"]["same_test_metrics_as_tutorial"])
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
