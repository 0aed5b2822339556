"""The towers, the training run end to end, and the ONNX export's parity with Keras."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf

from curatornet.model_format import ITEM_TOWER_FILE, MANIFEST_FILE, USER_TOWER_FILE
from tests.training.helpers import tiny_run_config
from training.export import export_model, sha256_file
from training.model import CuratorNet, ModelConfig
from training.multi_interest import MultiInterestConfig, MultiInterestNet
from training.pipeline import train_and_export

ARCHITECTURES = ("paper", "multi-interest")


def _random_model(architecture: str, seed: int = 0, feature_dim: int = 64):
    """A model with random (non-zero) biases and a style map away from the identity, so
    parity covers every weight."""
    rng = np.random.default_rng(seed)
    tf.keras.utils.set_random_seed(seed)
    if architecture == "paper":
        model = CuratorNet(
            rng.gamma(1.0, 1.0, feature_dim), rng.gamma(1.0, 1.0, feature_dim), ModelConfig()
        )
        layers = [*model.item_tower.layers, *model.user_tower.layers]
    else:
        features = rng.gamma(0.5, 1.0, (300, feature_dim)).astype(np.float32)
        net = MultiInterestNet.for_features(
            features, MultiInterestConfig(projection_dim=48, style_dim=32)
        )
        net.style.kernel.assign(net.style.kernel + rng.normal(0, 0.2, net.style.kernel.shape))
        net.log_scale.assign(np.log(7.0))
        model, layers = net, [*net.bias_tower.layers, *net.attention.layers]
    for layer in layers:
        layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape).astype(np.float32))
    return model


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    model = _random_model(request.param)
    directory = tmp_path_factory.mktemp("export")
    manifest = export_model(model, directory, {"training": {"note": "random weights"}})
    sessions = {
        name: ort.InferenceSession(str(directory / name), providers=["CPUExecutionProvider"])
        for name in (ITEM_TOWER_FILE, USER_TOWER_FILE)
    }
    return model, directory, manifest, sessions


def _interests(model) -> int:
    return getattr(model.config, "interests", 1)


@pytest.mark.parametrize("batch", [1, 2, 17, 64])
def test_item_tower_parity(exported, batch: int) -> None:
    model, _, _, sessions = exported
    features = np.random.default_rng(batch).gamma(0.5, 1.0, (batch, model.feature_dim))
    features = features.astype(np.float32)
    onnx_out = sessions[ITEM_TOWER_FILE].run(["embedding"], {"features": features})[0]
    assert onnx_out.shape == (batch, model.config.embedding_dim)
    assert np.abs(onnx_out - model.embed_items(features)).max() < 1e-4


@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("length", [1, 2, 50, 300])
def test_user_tower_parity(exported, batch: int, length: int) -> None:
    model, _, _, sessions = exported
    e = model.config.embedding_dim
    rng = np.random.default_rng(batch * 1000 + length)
    history = rng.normal(0, 1, (batch, length, e)).astype(np.float32)
    mask = (rng.random((batch, length)) < 0.6).astype(np.float32)
    mask[:, -1] = 1.0
    onnx_out = sessions[USER_TOWER_FILE].run(["user"], {"history": history, "mask": mask})[0]
    assert onnx_out.shape == (batch, _interests(model), e)
    keras_out = model.embed_users(history, mask).reshape(onnx_out.shape)
    assert np.abs(onnx_out - keras_out).max() < 1e-4


def test_padding_never_changes_a_user_vector(exported) -> None:
    model, _, _, sessions = exported
    e = model.config.embedding_dim
    rng = np.random.default_rng(3)
    history = rng.normal(0, 1, (4, 7, e)).astype(np.float32)
    mask = np.ones((4, 7), np.float32)
    padded = np.concatenate([history, rng.normal(0, 50, (4, 20, e))], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((4, 20))], axis=1)
    # Padding in the middle of the sequence, with large garbage values, too.
    order = rng.permutation(27)
    padded, padded_mask = (
        padded[:, order].astype(np.float32),
        padded_mask[:, order].astype(np.float32),
    )
    run = sessions[USER_TOWER_FILE].run
    plain = run(["user"], {"history": history, "mask": mask})[0]
    with_padding = run(["user"], {"history": padded, "mask": padded_mask})[0]
    np.testing.assert_allclose(with_padding, plain, atol=1e-5)
    keras_out = model.embed_users(padded, padded_mask).reshape(plain.shape)
    np.testing.assert_allclose(keras_out, plain, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_training_pooling_equals_the_exported_masked_pooling(architecture: str) -> None:
    model = _random_model(architecture, seed=4)
    rng = np.random.default_rng(4)
    lengths = [3, 1, 5]
    e = model.config.embedding_dim
    history = np.zeros((3, 5, e), np.float32)
    mask = np.zeros((3, 5), np.float32)
    if architecture == "paper":
        flat = rng.normal(0, 1, (sum(lengths), e)).astype(np.float32)
    else:  # training pools the unit style parts of the item embeddings it computes
        embeddings = model.embed_items(rng.gamma(0.5, 1.0, (sum(lengths), model.feature_dim)))
        flat = embeddings[:, : model.config.style_dim] / model.scale
    segments = np.repeat(np.arange(3), lengths).astype(np.int32)
    for row, (start, length) in enumerate(zip(np.cumsum([0, *lengths[:-1]]), lengths, strict=True)):
        source = flat if architecture == "paper" else embeddings
        history[row, :length] = source[start : start + length]
        mask[row, :length] = 1
    if architecture == "paper":
        by_segments = model.user_from_segments(tf.constant(flat), segments, 3, training=False)
    else:
        by_segments = model.users_from_segments(tf.constant(flat), segments, 3)
    np.testing.assert_allclose(np.asarray(by_segments), model.embed_users(history, mask), atol=1e-5)


def test_multi_interest_starts_as_visrank() -> None:
    """Untrained, the style part is cosine similarity of the raw features (up to the
    projection): its ranking of works by similarity to one work agrees with VisRank's."""
    rng = np.random.default_rng(5)
    features = rng.gamma(0.5, 1.0, (400, 64)).astype(np.float32)
    model = MultiInterestNet.for_features(
        features, MultiInterestConfig(projection_dim=64, style_dim=64)
    )
    style = model.embed_items(features)[:, :64] / model.scale
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(style @ style[0], unit @ unit[0], atol=1e-4)


