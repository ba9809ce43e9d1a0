"""The tutorials' reference workloads through the engine on the real data, against the figures the
tutorials printed. Prints JSON (per-epoch test accuracy, epoch seconds).

    .venv/bin/python -m bench.reference_workloads [--data ../shared/data]
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from app.core.config import Settings
from bench.engine_epoch import DEFAULT_DATA
from spec.job import JobSpec
from worker.training.build import run_job

WORKLOADS: dict[str, tuple[dict[str, Any], float | None]] = {
    # name: (job spec, accuracy the tutorial printed)
    "fashion-mnist mlp (tutorial)": ({"epochs": 10}, 0.710),
    "mnist mnist-mlp nll adam batch 10 (tutorial)": (
        {"dataset": {"name": "mnist"}, "model": {"arch": "mnist-mlp"}, "loss": "nll",
         "optimizer": {"name": "adam", "lr": 1e-3}, "batch_size": 10, "shuffle": True, "epochs": 3, "seed": 3},
        0.967),
    "fashion-mnist lenet5 sgd momentum, 10% validation": (
        {"model": {"arch": "lenet5"}, "dataset": {"name": "fashion-mnist", "val_fraction": 0.1},
         "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "shuffle": True, "epochs": 10},
        None),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="taas-ref-"))
    try:
        root = work / "data"
        for name in ("FashionMNIST", "MNIST"):
            shutil.copytree(args.data / name, root / name)
        settings = Settings(state_dir=work / "state", data_root=root)
        out = {}
        for i, (name, (spec, printed)) in enumerate(WORKLOADS.items()):
            result = run_job(JobSpec.model_validate(spec), work / f"job{i}", settings=settings)
            out[name] = {
                "spec": spec,
                "tutorial_printed_accuracy": printed,
                "test_accuracy": [m.test_accuracy for m in result.history],
                "val_accuracy": [m.val_accuracy for m in result.history],
                "best_epoch": result.best_epoch,
                "epoch_seconds": [round(m.seconds, 2) for m in result.history],
            }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
