"""The catalog: everything a JobSpec can name, generated from the registries."""

from functools import lru_cache

from fastapi import APIRouter

from app.schemas import (
    ArchitectureInfo,
    CatalogPublic,
    DatasetInfo,
    ImageShape,
    LossInfo,
    OptimizerInfo,
    SchedulerInfo,
)
from models import ARCHITECTURES
from worker.datasets import DATASETS
from worker.optim import LOSSES, OPTIMIZERS, SCHEDULERS

router = APIRouter(tags=["catalog"])


@lru_cache
def build_catalog() -> CatalogPublic:
    """The registries as JSON: names, descriptions and the JSON schema of each entry's params."""
    return CatalogPublic(
        datasets=[
            DatasetInfo(name=d.name, description=d.description, classes=list(d.classes),
                        shape=ImageShape(channels=d.shape.channels, height=d.shape.height,
                                         width=d.shape.width))
            for d in DATASETS.values()
        ],
        architectures=[
            ArchitectureInfo(name=a.name, description=a.description, params=a.params.model_json_schema(),
                             output=a.output, min_size=a.min_size)
            for a in ARCHITECTURES.values()
        ],
        optimizers=[OptimizerInfo(name=o.name, params=o.params.model_json_schema())
                    for o in OPTIMIZERS.values()],
        losses=[LossInfo(name=e.name, description=e.description, params=e.params.model_json_schema(),
                         expects=e.expects)
                for e in LOSSES.values()],
        schedulers=[SchedulerInfo(name=s.name, params=s.params.model_json_schema(), interval=s.interval)
                    for s in SCHEDULERS.values()],
    )


@router.get("/catalog")
def get_catalog() -> CatalogPublic:
    """Datasets, architectures, optimizers, losses and schedulers a JobSpec can name, with their params."""
    return build_catalog()
