"""The catalog: everything a JobSpec can name, generated from the registries, and the owner's datasets."""

from functools import lru_cache

from fastapi import APIRouter

from app.accounts.deps import OwnerDep
from app.catalog.schemas import ArchitectureInfo, CatalogDataset, CatalogPublic, LossInfo, OptimizerInfo, SchedulerInfo
from app.datasets import service as datasets
from app.datasets.schemas import ImageShape
from app.web.deps import DbDep
from app.web.responses import error_responses
from spec.architectures import ARCHITECTURES
from spec.datasets import BUILTIN_DATASETS, DatasetInfo
from spec.training import LOSSES, OPTIMIZERS, SCHEDULERS

router = APIRouter(tags=["catalog"], responses=error_responses(401))


def _catalog_dataset(name: str, dataset_id: str | None, description: str, info: DatasetInfo) -> CatalogDataset:
    return CatalogDataset(name=name, id=dataset_id, source="builtin" if dataset_id is None else "upload",
                          description=description, classes=info.classes,
                          shape=ImageShape.model_validate(info.shape.model_dump()))


@lru_cache
def build_catalog() -> CatalogPublic:
    """The registries as JSON: names, descriptions and the JSON schema of each entry's params."""
    return CatalogPublic(
        datasets=[_catalog_dataset(d.name, None, d.description, d.info) for d in BUILTIN_DATASETS.values()],
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
async def get_catalog(db: DbDep, owner: OwnerDep) -> CatalogPublic:
    """Datasets (built-in, and your ready uploads), architectures, optimizers, losses and schedulers a
    JobSpec can name, with their params."""
    catalog = build_catalog()
    uploads = [
        _catalog_dataset(d.name, d.id, f"Uploaded dataset ({d.layout}), ready since {d.ready_at:%Y-%m-%d %H:%M} UTC.",
                         DatasetInfo.model_validate(d.info))
        for d in await db.read(lambda session: datasets.ready_datasets(session=session, owner=owner))
        if d.info is not None
    ]
    return catalog.model_copy(update={"datasets": catalog.datasets + uploads})
