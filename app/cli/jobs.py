"""Job commands of `taas`: submit (and follow), list, show, losses, metrics, cancel, rm, predict, weights,
export, tensorboard. Registered on the root command by app.cli."""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from app.cli.context import client, err, out
from app.cli.progress import follow, metrics_table


def read_spec(path: str) -> dict[str, Any]:
    """A JobSpec from a .json or .yaml/.yml file ("-": standard input, JSON or YAML)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        spec = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"{path}: not JSON or YAML: {e}", param_hint="SPEC") from None
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"{path}: a spec is a mapping (JSON object)", param_hint="SPEC")
    return spec


def submit(ctx: typer.Context,
           spec: Annotated[str, typer.Argument(help="a JobSpec file: .json, .yaml or .yml; - for standard input")],
           follow_it: Annotated[bool, typer.Option("--follow", "-f", help="draw its progress until it ends, then "
                                                                          "its metrics")] = False) -> None:
    """Submit a job; with --follow, a progress bar per epoch and the final metrics (exit 1 unless it succeeds)."""
    with client(ctx) as taas:
        job = taas.submit(read_spec(spec))
        err.print(f"job {job['id']} {job['status']} on queue {job['queue']}")
        if not follow_it:
            typer.echo(job["id"])
            return
        final = follow(taas, job["id"], out)
    if final["status"] != "succeeded":
        raise typer.Exit(1)


def jobs(ctx: typer.Context,
         status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed or cancelled")] = None,
         limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 50) -> None:
    """List your jobs, newest first."""
    table = Table("id", "name", "status", "progress", "test acc", "created")
    table.columns[0].no_wrap = True  # ids are copied from here: never cut them
    table.columns[0].min_width = 32
    with client(ctx) as taas:
        for job in taas.jobs(status=status, limit=limit):
            progress = job["progress"]
            done = f"{progress['step']}/{progress['total_steps']}" if progress["total_steps"] else "-"
            accuracy = (job.get("result") or {}).get("test_accuracy")
            table.add_row(job["id"], job["name"] or "", job["status"], done,
                          f"{100 * accuracy:.2f} %" if accuracy is not None else "",
                          job["created_at"][:16].replace("T", " "))
    out.print(table)


def show(ctx: typer.Context, job_id: str) -> None:
    """A job: status, progress, spec, timings, result, error (JSON)."""
    with client(ctx) as taas:
        out.print_json(data=taas.job(job_id))


def losses(ctx: typer.Context, job_id: str,
           follow_it: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False
           ) -> None:
    """Per-batch losses: step, epoch, batch, loss (tab-separated), all of them, or live with --follow."""
    with client(ctx) as taas:
        if not follow_it:
            for point in taas.all_losses(job_id):
                typer.echo(f"{point['step']}\t{point['epoch']}\t{point['batch']}\t{point['loss']:.6g}")
            return
        for event in taas.follow(job_id):
            if event.event == "loss":
                for point in event.data["losses"]:
                    typer.echo(f"{point['step']}\t{point['epoch']}\t{point['batch']}\t{point['loss']:.6g}")
            elif event.event in ("status", "end"):
                err.print(f"{event.event}: {event.data['status']}")


def metrics(ctx: typer.Context, job_id: str) -> None:
    """Per-epoch metrics as a table."""
    with client(ctx) as taas:
        out.print(metrics_table(taas.metrics(job_id), title=f"job {job_id}"))


def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job: a queued one at once, a running one within a few batches."""
    with client(ctx) as taas:
        job = taas.cancel(job_id)
    err.print(f"job {job_id}: {job['status']}" + (" (stopping)" if job["status"] == "running" else ""))


def rm(ctx: typer.Context, job_id: str) -> None:
    """Delete a job that is not running, with its losses, metrics and files."""
    with client(ctx) as taas:
        taas.delete(job_id)
    err.print(f"job {job_id} deleted")


def predict(ctx: typer.Context, job_id: str,
            images: Annotated[list[Path], typer.Argument(help="image files (PNG, JPEG, ...)", exists=True,
                                                         dir_okay=False)],
            top: Annotated[int, typer.Option(help="probabilities shown per image")] = 3) -> None:
    """Classify images with a succeeded job: label and the top probabilities of each."""
    table = Table("file", "label", f"top {top}")
    with client(ctx) as taas:
        for start in range(0, len(images), 64):
            answer = taas.predict(job_id, list(images[start:start + 64]))
            classes = answer["classes"]
            for p in answer["predictions"]:
                ranked = sorted(enumerate(p["probabilities"]), key=lambda x: -x[1])[:top]
                table.add_row(p["filename"], p["label"],
                              ", ".join(f"{classes[i]} {100 * q:.1f} %" for i, q in ranked))
    out.print(table)


def weights(ctx: typer.Context, job_id: str,
            output: Annotated[Path, typer.Option("--output", "-o", help="where to write the .safetensors file")],
            which: Annotated[str, typer.Option(help="best or last")] = "best") -> None:
    """Download the job's best (or last) state_dict as safetensors."""
    with client(ctx) as taas:
        path = taas.weights(job_id, output, which=which)
    err.print(f"{which} weights of job {job_id} in {path} ({path.stat().st_size:,} bytes)")


def export(ctx: typer.Context, job_id: str,
           output: Annotated[Path, typer.Option("--output", "-o", help="where to write the model")],
           format: Annotated[str, typer.Option(help="onnx or torchscript")] = "onnx") -> None:
    """Download the network for other runtimes (ONNX, TorchScript): pixels in, probabilities out."""
    with client(ctx) as taas:
        path = taas.export(job_id, output, format=format)
    err.print(f"{format} model of job {job_id} in {path} ({path.stat().st_size:,} bytes)")


def tensorboard(ctx: typer.Context, job_id: str,
                output: Annotated[Path, typer.Option("--output", "-o", help="where to write the .tar.gz")]) -> None:
    """Download the job's TensorBoard event files (tar.gz; tensorboard --logdir on the unpacked folder)."""
    with client(ctx) as taas:
        path = taas.tensorboard(job_id, output)
    err.print(f"TensorBoard files of job {job_id} in {path}")


COMMANDS: list[Callable[..., None]] = [submit, jobs, show, losses, metrics, cancel, rm, predict, weights, export,
                                       tensorboard]
