"""The reference for bench/serving.py: a bare FastAPI /predict as one would write it by hand (UploadFile,
Pillow, ToTensor, the network, JSON), no database, no batching. Run by the bench as one uvicorn process:

    BARE_WEIGHTS=best.safetensors uvicorn bench.bare_predict:app
"""

import io
import os

import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms.functional import to_tensor

from bench.tutorial_loop import NeuralNetwork
from spec.datasets import FASHION_CLASSES

torch.set_num_threads(1)
network = NeuralNetwork()
network.load_state_dict(load_file(os.environ["BARE_WEIGHTS"]))
network.eval()
app = FastAPI()


@app.post("/predict")
def predict(files: list[UploadFile] = File(...)) -> dict:  # noqa: B008  (FastAPI's idiom)
    batch = torch.stack([to_tensor(Image.open(io.BytesIO(f.file.read())).convert("L")) for f in files])
    with torch.inference_mode():
        probabilities = torch.softmax(network(batch), dim=1)
    return {"predictions": [
        {"filename": f.filename, "class_index": int(p.argmax()), "label": FASHION_CLASSES[int(p.argmax())],
         "probabilities": p.tolist()} for f, p in zip(files, probabilities, strict=True)]}
