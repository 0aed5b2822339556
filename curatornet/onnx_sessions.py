"""ONNX Runtime sessions opened the way a server wants them, for towers and encoders alike."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from curatornet.model_format import ModelError


def session_options(threads: int | None) -> ort.SessionOptions:
    """With `threads`, a fixed pool that never spins: a server runs one process per core, and
    ONNX Runtime's default (a thread per core, spinning between calls) would have them fight."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: Path, threads: int | None) -> ort.InferenceSession:
    """The file on the CPU, or ModelError naming it when ONNX Runtime cannot open it."""
    try:
        return ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({error})") from None
