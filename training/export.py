"""Export to the training → service contract: `item_tower.onnx`, `user_tower.onnx`,
`manifest.json` (see docs/model-format.md; the names are `curatornet.model_format`'s).
Both architectures write format version 2: the user tower returns [B, K, E] interests (K = 1
for the paper's model) and an item's score is the largest of its K dot products.

The towers are small chains of dense layers with a pooling, so the ONNX graphs are written
directly from the trained weights with `onnx.helper` (standard ops only: Sub, Div, MatMul,
Add, Selu, Tanh, Softmax, ReduceSum, ReduceMax, Slice, Concat). That keeps export
independent of converter support for each TensorFlow/Keras release; the parity check against
Keras runs on every export and its maximum error goes into the manifest.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from curatornet.model_format import (
    FORMAT_VERSION,
    ITEM_EMBEDDING,
    ITEM_FEATURES,
    ITEM_TOWER_FILE,
    MANIFEST_FILE,
    PARITY_TOLERANCE,
    SCORE_MAX_DOT,
    USER_HISTORY,
    USER_MASK,
    USER_TOWER_FILE,
    USER_VECTOR,
)
from training.model import MASK_FILL, CuratorNet
from training.multi_interest import NORM_FLOOR, MultiInterestNet

TrainedModel = CuratorNet | MultiInterestNet

OPSET = 18


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(kind, inputs, [output], name=output, **attributes))
        return output

    def dense(
        self,
        x: str,
        layers: list[tuple[np.ndarray, np.ndarray]],
        prefix: str,
        activation: str = "Selu",
        last_linear: bool = False,
    ) -> str:
        for k, (kernel, bias) in enumerate(layers):
            w = self.constant(f"{prefix}{k}_kernel", kernel.astype(np.float32))
            b = self.constant(f"{prefix}{k}_bias", bias.astype(np.float32))
            x = self.op("MatMul", [x, w], f"{prefix}{k}_matmul")
            x = self.op("Add", [x, b], f"{prefix}{k}_add")
            if not (last_linear and k == len(layers) - 1):
                x = self.op(activation, [x], f"{prefix}{k}_{activation.lower()}")
        return x

    def unit_rows(self, x: str, prefix: str) -> str:
        """x / sqrt(max(‖x‖², NORM_FLOOR)) along the last axis (`unit_rows` in Keras)."""
        last = self.constant(f"{prefix}_axis", np.array([-1], np.int64))
        squared = self.op("ReduceSumSquare", [x, last], f"{prefix}_squared", keepdims=1)
        floor = self.constant(f"{prefix}_floor", np.array(NORM_FLOOR, np.float32))
        norm = self.op(
            "Sqrt", [self.op("Max", [squared, floor], f"{prefix}_floored")], f"{prefix}_norm"
        )
        return self.op("Div", [x, norm], f"{prefix}_unit")

    def padding_shift(self, mask: str, one: str) -> str:
        """(mask - 1) · MASK_FILL: 0 on a real history slot, far below any real value on a
        padded one, so that no pooling ever picks or weighs it. `one` names the constant 1."""
        shift = self.op("Sub", [mask, self.constant(one, np.array(1.0, np.float32))], "shift")
        return self.op(
            "Mul", [shift, self.constant("fill", np.array(MASK_FILL, np.float32))], "fill_pad"
        )

    def last_axis_slice(self, x: str, start: int, end: int, name: str) -> str:
        starts = self.constant(f"{name}_starts", np.array([start], np.int64))
        ends = self.constant(f"{name}_ends", np.array([end], np.int64))
        axes = self.constant(f"{name}_axes", np.array([-1], np.int64))
        return self.op("Slice", [x, starts, ends, axes], name)

    def model(self, name: str, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="curatornet-training",
        )
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def item_tower_onnx(model: CuratorNet) -> onnx.ModelProto:
    """features [N, F] raw → embedding [N, E]; the z-score standardisation is inside."""
    g = _Graph()
    x = g.op("Sub", [ITEM_FEATURES, g.constant("feature_mean", model.feature_mean)], "centred")
    x = g.op("Div", [x, g.constant("feature_std", model.feature_std)], "standardized")
    x = g.dense(x, model.weights()["item"], "item_dense")
    g.op("Identity", [x], ITEM_EMBEDDING)
    return g.model(
        "item_tower",
        [helper.make_tensor_value_info(ITEM_FEATURES, TensorProto.FLOAT, ["N", model.feature_dim])],
        [
            helper.make_tensor_value_info(
                ITEM_EMBEDDING, TensorProto.FLOAT, ["N", model.config.embedding_dim]
            )
        ],
    )


def user_tower_onnx(model: CuratorNet) -> onnx.ModelProto:
    """history [B, L, E] + mask [B, L] → user [B, E]; masked average + max pooling inside."""
    e = model.config.embedding_dim
    g = _Graph()
    axis1 = g.constant("axis_1", np.array([1], np.int64))
    axis2 = g.constant("axis_2", np.array([2], np.int64))
    mask = g.op("Unsqueeze", [USER_MASK, axis2], "mask3")
    masked = g.op("Mul", [USER_HISTORY, mask], "masked")
    total = g.op("ReduceSum", [masked, axis1], "history_sum", keepdims=0)
    count = g.op("ReduceSum", [mask, axis1], "count", keepdims=0)
    count = g.op("Max", [count, g.constant("one", np.array(1.0, np.float32))], "count_floor")
    average = g.op("Div", [total, count], "average")
    shifted = g.op("Add", [masked, g.padding_shift(mask, "one_b")], "shifted")
    maximum = g.op("ReduceMax", [shifted, axis1], "maximum", keepdims=0)
    pooled = g.op("Concat", [average, maximum], "pooled", axis=1)
    x = g.dense(pooled, model.weights()["user"], "user_dense")
    g.op("Unsqueeze", [x, axis1], USER_VECTOR)  # one interest: [B, 1, E]
    return g.model("user_tower", _user_inputs(e), [_user_output(1, e)])


def _user_inputs(e: int) -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info(USER_HISTORY, TensorProto.FLOAT, ["B", "L", e]),
        helper.make_tensor_value_info(USER_MASK, TensorProto.FLOAT, ["B", "L"]),
    ]


def _user_output(interests: int, e: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(USER_VECTOR, TensorProto.FLOAT, ["B", interests, e])


def multi_interest_item_tower_onnx(model: MultiInterestNet) -> onnx.ModelProto:
    """features [N, F] raw → embedding [N, E'] = [w·unit(style map(projection)), bias]."""
    c = model.config
    g = _Graph()
    unit = g.unit_rows(ITEM_FEATURES, "features")
    projected = g.op("MatMul", [unit, g.constant("projection", model.projection)], "projected")
    style_map = g.constant("style_kernel", np.asarray(model.style.kernel, np.float32))
    style = g.unit_rows(g.op("MatMul", [projected, style_map], "style_mapped"), "style")
    scale = g.constant("scale", np.array(model.scale, np.float32))
    style = g.op("Mul", [style, scale], "style_scaled")
    bias = g.dense(projected, model.weights()["bias"], "bias_dense", last_linear=True)
    g.op("Concat", [style, bias], ITEM_EMBEDDING, axis=-1)
    return g.model(
        "item_tower",
        [helper.make_tensor_value_info(ITEM_FEATURES, TensorProto.FLOAT, ["N", model.feature_dim])],
        [helper.make_tensor_value_info(ITEM_EMBEDDING, TensorProto.FLOAT, ["N", c.embedding_dim])],
    )


def multi_interest_user_tower_onnx(model: MultiInterestNet) -> onnx.ModelProto:
    """history [B, L, E'] + mask [B, L] → interests [B, K, E']: attention pooling inside."""
    c = model.config
    g = _Graph()
    style = g.last_axis_slice(USER_HISTORY, 0, c.style_dim, "history_style")
    profile = g.op(
        "Div", [style, g.constant("scale", np.array(model.scale, np.float32))], "profile"
    )
    logits = g.dense(profile, model.weights()["attention"], "attention", "Tanh", last_linear=True)
    mask = g.op("Unsqueeze", [USER_MASK, g.constant("axis_2", np.array([2], np.int64))], "mask3")
    logits = g.op("Add", [logits, g.padding_shift(mask, "one")], "masked_logits")  # [B, L, K]
    attention = g.op("Softmax", [logits], "attention_weights", axis=1)
    attention = g.op("Transpose", [attention], "attention_bkl", perm=[0, 2, 1])
    pooled = g.op("MatMul", [attention, profile], "pooled")  # [B, K, style_dim]
    interests = g.unit_rows(pooled, "interest")
    first = g.last_axis_slice(pooled, 0, 1, "pooled_first")
    zeros = g.op("Mul", [first, g.constant("zero", np.array(0.0, np.float32))], "zeros")
    ones = g.op("Add", [zeros, g.constant("one_f", np.array(1.0, np.float32))], "ones")
    g.op("Concat", [interests, ones], USER_VECTOR, axis=-1)
    return g.model(
        "user_tower", _user_inputs(c.embedding_dim), [_user_output(c.interests, c.embedding_dim)]
    )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parity_error(model: TrainedModel, directory: Path, seed: int = 0) -> float:
    """Max |ONNX - Keras| over random inputs of several batch sizes and history lengths."""
    rng = np.random.default_rng(seed)
    options = ort.SessionOptions()
    item = ort.InferenceSession(str(directory / ITEM_TOWER_FILE), options, ["CPUExecutionProvider"])
    user = ort.InferenceSession(str(directory / USER_TOWER_FILE), options, ["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 17, 64):
        features = rng.gamma(0.5, 0.5, (batch, model.feature_dim)).astype(np.float32)
        onnx_out = item.run([ITEM_EMBEDDING], {ITEM_FEATURES: features})[0]
        worst = max(worst, float(np.abs(onnx_out - model.embed_items(features)).max()))
        for length in (1, 30, 300):
            history = rng.normal(0, 1, (batch, length, model.config.embedding_dim)).astype(
                np.float32
            )
            mask = (rng.random((batch, length)) < 0.7).astype(np.float32)
            mask[:, 0] = 1.0
            onnx_out = user.run([USER_VECTOR], {USER_HISTORY: history, USER_MASK: mask})[0]
            keras_out = model.embed_users(history, mask).reshape(onnx_out.shape)
            worst = max(worst, float(np.abs(onnx_out - keras_out).max()))
    return worst


def export_model(
    model: TrainedModel,
    directory: Path | str,
    details: dict,
    feature_extractor: dict | None = None,
) -> dict:
    """Write both ONNX files and the manifest; refuse to finish if parity fails."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, MultiInterestNet):
        item_graph, user_graph = (
            multi_interest_item_tower_onnx(model),
            multi_interest_user_tower_onnx(model),
        )
        interests = model.config.interests
        architecture = {
            "architecture": "multi-interest",
            "projection_dim": model.config.projection_dim,
            "style_dim": model.config.style_dim,
            "bias_hidden": model.config.bias_hidden,
            "interests": interests,
            "attention_dim": model.config.attention_dim,
            "scale": model.scale,
            "pooling": "attention, one softmax over the history per interest",
        }
    else:
        item_graph, user_graph = item_tower_onnx(model), user_tower_onnx(model)
        interests = 1
        architecture = {
            "architecture": "paper",
            "item_layers": list(model.config.item_layers),
            "user_layers": list(model.config.user_layers),
            "activation": "selu",
            "pooling": "concat(masked average, masked max)",
        }
    onnx.save(item_graph, directory / ITEM_TOWER_FILE)
    onnx.save(user_graph, directory / USER_TOWER_FILE)
    error = parity_error(model, directory)
    if error >= PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX export differs from Keras by {error:.2e} (>= {PARITY_TOLERANCE})")
    e = model.config.embedding_dim
    manifest = {
        "format_version": FORMAT_VERSION,
        "feature_dim": model.feature_dim,
        "embedding_dim": e,
        "interests": interests,
        "feature_extractor": feature_extractor,
        "score": SCORE_MAX_DOT,
        "item_tower": {
            "file": ITEM_TOWER_FILE,
            "sha256": sha256_file(directory / ITEM_TOWER_FILE),
            "inputs": {ITEM_FEATURES: ["N", model.feature_dim]},
            "outputs": {ITEM_EMBEDDING: ["N", e]},
        },
        "user_tower": {
            "file": USER_TOWER_FILE,
            "sha256": sha256_file(directory / USER_TOWER_FILE),
            "inputs": {USER_HISTORY: ["B", "L", e], USER_MASK: ["B", "L"]},
            "outputs": {USER_VECTOR: ["B", interests, e]},
        },
        "model": architecture,
        "export": {"opset": OPSET, "parity_max_abs_diff": error},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        **details,
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }
