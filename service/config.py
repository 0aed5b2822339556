"""All service configuration, read once from the environment (prefix CURATORNET_)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from curatornet.model_loader import LoadOptions


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CURATORNET_", protected_namespaces=())

    model_dir: Path = Field(Path("models/default"), description="exported model directory")
    store_url: str = Field(
        "sqlite:///data/curatornet.db",
        description="sqlite:///path.db (embedded) or redis://host:port/db",
    )
    models_root: Annotated[list[Path], NoDecode] = Field(
        [Path("models")],
        description="the directories (separated by ':') model directories are rolled out "
        "from, through POST /admin/model or by following the fleet; their image encoders are "
        "read from these and from encoders_dir only",
    )
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite's durability: NORMAL can lose the last commits to a power loss "
        "(never to a crash); FULL syncs each commit to disk first (README: Durability)",
    )
    encoders_dir: Path = Field(
        Path("models/encoders"),
        description="image encoders, found by name when not where a model's manifest says",
    )
    demo_dir: Path = Field(
        Path("data/demo"), description="--demo's cache of the painted market and its new works"
    )
    api_key: SecretStr | None = Field(
        None,
        description="when set, writes, purchase histories and a customer's recommendations "
        "(by user_id) need it as X-API-Key",
    )
    admin_key: SecretStr | None = Field(
        None, description="POST /admin/model needs it as X-API-Key; unset, administration is off"
    )
    allow_anonymous: bool = Field(
        False,
        description="serve a non-loopback host without an API key, so that anyone reaching "
        "it may write (off: such a service refuses to start)",
    )
    index_kind: Literal["flat", "hnsw"] = Field("flat", description="exact or HNSW search")
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_search: int = Field(
        96,
        ge=8,
        le=4096,
        description="HNSW search breadth: recall@20 0.975 at a million works, against 0.983 "
        "at 128 for a third more search (README: A million artworks)",
    )
    hnsw_search_threads: int = Field(
        2,
        ge=1,
        le=64,
        description="threads one HNSW search runs on: a customer's interests (4) are searched "
        "side by side, at most one per thread; 1 where every core already runs a busy worker",
    )
    index_snapshots: bool = Field(
        True,
        description="keep the built index on disk between starts and start from it, replaying "
        "only the changes since (README: Index snapshots); off: every start rebuilds it",
    )
    index_snapshot_dir: Path | None = Field(
        None,
        description="where the index snapshot is kept, named after the store's id; unset: "
        "beside a SQLite store's file, and none for Redis (whose service hosts may have no "
        "lasting disk: set a directory on a volume to have one)",
    )
    history_length: int = Field(300, ge=1, le=10_000, description="last N purchases per user")
    max_batch_items: int = Field(1000, ge=1, description="items per POST /items")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="POST /items body limit")
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="body limit of every other request"
    )
    max_metadata_bytes: int = Field(4096, ge=64, description="JSON size of one item's metadata")
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="one uploaded image")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="decompression-bomb guard")
    max_feature_magnitude: float = Field(
        1000.0,
        gt=0,
        description="largest |value| of an uploaded feature vector: far beyond what image "
        "encoders give (EfficientNet-lite0: 0 to 6), short of what overflows a model",
    )
    max_norm_ratio: float = Field(
        3.0,
        gt=1,
        description="an uploaded work whose embedding is longer than this many times the "
        "median of the served catalogue's is refused, as it would outrank the others for "
        "many customers (normal works measured at most 2x; README: Bad inputs)",
    )
    max_k: int = Field(500, ge=1, description="largest k a request may ask for")
    sync_interval_s: float = Field(
        0.2, gt=0, le=5, description="how often other processes' changes are applied"
    )
    max_sync_lag_s: float = Field(
        30.0,
        gt=0,
        description="/readyz answers 503 while this process has not caught up with the "
        "store's changes for this long",
    )
    explain_items: int = Field(3, ge=1, le=20, description="history items per explanation")
    inference_threads: int = Field(
        1, ge=1, le=64, description="ONNX Runtime, FAISS and BLAS threads per worker process"
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_key", "admin_key", "index_snapshot_dir", mode="before")
    @classmethod
    def empty_means_none(cls, value: object) -> object:
        """`CURATORNET_API_KEY=` (as docker-compose passes an unset variable) means no key,
        and an empty snapshot directory none."""
        return None if value == "" else value

    @field_validator("models_root", mode="before")
    @classmethod
    def path_list(cls, value: object) -> object:
        """`CURATORNET_MODELS_ROOT=/models:/app/models`, as PATH lists directories; one path
        (a str or a Path) is a list of one."""
        if isinstance(value, str):
            return [part for part in value.split(os.pathsep) if part]
        return [value] if isinstance(value, Path) else value

    @model_validator(mode="after")
    def keyed_beyond_loopback(self) -> Settings:
        """A service other machines can reach takes anonymous writes only when told to."""
        if self.api_key is None and not self.allow_anonymous and not self.loopback_only:
            raise ValueError(
                f"serving {self.host} without CURATORNET_API_KEY would let anyone reaching it "
                "write: set a key, or CURATORNET_ALLOW_ANONYMOUS=true to serve it open"
            )
        return self

    @property
    def loopback_only(self) -> bool:
        """Whether only this machine can reach the service."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: other machines may resolve it
            return False

    def model_loading(self) -> LoadOptions:
        """How this process opens models, at start-up and on every roll-out."""
        return LoadOptions(
            threads=self.inference_threads,
            encoders_dir=self.encoders_dir,
            roots=tuple(self.models_root),
        )
