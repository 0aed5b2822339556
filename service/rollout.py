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

from service.encoders import LoadedModel, LoadOptions, ModelError, load_model
from service.recommender import Recommender, Rollout
from service.stores.base import Store

log = logging.getLogger(__name__)

CHOSEN = "model_dir"
CHOSEN_VERSION = "model_version"
FROM_ENVIRONMENT = "model_dir_from_environment"


def model_dir_at_start(store: Store, configured: Path) -> Path:
    """The model directory a starting process serves (see the module docstring)."""
    chosen = store.get_setting(CHOSEN)
    if chosen is None or store.get_setting(FROM_ENVIRONMENT) != str(configured):
        store.set_setting(FROM_ENVIRONMENT, str(configured))
        store.set_setting(CHOSEN, str(configured))
        store.set_setting(CHOSEN_VERSION, "")  # filled in by the first process to load it
        return configured
    if chosen != str(configured):
        log.info("serving %s, rolled out through the admin endpoint (not %s)", chosen, configured)
    return Path(chosen)


def record_started(store: Store, model: LoadedModel) -> None:
    """After a start that adopted the environment's directory: the version it holds."""
    if store.get_setting(CHOSEN) == str(model.directory) and not store.get_setting(CHOSEN_VERSION):
        store.set_setting(CHOSEN_VERSION, model.version)


def load(model_dir: Path | str, options: LoadOptions) -> LoadedModel:
    """load_model, with every way a directory can be unreadable turned into ModelError."""
    try:
        return load_model(model_dir, options)
    except ModelError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{model_dir}: cannot be loaded ({error})") from None


def roll_out(recommender: Recommender, model_dir: Path, options: LoadOptions) -> Rollout:
    """Serve `model_dir` here and make it, at the version it holds now, the fleet's choice.

    Raises ModelError or FeatureDimensionMismatch, leaving the current model in place. One
    roll-out at a time: a second waits, and the follower skips its tick meanwhile.
    """
    with recommender.rollout_lock:
        model = load(model_dir, options)
        rollout = recommender.serve(model)
        recommender.store.set_setting(CHOSEN, str(model_dir))
        recommender.store.set_setting(CHOSEN_VERSION, model.version)
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
    """Called on every sync tick: roll out here what another process rolled out.

    The choice is a directory and the version it held when rolled out, so retraining into
    the same directory and rolling out again reaches every process, and a directory that
    changed since (half written, or retrained without a roll-out) is refused, not served.
    """

    def __init__(self, recommender: Recommender, options: LoadOptions) -> None:
        self.recommender, self.options = recommender, options
        self._refused: set[tuple[str, str]] = set()  # tried and failed; not retried each tick

    def tick(self) -> None:
        store = self.recommender.store
        chosen, version = store.get_setting(CHOSEN), store.get_setting(CHOSEN_VERSION)
        if not chosen or not version or version == self.recommender.model_version:
            return
        if (chosen, version) in self._refused:
            return
        if not self.recommender.rollout_lock.acquire(blocking=False):
            return  # a roll-out is under way in this process
        try:
            model = load(chosen, self.options)
            if model.version != version:
                raise ModelError(f"{chosen} now holds model {model.version}, not {version}")
            self.recommender.serve(model)
            log.info("followed the fleet to model %s from %s", version, chosen)
        except Exception as error:  # whatever it is, this process keeps its current model
            self._refused.add((chosen, version))
            log.error(
                "cannot serve %s (%s), chosen through another process: %s", chosen, version, error
            )
        finally:
            self.recommender.rollout_lock.release()