def test_manifest_describes_the_files(exported) -> None:
    model, directory, manifest, _ = exported
    e, k = model.config.embedding_dim, _interests(model)
    on_disk = json.loads((directory / MANIFEST_FILE).read_text())
    assert on_disk == manifest
    assert manifest["format_version"] == 2
    assert manifest["interests"] == k
    assert manifest["score"] == "max_dot"
    assert manifest["feature_dim"] == model.feature_dim
    assert manifest["embedding_dim"] == e
    assert manifest["feature_extractor"] is None
    assert manifest["item_tower"]["sha256"] == sha256_file(directory / ITEM_TOWER_FILE)
    assert manifest["user_tower"]["sha256"] == sha256_file(directory / USER_TOWER_FILE)
    assert manifest["user_tower"]["inputs"] == {"history": ["B", "L", e], "mask": ["B", "L"]}
    assert manifest["user_tower"]["outputs"] == {"user": ["B", k, e]}
    assert 0 <= manifest["export"]["parity_max_abs_diff"] < 1e-4
    assert manifest["training"] == {"note": "random weights"}


def test_tiny_training_run_learns_and_exports(tiny_run) -> None:
    directory, run = tiny_run
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["model"]["architecture"] == "multi-interest"
    assert manifest["metrics"]["validation_metric"] == "replay mean of AUC and R@100"
    assert manifest["metrics"]["validation"] == run.result.best_validation
    assert 1 <= run.result.best_epoch <= len(run.result.history)
    per_guideline = manifest["training"]["triples"]["per_guideline"]
    assert set(per_guideline) == {"1", "2", "3", "4", "5", "6"}
    assert manifest["training"]["seed"] == 0
    assert manifest["training"]["data"]["all"]["items"] == 665
    assert manifest["export"]["parity_max_abs_diff"] < 1e-4


