"""`python -m service`: serve the configured model and store with uvicorn.

Options override the CURATORNET_* environment variables (they are written back to the
environment so that every uvicorn worker process builds the same Settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.supervisors import Multiprocess

from service import load as loading
from service.app import LOG_FORMAT
from service.config import Settings

if TYPE_CHECKING:
    from curatornet.model_loader import LoadOptions
    from service.indexing import CatalogueIndex
    from service.stores.base import Store

log = logging.getLogger("service")

OPTIONS = {
    "host": "CURATORNET_HOST",
    "port": "CURATORNET_PORT",
    "workers": "CURATORNET_WORKERS",
    "model_dir": "CURATORNET_MODEL_DIR",
    "store_url": "CURATORNET_STORE_URL",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", help="default 127.0.0.1 (CURATORNET_HOST)")
    parser.add_argument("--port", type=int, help="default 8000 (CURATORNET_PORT)")
    parser.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    parser.add_argument("--model-dir", help="exported model directory (default models/default)")
    parser.add_argument("--store-url", help="sqlite:///data/curatornet.db (default) or redis://…")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="first load the synthetic art market into the store if it holds no items",
    )
    parser.add_argument(
        "--demo-only",
        action="store_true",
        help="load the synthetic art market as --demo does, then exit without serving",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    loader = commands.add_parser(
        "load",
        help="load a whole catalogue from NDJSON files into the store, then exit",
        description=loading.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    loader.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="NDJSON, one work per line as POST /items takes one; - for standard input",
    )
    # SUPPRESS: given before `load`, these stay as given.
    loader.add_argument(
        "--store-url",
        default=argparse.SUPPRESS,
        help="the store to load into (CURATORNET_STORE_URL)",
    )
    loader.add_argument(
        "--model-dir",
        default=argparse.SUPPRESS,
        help="the model to embed with when the store has none yet (services serving the "
        "store decide otherwise)",
    )
    loader.add_argument(
        "--batch-items",
        type=int,
        help="lines per transaction, all or nothing (default "
        f"{loading.SQLITE_BATCH_ITEMS} into SQLite, {loading.REDIS_BATCH_ITEMS} into Redis, "
        "whose other clients wait while a batch is written)",
    )
    loader.add_argument(
        "--check",
        action="store_true",
        help="read, check and embed every line, report every bad one, write nothing",
    )
    args = parser.parse_args(argv)
    if args.command == "load" and args.batch_items is not None and args.batch_items < 1:
        parser.error("--batch-items must be at least 1")
    for option, variable in OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            os.environ[variable] = str(value)
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    if args.command == "load":
        batch_items = args.batch_items or loading.batch_items(settings.store_url)
        return _load(settings, args.files, batch_items, args.check)
    if args.demo or args.demo_only:
        _load_demo(settings)
    if args.demo_only:
        return 0
    _serve(settings)
    return 0


def _serve(settings: Settings) -> None:
    """uvicorn.run, except that the listening socket has Nagle's algorithm off.

    With several workers uvicorn binds the socket itself and leaves Nagle on, which adds a
    delayed-ACK wait (about 40 ms) to every response on a kept-alive connection
    (Kludex/uvicorn#3149); accepted connections inherit TCP_NODELAY from the listener.
    """
    config = uvicorn.Config(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
    )
    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if settings.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def _offline(
    settings: Settings, options: LoadOptions
) -> Iterator[tuple[Store, CatalogueIndex, LoadOptions]]:
    """The store and an index of it, for a command that writes to the store without serving
    and opens its models with `options`; a model that cannot serve it is an error, and so is a
    store that cannot answer (Redis down or killed midway: each write is whole or absent, and
    works are written by id, so the same command can simply run again)."""
    from curatornet.model_format import ModelError
    from service.index import ItemIndex
    from service.indexing import CatalogueIndex, FeatureDimensionMismatch
    from service.stores import is_outage, open_store

    store = open_store(settings.store_url, settings.sqlite_synchronous)
    try:
        yield store, CatalogueIndex(store, ItemIndex), options
    except (ModelError, FeatureDimensionMismatch) as error:
        raise SystemExit(f"error: {error}") from None
    except Exception as error:
        if not is_outage(error):
            raise
        raise SystemExit(
            f"error: the store cannot answer ({type(error).__name__}: {error}); what was "
            "reported written stays written, nothing of a batch being written was"
        ) from None
    finally:
        store.close()


def _load_demo(settings: Settings) -> None:
    from service.demo import load_demo_market
    from service.rollout import ModelRollouts

    # Every core for ONNX Runtime: a first demo runs the image encoder over the whole market.
    every_core = dataclasses.replace(settings.model_loading(), threads=None)
    with _offline(settings, every_core) as (store, catalogue, options):
        ModelRollouts(store, catalogue, options).start(settings.model_dir)
        load_demo_market(store, catalogue, demo_dir=settings.demo_dir)


def _load(settings: Settings, files: list[str], batch_items: int, check: bool) -> int:
    from curatornet.model_loader import load_model
    from service.rollout import model_dir_served

    # ONNX Runtime on CURATORNET_INFERENCE_THREADS threads that never spin: a load reads,
    # embeds and writes at once (service.load), and its default pool, a thread per core
    # spinning between calls, took a third more CPU per work from the reading and writing.
    with _offline(settings, settings.model_loading()) as (store, catalogue, options):
        build = catalogue.switch_model(
            load_model(model_dir_served(store, settings.model_dir), options)
        )
        log.info("embedding with model %s from %s", build.version, build.model_dir)
        # The start-up's objects (modules, FastAPI's and pydantic's, the index) frozen out of
        # the collector's reach, and young objects collected less often: a load makes about
        # ten objects a line, and collecting them with all of those behind cost an eighth of
        # its CPU.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        try:
            loaded = loading.load(files, catalogue, settings, batch_items, check)
        except loading.LoadRefused as refused:
            print(f"error: {refused}", file=sys.stderr)
            if check:
                print("nothing was written (--check)", file=sys.stderr)
            else:
                print(
                    f"nothing of the batch holding it was written; the {refused.written} works "
                    "before it were",
                    file=sys.stderr,
                )
            return 1
        except OSError as error:
            raise SystemExit(f"error: {error}") from None
    done = "checked" if check else f"loaded ({loaded.created} new, {loaded.updated} replaced)"
    rate = loaded.works / loaded.seconds if loaded.seconds else 0.0
    print(f"{loaded.works} works {done} in {loaded.seconds:.2f} s: {rate:.0f} works/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
