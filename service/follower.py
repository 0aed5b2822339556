"""The thread that keeps this process in step with the others serving the same store: every
tick it follows the fleet's model, then the change log, and says how that went, so /readyz
can report a follower that is failing or behind instead of "ready".
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from service.indexing import CatalogueIndex
from service.rollout import ModelRollouts
from service.stores.base import ChangesLost

log = logging.getLogger("service")


class Follower:
    """Applies other processes' changes every `interval` seconds until `stop()`.

    After the store was unreachable, or when the change log was trimmed past this process's
    cursor, the index is rebuilt from the store: entries were lost or trimmed meanwhile.
    """

    def __init__(self, catalogue: CatalogueIndex, rollouts: ModelRollouts, interval: float) -> None:
        self._catalogue, self._rollouts, self._interval = catalogue, rollouts, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)
        self.last_success = time.monotonic()
        self.error: str | None = None  # why the last tick failed; None after a good one

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def lag(self) -> float:
        """Seconds since the last tick that brought the index level with the store."""
        return time.monotonic() - self.last_success

    def _run(self) -> None:
        behind = False  # the store was unreachable, or the log was trimmed past the cursor
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):  # the store is down: the change log says so
                self._rollouts.follow_fleet()
            try:
                try:
                    self._catalogue.follow_changes()
                except ChangesLost as lost:
                    log.warning("%s: rebuilding the index from the store", lost)
                    behind = True
                if behind:
                    log.info("rebuilding the index from the store")
                    self._rollouts.rebuild()
                    behind = False
                self.last_success, self.error = time.monotonic(), None
            except Exception as error:  # a store hiccup must not kill the follower
                if self.error is None:
                    log.exception("cannot follow the store's changes; retrying every tick")
                self.error = f"{type(error).__name__}: {error}"
                behind = True
