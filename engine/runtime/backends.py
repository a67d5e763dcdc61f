"""Where a job's actors live: Ray actors (the default), or plain objects in this process.

`ActorPool` talks to its workers and server only through handles (`h.method.remote(...)`,
`.options(num_returns=2)`) and awaits results with `Backend.get`. `RayBackend` makes those
handles Ray actors in one placement group. `LocalBackend` makes them objects in the driver's
process, called at once; every argument and result is copied through pickle, as Ray's object
store would, so the two give the same results on one node (for tests, debugging and tiny
studies: no fault tolerance, one worker).
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import torch
from ray.util.placement_group import PlacementGroup, remove_placement_group

from engine.plan import Experiment
from engine.runtime.placement import Resources, bundle_nodes, node_reducers
from engine.runtime.server import ParameterServer
from engine.runtime.workers import ClientWorker

_INLINE_BYTES = 1 << 20


def server_args(experiment: Experiment, initial: np.ndarray) -> tuple[Any, ...]:
    """The `ParameterServer` constructor arguments of `experiment`."""
    exp = experiment
    return (
        initial,
        exp.strategy,
        exp.mechanism,
        exp.aggregation,
        exp.clipping,
        exp.participation.cohort_size,
        None,  # the device: the GPU Ray gave the actor, else the CPU
        exp.canaries,
    )


def worker_args(experiment: Experiment, population: Any) -> tuple[Any, ...]:
    """The `ClientWorker` constructor arguments of `experiment` (its population as given)."""
    exp = experiment
    return (
        population,
        exp.model_factory,
        exp.training,
        exp.aggregation,
        exp.seed,
        exp.faults,
        exp.canaries,
    )


@dataclass
class Actors:
    """A started job's handles.

    Attributes:
        workers: The client workers' handles, in worker order.
        server: The parameter server's handle.
        nodes: Each worker's node id.
        reducers: Per-node reducers' handles by node id (empty: the server reduces alone).
    """

    workers: list[Any]
    server: Any
    nodes: list[str]
    reducers: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """Extension point: starts a job's actors, awaits their results, and ends them."""

    @abstractmethod
    def start(self, experiment: Experiment, initial: np.ndarray) -> Actors:
        """Starts the workers and the server of `experiment`, the server at `initial`."""

    @abstractmethod
    def get(self, refs: Any) -> Any:
        """The value of a result reference, or a list of them."""

    @abstractmethod
    def close(self) -> None:
        """Ends the started actors for good (idempotent)."""


class RayBackend(Backend):
    """Ray actors in one placement group: workers restart and retry, the server does not.

    Ray must be initialised before `start`.
    """

    def __init__(self) -> None:
        self._group: PlacementGroup | None = None
        self._actors: Actors | None = None
        self._population: Any = None

    def start(self, experiment: Experiment, initial: np.ndarray) -> Actors:
        """Reserves the job's resources, then starts its actors inside the reservation."""
        exp = experiment
        resources = Resources.of(exp.cluster)
        self._group = group = resources.reserve(exp.cluster.address is not None)
        worker_actor: Any = ray.remote(max_restarts=-1, max_task_retries=-1)(ClientWorker)
        self._population = _shared(exp.population)  # held: restarted workers need it
        workers = [
            worker_actor.options(**resources.worker_options(group, index)).remote(
                *worker_args(exp, self._population)
            )
            for index in range(resources.num_workers)
        ]
        server_actor: Any = ray.remote(ParameterServer)
        server = server_actor.options(**resources.server_options(group)).remote(
            *server_args(exp, initial)
        )
        nodes = bundle_nodes(group)[: resources.num_workers]
        self._actors = Actors(workers, server, nodes)
        per_node = exp.cluster.reduce_per_node
        if per_node or (per_node is None and len(set(nodes)) > 1):
            self._actors.reducers = node_reducers(nodes, exp.aggregation, len(initial))
        return self._actors

    def get(self, refs: Any) -> Any:
        """`ray.get`."""
        return ray.get(refs)

    def close(self) -> None:
        """Kills the actors (a worker would otherwise restart) and frees the reservation."""
        if self._actors is not None:
            actors = self._actors
            for actor in [*actors.workers, *actors.reducers.values(), actors.server]:
                ray.kill(actor, no_restart=True)
            self._actors = None
        if self._group is not None:
            remove_placement_group(self._group)
            self._group = None


