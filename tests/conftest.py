"""Session-wide artefacts built once with the real code: a tiny market and a model trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from curatornet.synthetic import MarketConfig, generate
from training.data.formats import save_market

TINY_SCALE = 0.05
TINY_SEED = 11


@pytest.fixture(scope="session")
def tiny_market_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated market of 665 artworks, written in the project format."""
    directory = tmp_path_factory.mktemp("tiny_market")
    save_market(generate(MarketConfig().scaled(TINY_SCALE), seed=TINY_SEED), directory)
    return directory


@pytest.fixture(scope="session")
def tiny_run(tiny_market_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """CuratorNet trained (tiny preset) and exported from the tiny market."""
    from tests.training.helpers import tiny_run_config
    from training.pipeline import train_and_export

    out = tmp_path_factory.mktemp("models") / "tiny"
    run = train_and_export(tiny_market_dir, out, tiny_run_config(), progress=False)
    return out, run
