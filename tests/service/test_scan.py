"""The packed scan's session against numpy, and the graph it is built from."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from service.scan import CATALOGUE, QUERIES, SCORES, PackedVectors, scan_model


def test_the_model_is_one_product_of_the_queries_by_an_external_catalogue() -> None:
    model = onnx.load_from_string(scan_model(65, 13297))
    (node,) = model.graph.node
    assert (node.op_type, list(node.input), list(node.output)) == (
        "Gemm",
        [QUERIES, CATALOGUE],
        [SCORES],
    )
    assert [(a.name, a.i) for a in node.attribute] == [("transB", 1)]
    assert onnx.helper.get_attribute_value(node.attribute[0]) == 1
    (catalogue,) = model.graph.initializer
    assert (catalogue.name, list(catalogue.dims)) == (CATALOGUE, [13297, 65])
    assert catalogue.data_type == onnx.TensorProto.FLOAT
    assert catalogue.data_location == onnx.TensorProto.EXTERNAL
    assert {e.key: e.value for e in catalogue.external_data}["length"] == str(4 * 65 * 13297)
    (queries,) = model.graph.input
    shape = queries.type.tensor_type.shape.dim
    assert (shape[0].dim_param, shape[1].dim_value) == ("queries", 65)
    shape = model.graph.output[0].type.tensor_type.shape.dim
    assert (shape[0].dim_param, shape[1].dim_value) == ("queries", 13297)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    # A dimension past one byte's varint and one past two.
    assert list(onnx.load_from_string(scan_model(300, 70000)).graph.initializer[0].dims) == [
        70000,
        300,
    ]


@pytest.mark.parametrize("n_queries", [1, 4])
def test_packed_scores_are_the_inner_products(n_queries: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 65)).astype(np.float32)
    queries = rng.normal(size=(n_queries, 65)).astype(np.float32)
    expected = queries.astype(np.float64) @ vectors.astype(np.float64).T
    packed = PackedVectors(vectors)
    vectors[:] = 0  # the session holds its own copy
    scores = packed.scores(queries)
    assert scores.shape == (n_queries, 2000)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    assert packed.count == 2000
