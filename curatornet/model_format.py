"""The training → service contract in code: what an exported model directory holds and what
its tensors are called. docs/model-format.md describes it in full (every manifest field and
the versioning policy); training writes to these names, the loader checks against them.
"""

from __future__ import annotations

from pathlib import Path

# Written by every export; the loader reads any of SUPPORTED_FORMAT_VERSIONS. A change that
# an older loader would misread takes a new version (docs/model-format.md, Versioning).
# Version 1: the user tower returns one vector [B, embedding_dim]. Version 2: it returns
# `interests` vectors [B, interests, embedding_dim] and a work's score is the largest of its
# dot products with them (SCORE_MAX_DOT); the paper's model is written with interests = 1.
FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = frozenset({1, FORMAT_VERSION})
SCORE_DOT = "dot"  # version 1
SCORE_MAX_DOT = "max_dot"  # version 2
# What manifest.json's model.architecture names (informational: the loader serves either).
ARCHITECTURES = ("multi-interest", "paper")

MANIFEST_FILE = "manifest.json"
ITEM_TOWER_FILE = "item_tower.onnx"
USER_TOWER_FILE = "user_tower.onnx"

# The item tower: raw features [N, feature_dim] → embedding [N, embedding_dim].
ITEM_FEATURES = "features"
ITEM_EMBEDDING = "embedding"
# The user tower: history [B, L, embedding_dim] and mask [B, L] (1 = a real item) → user
# vector [B, embedding_dim] (version 1) or interests [B, interests, embedding_dim] (version 2).
USER_HISTORY = "history"
USER_MASK = "mask"
USER_VECTOR = "user"
# An image encoder: preprocessed pictures [N, 3, size, size] → features [N, output_dim].
ENCODER_IMAGES = "images"
ENCODER_FEATURES = "features"

# An export whose ONNX files differ from the trained model by this much (max |difference| on
# random inputs) is refused; what it measured goes into the manifest.
PARITY_TOLERANCE = 1e-4


class ModelError(RuntimeError):
    """A model or encoder directory that breaks this format; the message says how."""


def contained(base: Path, name: str, *allowed: Path) -> Path:
    """`base / name`, or ModelError when it resolves outside `base` (and outside each of
    `allowed`): a manifest cannot make the loader read, hash or open another file on the
    machine (`../../../../etc/passwd`)."""
    path = base / name
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in (base, *allowed)):
        raise ModelError(f"{name!r} lies outside {base}: a model's files must stay inside it")
    return path
