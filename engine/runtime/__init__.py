"""The Ray side of a run: the actor pool, the round pipeline, and the simulation of both.

Owns the actor pool (`ActorPool`: starts the workers and the server through a `Backend`,
evaluates, closes), the round pipeline (`RoundPipeline`: plan, chunk, train, apply, commit, one
round sent ahead), `Simulation` (both, for one experiment), the backends that host the actors
(Ray actors in one placement group, or in-process objects for tests), the client workers that
train chunks of clients, the parameter server, chunking and placement. The actors are thin
shells over plain classes.
"""

from engine.runtime.backends import Backend, LocalBackend, RayBackend
from engine.runtime.pipeline import RoundPipeline, initial_weights, make_scheduler
from engine.runtime.pool import ActorPool, ServerDiedError
from engine.runtime.server import ParameterServer
from engine.runtime.simulation import Simulation
from engine.runtime.workers import ClientWorker

__all__ = [
    "ActorPool",
    "Backend",
    "ClientWorker",
    "LocalBackend",
    "ParameterServer",
    "RayBackend",
    "RoundPipeline",
    "ServerDiedError",
    "Simulation",
    "initial_weights",
    "make_scheduler",
]