def test_the_paper_architecture_still_trains(tiny_market_dir: Path, tmp_path: Path) -> None:
    config = replace(tiny_run_config(), architecture="paper")
    run = train_and_export(tiny_market_dir, tmp_path / "paper", config, progress=False)
    manifest = json.loads((tmp_path / "paper" / MANIFEST_FILE).read_text())
    assert manifest["model"]["architecture"] == "paper"
    assert manifest["interests"] == 1
    assert run.result.validation_metric == "pairwise accuracy"
    assert run.result.best_validation >= 0.75
    assert run.result.best_validation > run.result.history[0].validation


def test_exported_model_ranks_a_users_held_out_purchases_above_chance(
    tiny_market_dir: Path, tiny_run
) -> None:
    """Through the ONNX files only: the model generalises beyond its training triples."""
    from training.data.formats import load_dataset
    from training.split import split_last_basket

    directory, _ = tiny_run
    dataset = load_dataset(tiny_market_dir)
    train, test = split_last_basket(dataset)
    item = ort.InferenceSession(
        str(directory / ITEM_TOWER_FILE), providers=["CPUExecutionProvider"]
    )
    user = ort.InferenceSession(
        str(directory / USER_TOWER_FILE), providers=["CPUExecutionProvider"]
    )
    embeddings = item.run(["embedding"], {"features": dataset.features})[0]
    percentiles = []
    for u in np.unique(test.purchase_user):
        history = embeddings[train.purchase_item[train.purchase_user == u]][None]
        interests = user.run(
            ["user"], {"history": history, "mask": np.ones(history.shape[:2], np.float32)}
        )[0][0]
        scores = (embeddings @ interests.T).max(axis=1)
        for held in test.purchase_item[test.purchase_user == u]:
            percentiles.append((scores < scores[held]).mean())
    assert np.mean(percentiles) > 0.6  # AUC-like; random ranking gives 0.5


def test_same_seed_same_model(tiny_market_dir: Path, tmp_path: Path) -> None:
    runs = [
        train_and_export(
            tiny_market_dir, tmp_path / name, tiny_run_config(seed=3, epochs=2), progress=False
        )
        for name in ("a", "b")
    ]
    first, second = (r.result.model.trainable_variables for r in runs)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert [e.validation for e in runs[0].result.history] == pytest.approx(
        [e.validation for e in runs[1].result.history], abs=1e-4
    )


def test_an_image_encoder_is_named_by_a_path_relative_to_the_model(tmp_path: Path) -> None:
    from training.data.formats import DataError
    from training.pipeline import _named_encoder

    encoder = (
        Path(__file__).resolve().parents[2] / "models" / "encoders" / "efficientnet-lite0.json"
    )
    named = _named_encoder(encoder, tmp_path / "models" / "mine", 1280)
    assert named["name"] == "efficientnet-lite0"
    assert (tmp_path / "models" / "mine" / named["manifest"]).resolve() == encoder
    assert named["sha256"] == json.loads(encoder.read_text())["sha256"]
    with pytest.raises(DataError, match="gives 1280-d features, the data has 2048-d"):
        _named_encoder(encoder, tmp_path / "mine", 2048)
    with pytest.raises(DataError, match=r"missing\.json: not a readable image encoder manifest"):
        _named_encoder(tmp_path / "missing.json", tmp_path / "mine", 1280)


@pytest.mark.parametrize(
    ("scores", "best_epoch", "kept"),
    [([0.5, 0.7, 0.6], 2, 2.0), ([float("nan")] * 3, 3, 3.0)],
)
def test_the_epoch_loop_keeps_the_best_validated_weights(scores, best_epoch, kept) -> None:
    """The best epoch's weights are restored; without a validation set (NaN), the last."""
    import keras

    from training.train import TrainConfig, TrainResult, fit

    weight = tf.Variable(0.0)
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build([weight])
    epochs = iter(scores)

    def step(rows: np.ndarray) -> tuple[float, float]:
        weight.assign_add(1.0)  # one batch per epoch: the weight counts the epochs
        return 0.0, 1.0

    result = fit(
        TrainResult(None, "test metric"),
        [weight],
        optimizer,
        step,
        10,
        lambda: next(epochs),
        TrainConfig(epochs=3, batch_size=10, stop_patience=5),
        False,
    )
    assert result.best_epoch == best_epoch
    assert float(weight.numpy()) == kept
