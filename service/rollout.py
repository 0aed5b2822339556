"""Which model every process serves, and switching all of them to a new one.

The store holds the fleet's choice (`model_dir`), so a roll-out made through one replica's
admin endpoint reaches the others through their change-log follower. A restart decides
between that choice and CURATORNET_MODEL_DIR like this: when the environment's value changed
since a process last started with it, the operator changed the setting, and it wins;
otherwise (a crashed replica coming back) the store's choice stands, so a restart never
rolls the fleet back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from service.encoders import ModelError, load_model
from service.recommender import FeatureDimensionMismatch, Recommender, Rollout
from service.stores.base import Store

log = logging.getLogger(__name__)

CHOSEN = "model_dir"
FROM_ENVIRONMENT = "model_dir_from_environment"


def model_dir_at_start(store: Store, configured: Path) -> Path:
    """The model directory a starting process serves (see the module docstring)."""
    chosen = store.get_setting(CHOSEN)
    if chosen is None or store.get_setting(FROM_ENVIRONMENT) != str(configured):
        store.set_setting(FROM_ENVIRONMENT, str(configured))
        store.set_setting(CHOSEN, str(configured))
        return configured
    if chosen != str(configured):
        log.info("serving %s, rolled out through the admin endpoint (not %s)", chosen, configured)
    return Path(chosen)


def roll_out(recommender: Recommender, model_dir: Path, threads: int) -> Rollout:
    """Serve `model_dir` here and make it the fleet's choice; raises ModelError or
    FeatureDimensionMismatch, leaving the current model in place, when it cannot be served."""
    rollout = recommender.serve(load_model(model_dir, threads))
    recommender.store.set_setting(CHOSEN, str(model_dir))
    log.info(
        "rolled out model %s from %s: %d items indexed, %d re-embedded, %.2f s",
        rollout.version,
        rollout.model_dir,
        rollout.indexed,
        rollout.embedded,
        rollout.seconds,
    )
    return rollout


class FleetFollower:
    """Called on every sync tick: roll out here what another process rolled out."""

    def __init__(self, recommender: Recommender, threads: int) -> None:
        self.recommender, self.threads = recommender, threads
        self._refused: set[str] = set()  # tried and failed here; not retried every tick

    def tick(self) -> None:
        chosen = self.recommender.store.get_setting(CHOSEN)
        current = str(self.recommender.model.directory)
        if chosen is None or chosen == current or chosen in self._refused:
            return
        try:
            self.recommender.serve(load_model(chosen, self.threads))
            log.info("followed the fleet to model %s", chosen)
        except (ModelError, FeatureDimensionMismatch) as error:
            self._refused.add(chosen)
            log.error("cannot serve %s, chosen through another process: %s", chosen, error)
