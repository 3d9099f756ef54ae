"""Several training processes under ``torchrun`` (DistributedDataParallel).

``Dist.from_env()`` reads the variables torchrun sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``);
without them the run is a single process and every collective below returns its input.

All collectives here move small CPU tensors. On GPUs the process group is created as
``cpu:gloo,cuda:nccl``, so gradients go over NCCL while these messages go over gloo. Objects
travel as UTF-8 JSON in uint8 tensors, never as pickles.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from eir_core.config.schema import ExperimentConfig
from eir_core.data.dataset import RunData, build_run_data
from eir_core.device import resolve_device
from eir_core.errors import ConfigError, DataError, EirError

log = logging.getLogger("eir_core.train")

T = TypeVar("T")


class PeerFailed(EirError):
    """Another rank stopped with an error; that rank reports it, this one only stops."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment: {name}={raw!r} is not an integer (it is set by torchrun)") from None


def is_peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another process went away."""
    import torch.distributed as td

    text = str(e)
    return isinstance(e, td.DistError) or "Connection closed by peer" in text or "Connection reset" in text


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    job_id: str | None = None  # torchrun's TORCHELASTIC_RUN_ID: the same for every restart of one job
    restart: int = 0  # TORCHELASTIC_RESTART_COUNT: 0 on the first attempt
    _gloo: Any = None  # a gloo group for barriers when the default group also has NCCL

    @classmethod
    def from_env(cls) -> Dist:
        world = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        local = _env_int("LOCAL_RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"environment: RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
        job = os.environ.get("TORCHELASTIC_RUN_ID") or None
        return cls(rank, world, local, job_id=job, restart=_env_int("TORCHELASTIC_RESTART_COUNT", 0))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ lifecycle
    def init(self, device: torch.device) -> None:
        if not self.enabled or self.backend is not None:
            return
        import torch.distributed as dist

        if not dist.is_available():
            raise ConfigError("this PyTorch build has no torch.distributed; run with one process")
        self.backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        # Rank 0 validates and writes artifacts while the others wait in the next collective,
        # so the timeout has to cover a validation pass, not a training step.
        timeout = timedelta(seconds=_env_int("EIR_DIST_TIMEOUT_S", 1800))
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun shares its rendezvous store with the workers and keeps it across restarts
            # (--max-restarts); without a prefix per attempt, a restarted worker can read the
            # previous attempt's addresses and fail to connect. Workers of one attempt share
            # its restart count.
            base = dist.TCPStore(  # type: ignore[attr-defined]  # public in torch.distributed, not re-exported in its stubs
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), self.world_size, False, timeout=timeout
            )
            store = dist.PrefixStore(f"/eir/attempt_{self.restart}", base)  # type: ignore[attr-defined]  # as above
            dist.init_process_group(
                backend=self.backend, store=store, rank=self.rank, world_size=self.world_size, timeout=timeout
            )
        else:
            dist.init_process_group(backend=self.backend, timeout=timeout)
        if device.type == "cuda":
            self._gloo = dist.new_group(backend="gloo", timeout=timeout)
        log.info(
            "distributed: rank %d of %d (local rank %d), backend %s",
            self.rank,
            self.world_size,
            self.local_rank,
            self.backend,
        )

    def close(self, synchronize: bool = True) -> None:
        """Tear the group down. ``synchronize`` (when every rank is alive and on the same path)
        waits for all ranks first, so no rank leaves while a message to it is in flight."""
        if self.backend is None:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            if synchronize:
                self.barrier()
            dist.destroy_process_group()
        self.backend = None

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        # On GPU machines through a gloo group: NCCL's barrier would have to guess each
        # rank's device. (An all-reduce is no barrier: a rank can finish its part and tear
        # down while its last message is still on the way, which aborts the process.)
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self._gloo)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t]

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        if not self.enabled:
            assert data is not None
            return data
        import torch.distributed as dist

        n = torch.tensor([len(data) if self.rank == src and data is not None else 0], dtype=torch.int64)
        dist.broadcast(n, src)
        if self.rank == src:
            assert data is not None
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        else:
            buf = torch.empty(int(n.item()), dtype=torch.uint8)
        if int(n.item()):
            dist.broadcast(buf, src)
        return buf.numpy().tobytes()

    def broadcast_json(self, obj: Any, src: int = 0) -> Any:
        if not self.enabled:
            return obj
        raw = json.dumps(obj).encode() if self.rank == src else None
        return json.loads(self.broadcast_bytes(raw, src))

    def all_gather_json(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        raw = json.dumps(obj).encode()
        n = torch.tensor([len(raw)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        width = max(int(s.item()) for s in sizes)
        mine = torch.zeros(width, dtype=torch.uint8)
        mine[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        bufs = [torch.zeros(width, dtype=torch.uint8) for _ in range(self.world_size)]
        dist.all_gather(bufs, mine)
        return [json.loads(b[: int(s.item())].numpy().tobytes()) for b, s in zip(bufs, sizes, strict=True)]

    # ------------------------------------------------------------------ agreement
    def from_main(self, work: Any) -> Any:
        """Run ``work()`` on rank 0 only and hand its JSON-able result to every rank.

        A user error on rank 0 is re-raised there and becomes :class:`PeerFailed` elsewhere,
        so no rank is left waiting for a message that never comes.
        """
        if not self.enabled:
            return work()
        payload: dict[str, Any] | None = None
        error: EirError | None = None
        if self.is_main:
            try:
                payload = {"ok": work()}
            except EirError as e:
                error = e
                payload = {"error": str(e)}
        got = self.broadcast_json(payload)
        if error is not None:
            raise error
        if "error" in got:
            raise PeerFailed(f"rank 0 stopped with an error: {got['error']}")
        return got["ok"]

    def agree(self, work: Any) -> Any:
        """Run ``work()`` on every rank; if any rank raised a user error, every rank raises."""
        if not self.enabled:
            return work()
        result, error = None, None
        try:
            result = work()
        except EirError as e:
            error = e
        reports = self.all_gather_json(None if error is None else str(error))
        if error is not None:
            raise error
        for r, msg in enumerate(reports):
            if msg is not None:
                raise PeerFailed(f"rank {r} stopped with an error: {msg}")
        return result


# ------------------------------------------------------------------ the trainer's distributed policy
def check_batch_division(batch_size: int, world_size: int) -> None:
    """``batch_size`` is the global batch of one step: it must divide among the processes."""
    if batch_size % world_size:
        lo = batch_size - batch_size % world_size
        fits = " or ".join(str(b) for b in (lo, lo + world_size) if b > 0)
        raise ConfigError(
            f"globals: basic_experiment.batch_size={batch_size} is the global batch of one step and "
            f"must divide evenly among the {world_size} processes; use {fits}, or another --nproc-per-node"
        )


def choose_device(wanted: str, dist: Dist) -> torch.device:
    """The config's device; under torchrun on GPUs, the GPU of this process's LOCAL_RANK."""
    try:
        device = resolve_device(wanted)
    except ValueError as e:
        raise ConfigError(f"globals: accelerator.hardware: {e}") from None
    if dist.enabled and device.type == "cuda":
        if dist.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={dist.local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                "start at most that many processes per node (--nproc-per-node)"
            )
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    return device


def load_run_data(cfg: ExperimentConfig, seed: int, dist: Dist) -> RunData:
    """Rank 0 reads and fits; the other ranks read with rank 0's statistics and encodings,
    then every rank checks that it sees the same samples and split."""
    if not dist.enabled:
        return build_run_data(cfg, seed)
    box: dict[str, RunData] = {}

    def fit_on_main() -> dict[str, object]:
        box["data"] = build_run_data(cfg, seed)
        return box["data"].fitted_state()

    fitted = dist.from_main(fit_on_main)
    data: RunData = dist.agree(lambda: box.get("data") or build_run_data(cfg, seed, fitted))
    prints = dist.all_gather_json(data.fingerprint())

    def check() -> None:
        if prints[dist.rank] != prints[0]:
            raise DataError(
                f"rank {dist.rank} sees different data than rank 0 ({prints[dist.rank]} vs {prints[0]}); "
                "every machine needs the same files at the paths in the configs"
            )

    dist.agree(check)
    return data
