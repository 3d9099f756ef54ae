"""Service settings: command-line flags or ``EIR_SERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_NOISE_SCALE = 10.0  # of the noise that replaces a left-out input (setting, ?noise_scale=, V2 parameter)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EIR_SERVE_", extra="ignore")

    model_path: Path | None = Field(
        None, description="a .safetensors bundle or a run folder: one model (or give --model-repository)"
    )
    model_repository: Path | None = Field(
        None,
        description="a folder of models: each run folder or bundle folder in it is a model named by the folder, "
        "its checkpoints are the model's versions (numbered by training iteration)",
    )
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free one, logged at start)")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="the Open Inference Protocol over gRPC (8001 like Triton); 0 turns it off"
    )
    max_batch_size: int = Field(64, ge=1, description="items run in one forward pass at most")
    batch_timeout_ms: float = Field(
        0.0, ge=0, description="how long the first item of a batch waits for more (0: take what is queued)"
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="adaptive batching: past --batch-timeout-ms, how long a batch may wait at most for requests "
        "already on their way (body being read or decoded); it never waits when none is (a lone client); 0: off",
    )
    max_queue: int = Field(1024, ge=1, description="items waiting at most; past that /predict answers 503")
    max_body_bytes: int = Field(8_000_000, ge=1024, description="larger request bodies get 413")
    max_inflight_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=65536,
        description="request bodies being received or held by requests in progress, summed over all connections; "
        "a request whose body would go past it gets 503 with Retry-After (bodies over 64 KiB may use 3/4 of it)",
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, le=1024 * 1024, description="request line plus headers at most; past it 431 and the close"
    )
    max_items_per_request: int = Field(256, ge=1, description="larger requests get 413")
    request_timeout_s: float = Field(30.0, gt=0, description="a prediction that takes longer gets 504")
    # The default is measured (benchmarks/results/conditional_quality.md, 8x8 run 2, scales 0.5..10):
    # FD falls with the scale all the way to 10 at 100 % judged right, but by little past ~3; 3 is the
    # smallest scale within 0.5 of the sweep's lowest FD (8.10 vs 9.36 at 1 and 7.62 at 10), and stays
    # nearer the N(0,1) the model was trained with (out-of-range pixels grow with the scale).
    noise_scale: float = Field(
        3.0,
        ge=0,
        le=MAX_NOISE_SCALE,
        allow_inf_nan=False,
        description="scale of the N(0,1) noise that replaces a left-out input (1: EIR's imputation); "
        "a request may override it (?noise_scale=, V2 parameter noise_scale)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    enable_echo: bool = Field(False, description="POST /echo: the same decode/encode work without the model")
    api_key: SecretStr | None = Field(
        None, description="when set, /predict and /v2/.../infer need 'Authorization: Bearer <key>' (off by default)"
    )
    api_key_file: Path | None = Field(None, description="read the API key from this file (a mounted secret)")
    body_timeout_s: float = Field(
        30.0, gt=0, description="time to receive a request's headers, and then its body; past it 408 and the close"
    )
    limit_concurrency: int = Field(
        2048,
        ge=1,
        description="open HTTP connections at most; a new one closes the one that has waited longest without "
        "completing its request, or, when every connection is busy, gets 503",
    )
    keep_alive_s: int = Field(5, ge=1, description="an idle keep-alive connection is closed after this (uvicorn)")
    drain_s: float = Field(
        0.0, ge=0, description="on SIGTERM, report not ready but keep serving this long (load balancers stop sending)"
    )
    graceful_timeout_s: int = Field(30, ge=1, description="then wait at most this long for requests in flight")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="server processes sharing the port (SO_REUSEPORT), each with its own model copy and batcher; "
        "/metrics sums them",
    )
    reuse_port: bool = Field(
        False, description="bind with SO_REUSEPORT, so that several eirserve processes share the port (--workers does)"
    )
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="what runs the model: onnx = the bundle's ONNX graph on ONNX Runtime (CPU only; PyTorch is "
        "not imported: faster start, less memory); torch = PyTorch (CPU or CUDA, see --graph); auto: onnx "
        "when the bundle has a graph and the model runs on the CPU, else torch",
    )
    graph: Literal["auto", "eager", "torchscript"] = Field(
        "auto",
        description="with --runtime torch, how the forward pass runs: torchscript traces and freezes the model "
        "at load (checked against eager, which it falls back to); auto: torchscript on the CPU, eager on CUDA",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="intra-op threads of the forward pass per process, PyTorch's or ONNX Runtime's (0: 1 on "
        "the CPU, leaving the other cores to the HTTP side and other workers; PyTorch's default on CUDA)",
    )
    http: Literal["auto", "httptools", "h11"] = Field("auto", description="HTTP parser (auto: httptools if installed)")
    loop: Literal["auto", "uvloop", "asyncio"] = Field("auto", description="event loop (auto: uvloop if installed)")
    access_log: bool = Field(
        False, description="log a line per request (uvicorn's access log; off by default: it costs throughput)"
    )
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: serve the versions chosen at start for the server's life; poll: watch the run folder "
        "or repository and serve new versions as eirtrain writes them (each loaded and warmed up beside the one "
        "served, which finishes its requests first); explicit: load and unload models on request "
        "(POST /v2/repository/models/NAME/load and /unload, Triton's model-repository extension)",
    )
    poll_interval_s: float = Field(
        2.0, gt=0, description="with --model-control poll, how often to look at the run folder or repository"
    )
    version_policy: str = Field(
        "auto",
        description="which checkpoints of a model are served: best (the one --model-path picks: highest "
        "perf-average, then latest), latest:N (the N latest iterations), all, specific:ITER[,ITER...]; "
        "auto: best for --model-path, latest:1 for --model-repository",
    )
    model_version_policies: dict[str, str] = Field(
        default_factory=dict, description='per model, over --version-policy, as JSON: {"digits": "latest:2"}'
    )
    load_model: str = Field(
        "*",
        description="with --model-control explicit, the models loaded at start: comma-separated names, "
        "* for every model, or an empty string for none",
    )
    default_model: str | None = Field(
        None,
        description="the model of the EIR routes (/predict, /info) and the web page when the repository has "
        "several (default: the first by name)",
    )
    ready_when: Literal["all", "any"] = Field(
        "all",
        description="when /ready (and the protocol's server readiness) says ready: all = every model meant to "
        "be loaded answers requests; any = at least one does",
    )
