"""`python -m service`: serve the configured model and store with uvicorn.

Options override the CURATORNET_* environment variables (they are written back to the
environment so that every uvicorn worker process builds the same Settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys

import uvicorn
from uvicorn.supervisors import Multiprocess

from service.app import LOG_FORMAT
from service.config import Settings

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
    args = parser.parse_args(argv)
    for option, variable in OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            os.environ[variable] = str(value)
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
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


def _load_demo(settings: Settings) -> None:
    from curatornet.model_format import ModelError
    from service.demo import load_demo_market
    from service.index import ItemIndex
    from service.indexing import CatalogueIndex, FeatureDimensionMismatch
    from service.rollout import ModelRollouts
    from service.stores import open_store

    # Every core for ONNX Runtime: a first demo runs the image encoder over the whole market.
    options = dataclasses.replace(settings.model_loading(), threads=None)
    store = open_store(settings.store_url, settings.sqlite_synchronous)
    try:
        catalogue = CatalogueIndex(store, ItemIndex)
        ModelRollouts(store, catalogue, options).start(settings.model_dir)
        load_demo_market(store, catalogue, demo_dir=settings.demo_dir)
    except (ModelError, FeatureDimensionMismatch) as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
