"""An exported model directory (docs/model-format.md) opened in ONNX Runtime, with every
promise of its manifest checked before anything is scored: the service serves what this
returns, and the offline evaluation scores the very same object.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from curatornet.image_encoder import ImageEncoder, load_image_encoder
from curatornet.model_format import (
    ITEM_EMBEDDING,
    ITEM_FEATURES,
    MANIFEST_FILE,
    SCORE_MAX_DOT,
    SUPPORTED_FORMAT_VERSIONS,
    USER_HISTORY,
    USER_MASK,
    USER_VECTOR,
    ModelError,
    contained,
)
from curatornet.onnx_sessions import open_session


@dataclass(frozen=True)
class TowerSpec:
    file: str
    sha256: str
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    directory: Path
    manifest: dict[str, Any]
    item_session: ort.InferenceSession
    user_session: ort.InferenceSession
    image_encoder: ImageEncoder | None = None  # when the manifest names one

    @property
    def version(self) -> str:
        """Short and stable: the item tower's sha256 prefix (both towers come from one export)."""
        return str(self.manifest["item_tower"]["sha256"])[:12]

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    def embed_items(self, features: np.ndarray) -> np.ndarray:
        """[N, F] raw features → [N, E] embeddings."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        return self.item_session.run([ITEM_EMBEDDING], {ITEM_FEATURES: features})[0]

    @property
    def interests(self) -> int:
        """K, the vectors the user tower returns per user (1 for a format-version-1 model)."""
        return int(self.manifest.get("interests", 1))

    def embed_users(self, history: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[B, L, E] history embeddings and [B, L] mask (1 = real item) → [B, K, E] interests;
        an item's score for a user is the largest of its K dot products with them."""
        feeds = {
            USER_HISTORY: np.ascontiguousarray(history, dtype=np.float32),
            USER_MASK: np.ascontiguousarray(mask, dtype=np.float32),
        }
        users = self.user_session.run([USER_VECTOR], feeds)[0]
        return users.reshape(len(users), self.interests, self.embedding_dim)

    def score(self, interests: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """[K, E] one user's interests and [N, E] item embeddings → [N] scores."""
        return (embeddings @ interests.T).max(axis=1)


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; is {directory} an exported model directory?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelError(f"{path}: not valid JSON ({error})") from None
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelError(
            f"{path}: format_version {version!r} is not supported "
            f"(this loader reads {sorted(SUPPORTED_FORMAT_VERSIONS)})"
        )
    for key in ("feature_dim", "embedding_dim", "item_tower", "user_tower"):
        if key not in manifest:
            raise ModelError(f"{path}: missing {key!r}")
    if version >= 2:
        interests = manifest.get("interests")
        if not isinstance(interests, int) or isinstance(interests, bool) or interests < 1:
            raise ModelError(f"{path}: format_version 2 needs 'interests', a positive integer")
        if manifest.get("score") != SCORE_MAX_DOT:
            raise ModelError(f"{path}: format_version 2 scores by {SCORE_MAX_DOT!r}")
    return manifest


def _open_tower(
    directory: Path, manifest: dict[str, Any], key: str, threads: int | None
) -> ort.InferenceSession:
    try:
        spec = TowerSpec(**{k: manifest[key][k] for k in ("file", "sha256", "inputs", "outputs")})
    except (KeyError, TypeError) as error:
        raise ModelError(f"{directory / MANIFEST_FILE}: {key} is incomplete ({error})") from None
    path = contained(directory, spec.file)
    if not path.is_file():
        raise ModelError(f"{path}: missing (named by manifest.json {key}.file)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec.sha256:
        raise ModelError(
            f"{path}: sha256 {digest[:12]}… does not match the manifest's {spec.sha256[:12]}…; "
            "the file was changed or belongs to another export"
        )
    session = open_session(path, threads)
    for declared, actual, role in (
        (spec.inputs, session.get_inputs(), "input"),
        (spec.outputs, session.get_outputs(), "output"),
    ):
        found = {tensor.name: list(tensor.shape) for tensor in actual}
        for name, shape in declared.items():
            if name not in found:
                raise ModelError(f"{path}: no {role} tensor {name!r} (has {sorted(found)})")
            if _fixed(found[name]) != _fixed(shape):
                raise ModelError(
                    f"{path}: {role} {name!r} has shape {found[name]}, manifest says {shape}"
                )
    return session


def _fixed(shape: list[Any]) -> list[int | None]:
    """Only the fixed dimensions are compared; symbolic ones (batch, length) are free."""
    return [dim if isinstance(dim, int) else None for dim in shape]


@dataclass(frozen=True)
class LoadOptions:
    """How this process opens models: ONNX Runtime's threads per session (None: its default,
    one per core), a directory of image encoders to find a model's encoder by name when
    it is not at the path the model's manifest gives (a model trained elsewhere and copied),
    and the models roots a server takes models from. With roots, a manifest's encoder path
    may lead into `encoders_dir` and the roots only (else the encoder is looked up by name);
    without them (offline tools, reading the model their user named) it is followed where
    training wrote it."""

    threads: int | None = None
    encoders_dir: Path | None = None
    roots: tuple[Path, ...] | None = None


def load_model(directory: Path | str, options: LoadOptions | None = None) -> LoadedModel:
    """Open a model directory, or raise ModelError saying exactly what does not match; every
    other way a directory can be unreadable (a permission, a directory where a file should
    be, a manifest of the wrong shape) is a ModelError too."""
    try:
        return _load(Path(directory), options or LoadOptions())
    except ModelError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        raise ModelError(f"{directory}: cannot be loaded ({error})") from None


def _load(directory: Path, options: LoadOptions) -> LoadedModel:
    threads = options.threads
    manifest = _read_manifest(directory)
    feature_dim, embedding_dim = manifest["feature_dim"], manifest["embedding_dim"]
    item = _open_tower(directory, manifest, "item_tower", threads)
    user = _open_tower(directory, manifest, "user_tower", threads)
    # Version 1: one user vector; version 2: `interests` of them, scored by the best.
    users = (
        [None, embedding_dim]
        if manifest["format_version"] == 1
        else [None, manifest["interests"], embedding_dim]
    )
    expected = {
        ("item_tower", ITEM_FEATURES): [None, feature_dim],
        ("item_tower", ITEM_EMBEDDING): [None, embedding_dim],
        ("user_tower", USER_HISTORY): [None, None, embedding_dim],
        ("user_tower", USER_VECTOR): users,
    }
    sessions = {"item_tower": item, "user_tower": user}
    for (tower, name), shape in expected.items():
        tensors = sessions[tower].get_inputs() + sessions[tower].get_outputs()
        actual = next((list(t.shape) for t in tensors if t.name == name), None)
        if actual is None or _fixed(actual) != shape:
            raise ModelError(
                f"{directory / manifest[tower]['file']}: {name} has shape {actual}, but the "
                f"manifest's feature_dim={feature_dim}, embedding_dim={embedding_dim}, "
                f"interests={manifest.get('interests', 1)} need {shape}"
            )
    return LoadedModel(
        directory=directory,
        manifest=manifest,
        item_session=item,
        user_session=user,
        image_encoder=_image_encoder(directory, manifest, options),
    )


def _image_encoder(
    directory: Path, manifest: dict[str, Any], options: LoadOptions
) -> ImageEncoder | None:
    """The CNN that turns images into this model's features, when the manifest names one:
    at the manifest's relative path, else `<encoders_dir>/<name>.json`; it must be the very
    encoder (sha256) the model was trained on."""
    named = manifest.get("feature_extractor")
    if not named:
        return None
    if not isinstance(named, dict) or "manifest" not in named:
        raise ModelError(f"{directory / MANIFEST_FILE}: feature_extractor needs a 'manifest'")
    given = str(named["manifest"])
    by_name = (
        contained(options.encoders_dir, f"{named['name']}.json")
        if options.encoders_dir is not None and "name" in named
        else None
    )
    if options.roots is None:
        # Offline tools open the model their user named, and its encoder where training
        # wrote it (`train --image-encoder` takes any path; the manifest keeps it relative).
        path = directory / given
    else:
        # A server reads encoders from its encoders directory and its models roots only (a
        # model directory that is itself a root must not reach beside it): a manifest must
        # not make it open another file on the machine.
        shared = [*options.roots, *([options.encoders_dir] if options.encoders_dir else [])]
        try:
            path = contained(directory, given, *shared)
        except ModelError:
            if by_name is None or not by_name.is_file():
                raise
            path = by_name
    if not path.is_file() and by_name is not None and by_name.is_file():
        path = by_name
    encoder = load_image_encoder(path, options.threads)
    expected = named.get("sha256")
    if expected and encoder.sha256 != expected:
        raise ModelError(
            f"{path}: its encoder (sha256 {encoder.sha256[:12]}…) is not the one "
            f"{directory / MANIFEST_FILE} was trained with ({str(expected)[:12]}…)"
        )
    if encoder.output_dim != manifest["feature_dim"]:
        raise ModelError(
            f"{directory}: its image encoder {encoder.name} gives {encoder.output_dim}-d "
            f"features, the model takes {manifest['feature_dim']}"
        )
    return encoder
