"""The Open Inference Protocol (KServe v2, REST) as taas speaks it: request parsing and response encoding,
with the binary tensor data extension (Triton's), no HTTP framework here.

A model is a succeeded job (its id is the model name, version "1"). It takes one input, either
  "input"   FP32  [N, C, H, W]  pixels already scaled as ToTensor scales them (0..1), not normalized, or
  "images"  BYTES [N]           encoded image files (PNG, JPEG, ...), preprocessed as /predict does,
and gives "probabilities" FP32 [N, K] and "label" BYTES [N].
"""

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.errors import MalformedRequest, PayloadTooLarge

VERSION = "1"
INPUT_PIXELS = "input"
INPUT_IMAGES = "images"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_LABEL = "label"
OUTPUTS = (OUTPUT_PROBABILITIES, OUTPUT_LABEL)
# The binary extension: the JSON part's length; binary tensors follow it, in the order of their tensors.
HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]


def model_metadata(job_id: str, input_shape: tuple[int, int, int], classes: int) -> dict[str, Any]:
    return {
        "name": job_id,
        "versions": [VERSION],
        "platform": "pytorch",
        "inputs": [
            {"name": INPUT_PIXELS, "datatype": "FP32", "shape": [-1, *input_shape]},
            {"name": INPUT_IMAGES, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, classes]},
            {"name": OUTPUT_LABEL, "datatype": "BYTES", "shape": [-1]},
        ],
    }


@dataclass
class InferRequest:
    id: str | None
    pixels: np.ndarray | None  # float32 N x C x H x W
    images: list[bytes] | None
    outputs: list[tuple[str, bool]]  # (name, as binary data), in the order to answer them

    @property
    def size(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.images or ())


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedRequest(f"{what} must be a JSON object")
    return value


def _binary(tensor: dict[str, Any]) -> int | None:
    size = _object(tensor.get("parameters", {}), "parameters").get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedRequest("binary_data_size must be a non-negative integer")
    return size


def parse_infer(body: bytes, header_length: str | None, *, input_shape: tuple[int, int, int],
                max_items: int) -> InferRequest:
    """The request's input and wanted outputs; MalformedRequest (400) says what is wrong with it."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise MalformedRequest(f"{HEADER_LENGTH} must be the JSON part's length, at most the body's")
        split = int(header_length)
    else:
        split = len(body)
    try:
        request = _object(json.loads(body[:split]), "the request")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedRequest(f"the request is not valid JSON: {e}") from None
    binary = memoryview(body)[split:]
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise MalformedRequest(f"send exactly one input: {INPUT_PIXELS!r} (FP32 [N, C, H, W]) or "
                               f"{INPUT_IMAGES!r} (BYTES [N])")
    tensor = _object(inputs[0], "an input")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise MalformedRequest("an input's shape must be a list of non-negative integers")
    size = _binary(tensor)
    if size is not None:
        if size > len(binary):
            raise MalformedRequest(f"input {name!r} declares {size} bytes of binary data; the body holds "
                                   f"{len(binary)}")
        raw: memoryview | None = binary[:size]
        if len(binary) != size:
            raise MalformedRequest("the body holds binary data that no input declares")
    else:
        raw = None
        if len(binary):
            raise MalformedRequest("the body holds binary data that no input declares")
    count = shape[0] if shape else 0
    if count < 1:
        raise MalformedRequest("an input needs at least one item (shape[0] >= 1)")
    if count > max_items:
        raise PayloadTooLarge(f"{count} items in one request; at most {max_items} are accepted")
    if name == INPUT_PIXELS and datatype == "FP32":
        if shape[1:] != list(input_shape):
            raise MalformedRequest(f"input {INPUT_PIXELS!r} must have shape [N, {', '.join(map(str, input_shape))}]"
                                   f" for this model; got {shape}")
        pixels, images = _fp32(tensor, raw, shape), None
    elif name == INPUT_IMAGES and datatype == "BYTES":
        if shape not in ([count], [count, 1]):
            raise MalformedRequest(f"input {INPUT_IMAGES!r} must have shape [N] (or [N, 1]); got {shape}")
        pixels, images = None, _bytes(tensor, raw, count)
    else:
        raise MalformedRequest(f"unknown input {name!r} of datatype {datatype!r}: this model takes "
                               f"{INPUT_PIXELS!r} FP32 or {INPUT_IMAGES!r} BYTES")
    identifier = request.get("id")
    return InferRequest(id=identifier if isinstance(identifier, str) else None, pixels=pixels, images=images,
                        outputs=_outputs(request))


def _fp32(tensor: dict[str, Any], raw: memoryview | None, shape: list[int]) -> np.ndarray:
    expected = math.prod(shape)
    if raw is not None:
        if len(raw) != 4 * expected:
            raise MalformedRequest(f"FP32 {shape} is {4 * expected} bytes of binary data; got {len(raw)}")
        array = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        try:
            array = np.asarray(tensor.get("data"), dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise MalformedRequest("FP32 data must be a list of numbers (flat or nested)") from None
        if array.size != expected:
            raise MalformedRequest(f"FP32 {shape} has {expected} elements; data holds {array.size}")
    if not np.isfinite(array).all():
        raise MalformedRequest("FP32 data holds NaN or infinite values")
    return array.reshape(shape)


def _bytes(tensor: dict[str, Any], raw: memoryview | None, count: int) -> list[bytes]:
    if raw is None:
        # JSON cannot carry raw bytes: send images with the binary extension (tritonclient's default).
        data = tensor.get("data")
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise MalformedRequest("BYTES data must be a list of strings; send images as binary data")
        items = [x.encode() for x in data]
    else:
        items, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise MalformedRequest("BYTES binary data is truncated")
            (length,) = struct.unpack_from("<I", raw, at)
            if at + 4 + length > len(raw):
                raise MalformedRequest("BYTES binary data is truncated")
            items.append(bytes(raw[at + 4:at + 4 + length]))
            at += 4 + length
    if len(items) != count:
        raise MalformedRequest(f"BYTES [{count}] holds {len(items)} elements")
    return items


def _outputs(request: dict[str, Any]) -> list[tuple[str, bool]]:
    parameters = _object(request.get("parameters", {}), "parameters")
    default_binary = parameters.get("binary_data_output") is True
    wanted = request.get("outputs")
    if wanted is None:
        return [(name, default_binary) for name in OUTPUTS]
    if not isinstance(wanted, list) or not wanted:
        raise MalformedRequest("outputs must be a non-empty list")
    outputs = []
    for output in wanted:
        output = _object(output, "an output")
        if output.get("name") not in OUTPUTS:
            raise MalformedRequest(f"unknown output {output.get('name')!r}: this model gives {list(OUTPUTS)}")
        binary = _object(output.get("parameters", {}), "parameters").get("binary_data", default_binary)
        outputs.append((output["name"], binary is True))
    return outputs


def encode_infer(request: InferRequest, job_id: str, probabilities: np.ndarray,
                 labels: list[str]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (the binary extension's when an output is binary)."""
    tensors, blobs = [], []
    for name, binary in request.outputs:
        if name == OUTPUT_PROBABILITIES:
            tensor: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(probabilities.shape)}
            blob = probabilities.astype("<f4").tobytes() if binary else None
            data: list[Any] = [] if binary else probabilities.reshape(-1).tolist()
        else:
            tensor = {"name": name, "datatype": "BYTES", "shape": [len(labels)]}
            encoded = [label.encode() for label in labels]
            blob = b"".join(struct.pack("<I", len(e)) + e for e in encoded) if binary else None
            data = labels
        if blob is not None:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": job_id, "model_version": VERSION, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(header))}
