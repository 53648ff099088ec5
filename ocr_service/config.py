"""Settings: every `OCR_` environment variable (and `.env`), read here and nowhere else."""

from __future__ import annotations

import os
import socket
from typing import Any, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ocr_service.deepseek import DEFAULT_PROMPT

EngineName = Literal["rapidocr", "vllm", "transformers", "remote", "fake"]


class Settings(BaseSettings):
    """Service configuration. The defaults of the variables the original service had are kept."""

    model_config = SettingsConfigDict(
        env_prefix="OCR_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,  # OCR_DEVICES also answers to CUDA_VISIBLE_DEVICES
    )

    # Engine and model
    engine: EngineName = "rapidocr"
    model_path: str = "deepseek-ai/DeepSeek-OCR"
    gpu_memory_util: float = Field(0.8, gt=0, le=1)
    max_model_len: int = Field(8192, ge=256)
    tensor_parallel_size: int = Field(1, ge=1)
    resolution_mode: Literal["tiny", "small", "base", "large", "gundam"] = "gundam"
    # Engine worker processes: unset = one per GPU (or per group of OCR_TENSOR_PARALLEL_SIZE GPUs)
    # for the GPU engines and none (the engine in the service's process) for the CPU ones.
    engine_workers: int | None = Field(None, ge=0)
    # GPUs to use, e.g. "0,1"; empty = CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists.
    devices: str = Field("", validation_alias=AliasChoices("OCR_DEVICES", "CUDA_VISIBLE_DEVICES"))
    warmup_tokens: int = Field(32, ge=0)  # tokens a page of the warm-up batch generates (0 = no warm-up)
    ignore_eos: bool = False  # benchmarks: every page generates exactly its max_tokens (GPU engines)
    # vLLM's attention backends by name, e.g. TRITON_ATTN and TORCH_SDPA where FlashAttention 3 fails; empty = vLLM's choice
    vllm_attention_backend: str = ""
    vllm_mm_encoder_attention_backend: str = ""
    # Any other vLLM engine arguments as a JSON object, applied last, e.g. {"attention_config": {"flash_attn_version": 2}}
    vllm_engine_args: dict[str, Any] = Field(default_factory=dict)

    # Batching and admission
    batch_size: int = Field(8, ge=1, le=1024)
    max_queue_size: int = Field(100, ge=1)
    batch_timeout: float = Field(2.0, ge=0)
    batch_policy: Literal["timeout", "adaptive"] = "adaptive"
    max_batch_urls: int = Field(100, ge=1)
    sync_timeout: float = Field(300, gt=0)  # POST /ocr_batch answers 504 (with task ids) past this

    # Task store: memory (nothing survives a restart), sqlite (one service keeps its tasks and
    # waiting work through restarts) or redis (several fronts share tasks)
    store: Literal["memory", "sqlite", "redis"] = "memory"
    store_path: str = "ocr-tasks.sqlite3"  # the SQLite file
    redis_url: str = "redis://localhost:6379/0"
    front_id: str = ""  # this front's name in Redis; empty = host name and port
    task_ttl: float = Field(3600, gt=0)
    cleanup_interval: float = Field(300, gt=0)
    max_stored_tasks: int = Field(100_000, ge=1)  # tasks held (waiting, running, finished within the TTL)
    max_stored_tasks_per_client: int = Field(10_000, ge=1)  # the same, per API key or client address
    keep_documents_mb: float = Field(256, ge=0)  # ended tasks' documents kept for page images; 0 = none

    # Inputs
    max_image_size_mb: float = Field(20, gt=0)
    image_download_timeout: float = Field(30, gt=0)
    max_image_pixels: int = Field(60_000_000, ge=1)
    pdf_dpi: int = Field(144, ge=36, le=600)
    pdf_max_pixels: int = Field(16_000_000, ge=1)  # a bigger PDF page is drawn scaled down to fit
    max_pdf_pages: int = Field(500, ge=1)
    allow_private_urls: bool = False
    url_allowed_hosts: str = ""  # comma-separated host names URLs may name; empty = any (public) host
    max_redirects: int = Field(5, ge=0, le=20)

    # Decoding: child processes that open documents and draw pages (documents/sandbox.py)
    # Pages use all but one, so uploads are always checked at once; 0 = half the CPU cores, 3 to 16
    decode_workers: int = Field(0, ge=0, le=64)
    decode_timeout: float = Field(15, gt=0)  # seconds per page and per open; the child is killed past it
    decode_memory_mb: int = Field(2048, ge=256)  # address space of each child

    # Default OCR parameters
    default_prompt: str = DEFAULT_PROMPT
    default_temperature: float = Field(0.0, ge=0, le=2)
    default_max_tokens: int = Field(8192, ge=1)
    ngram_size: int = Field(30, ge=1)
    window_size: int = Field(90, ge=1)

    # Server
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    shutdown_grace: float = Field(25, ge=0)  # seconds running batches get to finish after SIGTERM
    request_header_timeout: float = Field(10, gt=0)  # seconds a client has to send each request's headers
    body_timeout: float = Field(30, gt=0)  # seconds a request body may pause between chunks
    max_connections: int = Field(0, ge=0)  # open connections per process; 0 = 80% of the file limit
    max_connections_per_client: int = Field(64, ge=1)  # open connections per client address
    trusted_proxies: str = ""  # comma-separated proxy addresses whose X-Forwarded-For is believed; empty = none

    # Access
    api_keys: SecretStr = SecretStr("")  # comma-separated; empty = no keys needed
    rate_limit: str = ""  # per client, e.g. "60/minute"; empty = off

    # Fake engine (tests and benchmarks)
    fake_batch_latency: float = Field(0.05, ge=0)
    fake_item_latency: float = Field(0.01, ge=0)
    fake_memory_budget_mb: float = Field(0, ge=0)
    fake_item_memory_mb: float = Field(0, ge=0)

    # RapidOCR engine
    rapidocr_threads: int = Field(2, ge=1, le=64)

    # Remote engine: `vllm serve` replicas (OCR_BATCH_SIZE is each replica's page cap)
    remote_urls: str = ""  # comma-separated base URLs, e.g. http://gpu1:8000,http://gpu2:8000
    remote_timeout: float = Field(600, gt=0)  # seconds one replica gets for one page
    remote_startup_timeout: float = Field(600, gt=0)  # seconds to wait for a healthy replica
    remote_model: str = ""  # the served model name; empty = ask each replica's /v1/models
    remote_api_key: SecretStr = SecretStr("")  # sent as a Bearer token (vllm serve --api-key)

    @field_validator("engine_workers", mode="before")
    @classmethod
    def _empty_means_automatic(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("decode_workers", mode="after")
    @classmethod
    def _decode_workers_for_this_host(cls, value: int) -> int:
        # Every page of every batch is drawn by these children: a host of many cores, feeding GPUs, gets more.
        return value or max(3, min(16, (os.cpu_count() or 1) // 2))

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("rate_limit", mode="after")
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        # Parsed here so a typo stops the start instead of turning the limit off.
        if value.strip():
            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"not a rate limit such as '60/minute' or '10/second;1000/day': {exc}") from exc
        return value.strip()

    @field_validator("default_prompt", mode="after")
    @classmethod
    def _unescape_prompt(cls, value: str) -> str:
        # `.env` files and shells pass "\n" literally (OCR_DEFAULT_PROMPT=<image>\nFree OCR.).
        return value.replace("\\n", "\n")

    @field_validator("remote_urls", mode="after")
    @classmethod
    def _check_remote_urls(cls, value: str) -> str:
        urls = [url.strip().rstrip("/") for url in value.split(",") if url.strip()]
        seen: set[tuple[str, str, str]] = set()
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http:// or https:// URL")
            if parts.query or parts.fragment or parts.path.endswith("/v1"):
                raise ValueError(f"{url!r}: give the server's base URL (http://host:8000), without /v1 or a query")
            key = (parts.scheme, parts.netloc.lower(), parts.path)
            if key in seen:
                raise ValueError(f"{url!r} is listed twice")
            seen.add(key)
        return ",".join(urls)

    @model_validator(mode="after")
    def _check_window(self) -> Settings:
        if self.window_size < self.ngram_size:
            raise ValueError("OCR_WINDOW_SIZE must be at least OCR_NGRAM_SIZE")
        return self

    @model_validator(mode="after")
    def _check_remote(self) -> Settings:
        if self.engine == "remote" and not self.remote_urls:
            raise ValueError("OCR_ENGINE=remote needs OCR_REMOTE_URLS (comma-separated vllm serve base URLs)")
        if self.engine == "remote" and self.engine_workers:
            raise ValueError("OCR_ENGINE_WORKERS does not apply to OCR_ENGINE=remote (each replica is a worker): leave it empty")
        return self

    @property
    def remote_url_list(self) -> tuple[str, ...]:
        return tuple(url for url in self.remote_urls.split(",") if url)

    @property
    def url_allowed_host_set(self) -> frozenset[str]:
        return frozenset(host.strip().lower() for host in self.url_allowed_hosts.split(",") if host.strip())

    @property
    def front_name(self) -> str:
        return self.front_id or f"{socket.gethostname()}:{self.port}"

    @property
    def trusted_proxy_list(self) -> str:
        return ",".join(part.strip() for part in self.trusted_proxies.split(",") if part.strip())

    @property
    def api_key_list(self) -> list[str]:
        return [key.strip() for key in self.api_keys.get_secret_value().split(",") if key.strip()]

    @property
    def keep_documents_bytes(self) -> int:
        return int(self.keep_documents_mb * 1024 * 1024)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_image_size_mb * 1024 * 1024)
