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
import threading
from pathlib import Path

from curatornet.model_format import ModelError
from curatornet.model_loader import LoadedModel, LoadOptions, load_model
from service.indexing import CatalogueIndex, IndexBuild
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


def model_dir_served(store: Store, configured: Path) -> Path:
    """The model directory the store's services serve, else (a store no service has started
    on) `configured`; unlike `model_dir_at_start`, it changes nothing, so that a bulk load
    embeds with the fleet's model and never rolls another one out."""
    chosen = store.get_setting(CHOSEN)
    return Path(chosen) if chosen else configured


class ModelRollouts:
    """Every switch of this process's model: at start-up, through the admin endpoint, after
    another process rolled one out, and the rebuild of the same model's index after the store
    was unreachable. One at a time; the last one is remembered for /metrics.
    """

    def __init__(self, store: Store, catalogue: CatalogueIndex, options: LoadOptions) -> None:
        self._store, self._catalogue, self._options = store, catalogue, options
        self._lock = threading.Lock()
        self._refused: set[tuple[str, str]] = set()  # tried and failed; not retried each tick
        self.last_build: IndexBuild | None = None
        # Why this process cannot serve the model the fleet chose, while it serves another:
        # /readyz answers 503 with it, as a process that answers from the wrong model is not
        # ready. None while it serves the fleet's choice.
        self.fleet_refusal: str | None = None

    def _inside_roots(self, model_dir: Path) -> None:
        """ModelError unless `model_dir` lies inside a models root: a leaked admin key, or a
        store someone else can write to, must not make the service read any directory on the
        machine."""
        roots = self._options.roots or ()
        if not any(model_dir.resolve().is_relative_to(root.resolve()) for root in roots):
            listed = ", ".join(str(root) for root in roots) or "none configured"
            raise ModelError(f"{model_dir} lies outside the models root ({listed})")

    def _switch(self, model: LoadedModel, from_snapshot: bool = True) -> IndexBuild:
        self.last_build = self._catalogue.switch_model(model, from_snapshot)
        return self.last_build

    def start(self, configured: Path) -> IndexBuild:
        """Serve the model this process should start with (see the module docstring)."""
        with self._lock:
            model = load_model(model_dir_at_start(self._store, configured), self._options)
            build = self._switch(model)
            # After a start that adopted the environment's directory: the version it holds.
            chosen = self._store.get_setting(CHOSEN)
            if chosen == str(model.directory) and not self._store.get_setting(CHOSEN_VERSION):
                self._store.set_setting(CHOSEN_VERSION, model.version)
            return build

    def roll_out(self, model_dir: Path) -> IndexBuild:
        """Serve `model_dir` here and make it, at the version it holds now, the fleet's choice.

        Raises ModelError or FeatureDimensionMismatch, leaving the current model in place. One
        roll-out at a time: a second waits, and the fleet follower skips its tick meanwhile.
        """
        self._inside_roots(model_dir)
        with self._lock:
            model = load_model(model_dir, self._options)
            build = self._switch(model)
            self._store.set_setting(CHOSEN, str(model_dir))
            self._store.set_setting(CHOSEN_VERSION, model.version)
        log.info(
            "rolled out model %s from %s: %d items indexed, %d re-embedded, %.2f s",
            build.version,
            build.model_dir,
            build.indexed,
            build.embedded,
            build.seconds,
        )
        return build

    def rebuild(self) -> IndexBuild:
        """The index of the model being served, rebuilt from the store: after the store was
        unreachable, when change-log entries may have been lost or trimmed (so not from the
        snapshot, which would have missed them too)."""
        with self._lock:
            return self._switch(self._catalogue.serving.model, from_snapshot=False)

    def follow_fleet(self) -> None:
        """Called on every sync tick: roll out here what another process rolled out.

        The choice is a directory and the version it held when rolled out, so retraining into
        the same directory and rolling out again reaches every process, and a directory that
        changed since (half written, or retrained without a roll-out) is refused, not served.
        """
        chosen = self._store.get_setting(CHOSEN)
        version = self._store.get_setting(CHOSEN_VERSION)
        if not chosen or not version or version == self._catalogue.serving.model.version:
            self.fleet_refusal = None
            return
        if (chosen, version) in self._refused:
            return
        if not self._lock.acquire(blocking=False):
            return  # a roll-out is under way in this process
        try:
            self._inside_roots(Path(chosen))
            model = load_model(chosen, self._options)
            if model.version != version:
                raise ModelError(f"{chosen} now holds model {model.version}, not {version}")
            self._switch(model)
            self.fleet_refusal = None
            log.info("followed the fleet to model %s from %s", version, chosen)
        except Exception as error:  # whatever it is, this process keeps its current model
            self._refused.add((chosen, version))
            self.fleet_refusal = f"cannot serve the fleet's model {version} from {chosen}: {error}"
            log.error("%s; serving %s", self.fleet_refusal, self._catalogue.serving.model.version)
        finally:
            self._lock.release()
