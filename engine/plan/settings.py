"""Run-level settings that are not pluggable components: evaluation, cluster, tracking, ..."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import require

TRACKING_MODES = ("disabled", "offline", "online")
MAX_CHUNK = 10_000
TARGET_CHUNKS = 16
# The `Cluster` settings that change only how fast a run goes, never its results (a resumed
# run may change them); the others are part of what defines a run.
CLUSTER_SPEED_ONLY = ("num_workers", "num_cpus", "address")


@dataclass(frozen=True)
class Evaluation:
    """Evaluation on held-out clients.

    Attributes:
        every: Evaluate after every `every` rounds (and always after the last); 0 = last only.
        num_clients: Held-out clients evaluated, the same ones each time.
    """

    every: int = 10
    num_clients: int = 500

    def __post_init__(self) -> None:
        require(self.every >= 0, "every", f"must be >= 0, got {self.every}")
        require(self.num_clients >= 1, "num_clients", f"must be >= 1, got {self.num_clients}")

    def due(self, round_idx: int, rounds: int) -> bool:
        """Whether to evaluate after round `round_idx` (from 0) of `rounds`."""
        last = round_idx == rounds - 1
        return last or (self.every > 0 and (round_idx + 1) % self.every == 0)


@dataclass(frozen=True)
class Cluster:
    """Where and how wide the simulation runs.

    The settings split into those that change only speed, `CLUSTER_SPEED_ONLY` (`num_workers`,
    `num_cpus`, `address`: on one node, results are bit for bit the same whatever they are),
    and those that can change results, which a resumed run must keep: `chunk_size` and
    `reduce_per_node` decide the order of float sums, and `gpus_per_worker` and `server_gpu`
    whether they are rounded as a GPU rounds them. (Across several nodes with `reduce_per_node`
    null, where partials are summed per node first, the placement of the workers can move
    results by float rounding.)

    Attributes:
        num_workers: Client-worker actors; None means one per CPU of the Ray cluster.
        chunk_size: Clients per chunk, the unit of work and of summation. None picks
            ceil(cohort / 16), at most 10,000. It never depends on `num_workers`, which is what
            makes results bit-identical across worker counts.
        address: Ray cluster to join ("auto" or host:port); None starts a local Ray instance.
            With an address, the job's actors spread over the cluster's nodes.
        num_cpus: CPUs of the local Ray instance; None means all.
        gpus_per_worker: GPU fraction of each client worker (0.25: four workers per GPU);
            ignored (with a note) when the Ray cluster has no GPU.
        server_gpu: Put the parameter server on a GPU.
        reduce_per_node: Sum partials on each node before the server; None: only when the
            workers span several nodes (on one node the server reduces chunk by chunk, which
            keeps runs bit-identical across worker counts).
    """

    num_workers: int | None = None
    chunk_size: int | None = None
    address: str | None = None
    num_cpus: int | None = None
    gpus_per_worker: float = 0.0
    server_gpu: bool = False
    reduce_per_node: bool | None = None

    def __post_init__(self) -> None:
        for key in ("num_workers", "chunk_size", "num_cpus"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, f"must be >= 1 or null, got {value}")
        gpus = self.gpus_per_worker
        require(
            gpus >= 0 and (gpus <= 1 or gpus == int(gpus)),
            "gpus_per_worker",
            f"must be a fraction in [0, 1] or a whole number, got {gpus}",
        )

    def chunk_size_for(self, cohort_size: int) -> int:
        """Clients per chunk for a cohort of `cohort_size`."""
        if self.chunk_size is not None:
            return self.chunk_size
        return max(1, min(MAX_CHUNK, -(-cohort_size // TARGET_CHUNKS)))


@dataclass(frozen=True)
class Privacy:
    """The privacy target of a run.

    Attributes:
        target_epsilon: A run whose planned epsilon exceeds it refuses to start; None: no target.
        delta: The delta of every reported epsilon.
    """

    target_epsilon: float | None = None
    delta: float = 1e-10

    def __post_init__(self) -> None:
        eps = self.target_epsilon
        require(eps is None or eps > 0, "target_epsilon", f"must be > 0 or null, got {eps}")
        require(0 < self.delta < 1, "delta", f"must be in (0, 1), got {self.delta}")


@dataclass(frozen=True)
class Tracking:
    """Where metrics go.

    Attributes:
        mode: wandb mode: "disabled", "offline" (sync later with `wandb sync`) or "online".
        project: wandb project.
        group: wandb group; None uses the experiment name.
        progress: Show a progress bar on stderr.
        participation_log: Keep the ledger's append-only (round, client_id) log as
            participation.parquet in the output directory.
    """

    mode: str = "offline"
    project: str = "fedray"
    group: str | None = None
    progress: bool = True
    participation_log: bool = False

    def __post_init__(self) -> None:
        require(self.mode in TRACKING_MODES, "mode", f"must be one of {TRACKING_MODES}")


@dataclass(frozen=True)
class Checkpointing:
    """When the run's state is saved (see `engine.app.checkpoint`).

    Attributes:
        every: Save after every `every` rounds (and after the last); 0 never saves.
    """

    every: int = 50

    def __post_init__(self) -> None:
        require(self.every >= 0, "every", f"must be >= 0, got {self.every}")

    def due(self, round_idx: int, rounds: int) -> bool:
        """Whether to save after round `round_idx` (from 0) of `rounds`."""
        last = round_idx == rounds - 1
        return self.every > 0 and (last or (round_idx + 1) % self.every == 0)
