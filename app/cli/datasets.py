"""`taas datasets`: list, upload (with a progress bar, then the ingest), show, rm."""

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from app.cli.context import client, err, out

datasets_cli = typer.Typer(help="Your labelled image datasets: list, upload, show, rm.", no_args_is_help=False,
                           invoke_without_command=True)


@datasets_cli.callback()
def list_datasets(ctx: typer.Context) -> None:
    """List your datasets (taas datasets), or run one of the commands below."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table("id", "name", "status", "images", "classes", "shape", "created")
    table.columns[0].no_wrap = True  # ids are copied from here: never cut them
    table.columns[0].min_width = 32
    with client(ctx) as taas:
        for d in taas.datasets():
            splits = d["splits"] or {}
            images = sum(s["images"] for s in splits.values()) if splits else d["progress"]["images"]
            shape = d["shape"]
            table.add_row(d["id"], d["name"], d["status"], str(images), str(len(d["classes"])),
                          f"{shape['channels']}x{shape['height']}x{shape['width']}" if shape else "",
                          d["created_at"][:16].replace("T", " "))
    out.print(table)


@datasets_cli.command("upload")
def upload(ctx: typer.Context, name: str,
           archive: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                                   help=".zip, .tar or .tar.gz of class folders or CSV + images")],
           option: Annotated[list[str] | None, typer.Option(
               help="an upload option NAME=VALUE (repeatable): test_fraction, image_size, channels, skip_invalid, "
                    "seed")] = None,
           wait: Annotated[bool, typer.Option(help="wait until it is ingested (ready or failed)")] = True) -> None:
    """Upload an archive (progress bar), then wait for its ingest; prints the dataset id."""
    options = dict(pair.split("=", 1) for pair in option or [] if "=" in pair)
    with client(ctx) as taas:
        with Progress(*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      console=err) as progress:
            task = progress.add_task(f"uploading {archive.name}", total=archive.stat().st_size)
            dataset = taas.upload_dataset(name, archive, progress=lambda sent, _: progress.update(task, completed=sent),
                                          **options)
        err.print(f"dataset {dataset['id']}: {dataset['status']}")
        while wait and dataset["status"] == "processing":
            time.sleep(0.5)
            dataset = taas.dataset(dataset["id"])
        if dataset["status"] == "failed":
            err.print(f"[red]failed:[/] {dataset['error']}")
            raise typer.Exit(1)
    if wait:
        err.print(f"ready: {len(dataset['classes'])} classes, " +
                  ", ".join(f"{k} {v['images']} images" for k, v in (dataset["splits"] or {}).items()))
    typer.echo(dataset["id"])


@datasets_cli.command("show")
def show(ctx: typer.Context, dataset_id: str) -> None:
    """A dataset: status, classes, splits, shape, statistics, skipped files (JSON)."""
    with client(ctx) as taas:
        out.print_json(data=taas.dataset(dataset_id))


@datasets_cli.command("rm")
def rm(ctx: typer.Context, dataset_id: str) -> None:
    """Delete a dataset (not while a queued or running job trains on it)."""
    with client(ctx) as taas:
        taas.delete_dataset(dataset_id)
    err.print(f"dataset {dataset_id} deleted")
