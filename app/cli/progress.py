"""A job followed live in the terminal: a progress bar per epoch with the live loss, the rate and the time left,
then a table of the metrics of every epoch (from the job's Server-Sent Events, app.client.Client.follow)."""

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from app.client import Client

METRIC_COLUMNS = [("epoch", "epoch"), ("train_loss", "train loss"), ("test_loss", "test loss"),
                  ("test_accuracy", "test acc"), ("val_loss", "val loss"), ("val_accuracy", "val acc"),
                  ("lr", "lr"), ("seconds", "seconds")]


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name.endswith("accuracy"):
        return f"{100 * value:.2f} %"
    if name == "lr":
        return f"{value:.3g}"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def metrics_table(rows: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(*[label for _, label in METRIC_COLUMNS], title=title)
    for row in rows:
        table.add_row(*[_cell(name, row.get(name)) for name, _ in METRIC_COLUMNS])
    return table


class _Bars:
    """A bar per epoch: batches done of the epoch's batches, the last loss, batches per second (from the batches'
    own timestamps, so a replay shows the rate the job trained at), the time left."""

    def __init__(self, progress: Progress, client: Client, job_id: str, epochs: int):
        self.progress, self.client, self.job_id, self.epochs = progress, client, job_id, epochs
        self.per_epoch: int | None = None
        self.tasks: dict[int, TaskID] = {}
        self.first_t: dict[int, float] = {}

    def batches_per_epoch(self) -> int | None:
        if self.per_epoch is None:  # known once a worker started the job
            total = self.client.job(self.job_id)["progress"]["total_steps"]
            self.per_epoch = total // self.epochs if total else None
        return self.per_epoch

    def task(self, epoch: int) -> TaskID:
        if epoch not in self.tasks:
            self.tasks[epoch] = self.progress.add_task(f"epoch {epoch}/{self.epochs}", total=self.batches_per_epoch(),
                                                       loss="-", rate="-")
        return self.tasks[epoch]

    def losses(self, points: list[dict[str, Any]]) -> None:
        by_epoch: dict[int, list[dict[str, Any]]] = {}
        for point in points:
            by_epoch.setdefault(point["epoch"], []).append(point)
        for epoch, mine in by_epoch.items():
            first = self.first_t.setdefault(epoch, mine[0]["t"])
            done = mine[-1]["batch"] + 1
            elapsed = mine[-1]["t"] - first
            rate = f"{(done - 1) / elapsed:.0f}" if elapsed > 0 and done > 1 else "-"
            self.progress.update(self.task(epoch), completed=done, loss=f"{mine[-1]['loss']:.4f}", rate=rate)

    def epoch(self, row: dict[str, Any]) -> None:
        task = self.task(row["epoch"])
        total = self.progress.tasks[task].total
        self.progress.update(task, completed=total if total else self.progress.tasks[task].completed,
                             description=f"epoch {row['epoch']}/{self.epochs} test acc "
                                         f"{_cell('test_accuracy', row['test_accuracy'])}")


def follow(client: Client, job_id: str, console: Console) -> dict[str, Any]:
    """Draw the job's progress until it ends; returns the final job."""
    job = client.job(job_id)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} batch/s"),
               TimeRemainingColumn())
    final: dict[str, Any] = job
    rows: list[dict[str, Any]] = []
    with Progress(*columns, console=console, transient=False) as progress:
        bars = _Bars(progress, client, job_id, int(job["spec"]["epochs"]))
        for event in client.follow(job_id):
            if event.event == "status":
                progress.console.print(f"[bold]{event.data['status']}[/] (attempt {event.data.get('attempt')})")
            elif event.event == "loss":
                bars.losses(event.data["losses"])
            elif event.event == "epoch":
                rows.append(event.data)
                bars.epoch(event.data)
            elif event.event == "end":
                final = event.data
    console.print(metrics_table(rows or client.metrics(job_id), title=f"job {job_id}: {final['status']}"))
    if final.get("error"):
        console.print(f"[red]error:[/] {final['error']}")
    return final
