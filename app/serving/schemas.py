"""What /predict answers."""

from pydantic import BaseModel, Field


class PredictionPublic(BaseModel):
    filename: str
    class_index: int
    label: str
    probabilities: list[float] = Field(description="One per class, in class_index order; they sum to 1.")


class PredictionsPublic(BaseModel):
    job_id: str
    classes: list[str] = Field(description="The class names, in class_index order (of every probabilities list).")
    predictions: list[PredictionPublic]