def _shared(value: Any) -> Any:
    """`value` itself when small; else one object-store copy that every actor then shares.

    Real-data populations hold their whole dataset: passed by value, Ray would store one copy
    per actor. Small values stay inline (Ray then logs nothing about restartable actors whose
    constructor arguments live in the object store).
    """
    return ray.put(value) if len(pickle.dumps(value)) > _INLINE_BYTES else value


class LocalBackend(Backend):
    """One worker and the server as objects in this process; calls run when made.

    Arguments and results are copied through pickle, as through Ray's object store, so no
    caller shares state with an actor, and a call's error is raised where its result is read.
    The results are those of Ray on one node (one worker, no per-node reduction; chunk sums
    are worker-count independent). A crash is not survived: injected worker crashes are
    refused.
    """

    def __init__(self) -> None:
        self._threads: int | None = None

    def start(self, experiment: Experiment, initial: np.ndarray) -> Actors:
        """A `ClientWorker` and a `ParameterServer`, each built from copies of its arguments.

        Both use one torch thread, as Ray actors do; `close` gives this process its threads
        back.

        Raises:
            ValueError: If `faults.worker_crash_prob` is set (it would end this process).
        """
        if experiment.faults.worker_crash_prob > 0:
            raise ValueError("the local backend cannot survive worker crashes")
        self._threads = torch.get_num_threads()
        worker = _LocalActor(ClientWorker, worker_args(experiment, experiment.population))
        server = _LocalActor(ParameterServer, server_args(experiment, initial))
        return Actors([worker], server, ["local"])

    def get(self, refs: Any) -> Any:
        """The values of `_LocalRef`s (a list, or one)."""
        if isinstance(refs, list):
            return [ref.value() for ref in refs]
        return refs.value()

    def close(self) -> None:
        """Gives this process back the torch threads it had before `start`."""
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None


class _LocalRef:
    """A result, pickled when made and unpickled afresh on each read (an object-store copy).

    A call that raised holds its error instead, raised where the result is read (as Ray does).
    """

    def __init__(self, value: Any = None, error: Exception | None = None) -> None:
        self._blob = pickle.dumps(value, protocol=5)
        self._error = error

    def value(self) -> Any:
        if self._error is not None:
            raise self._error
        return pickle.loads(self._blob)


class _LocalMethod:
    """`handle.method`, with Ray's `.options(num_returns=...)` and `.remote(...)`."""

    def __init__(self, function: Callable[..., Any], num_returns: int = 1) -> None:
        self._function = function
        self._num_returns = num_returns

    def options(self, num_returns: int = 1, **_: Any) -> _LocalMethod:
        return _LocalMethod(self._function, num_returns)

    def remote(self, *args: Any) -> Any:
        try:
            values = [arg.value() if isinstance(arg, _LocalRef) else _copy(arg) for arg in args]
            result = self._function(*values)
        except Exception as error:
            failed = _LocalRef(error=error)
            return failed if self._num_returns == 1 else (failed,) * self._num_returns
        if self._num_returns == 1:
            return _LocalRef(result)
        return tuple(_LocalRef(part) for part in result)


class _LocalActor:
    """An actor handle over an object built in this process from copies of its arguments."""

    def __init__(self, cls: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._instance = cls(*_copy(args))

    def __getattr__(self, name: str) -> _LocalMethod:
        if name == "__ray_ready__":
            return _LocalMethod(lambda: True)
        return _LocalMethod(getattr(self._instance, name))


def _copy(value: Any) -> Any:
    """A copy of `value` through pickle, as Ray would ship it."""
    return pickle.loads(pickle.dumps(value, protocol=5))
