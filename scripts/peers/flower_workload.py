"""One benchmark case in Flower's simulation engine (run with the Flower venv's python).

FedAvg of the Message API (`flwr.serverapp.strategy.FedAvg`) over `num_supernodes` = population
size virtual clients on the Ray backend; exactly `cohort` of them train per round
(`min_train_nodes` = cohort, `fraction_train` = cohort / N) and the server averages their models
weighted by example counts. Each train message names the fedray client its node trains
(`client-id` in its config): with the spec's cohorts (fedray's), round r (Flower's server round
r + 1) trains exactly cohort r, whichever nodes Flower sampled; without them, a node trains its
own partition. Shuffling follows fedray's stream of the client and round
(`peer_common.client_rng`). No federated evaluation; the final model is evaluated centrally on
fedray's held-out clients.

Usage:
    .bench/venv-flower/bin/python scripts/peers/flower_workload.py --spec case.json
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import peer_common as pc
import torch

SPEC = pc.parse_spec()
TIMER = pc.RoundTimer()
FINAL: dict[str, Any] = {}


def _population() -> Any:
    """The population, built once per process (client actors included)."""
    if "population" not in FINAL:
        FINAL["population"] = pc.build_population(SPEC)
    return FINAL["population"]


def _client_app() -> Any:
    """A ClientApp whose `train` runs `peer_common.train_local` on the message's client.

    The client is the message config's `client-id`, or the node's partition without one.
    """
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        population = _population()
        config = msg.content["config"]
        client_id = int(config.get("client-id", context.node_config["partition-id"]))
        model = pc.build_model(SPEC, population)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        data = population.client_data(client_id)
        round_idx = int(config["server-round"]) - 1
        pc.train_local(model, data, SPEC, pc.client_rng(SPEC.seed, round_idx, client_id))
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(data)}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def _strategy() -> Any:
    """FedAvg with exactly `cohort` trainers per round, timing each round.

    With the spec's cohorts, each train message names the client its node trains.
    """
    from flwr.serverapp.strategy import FedAvg

    class TimedFedAvg(FedAvg):
        def configure_train(
            self, server_round: int, arrays: Any, config: Any, grid: Any
        ) -> Iterable[Any]:
            TIMER.begin()
            sampled = super().configure_train(server_round, arrays, config, grid)
            if SPEC.cohorts is None:
                return sampled
            return _name_clients(sampled, SPEC.cohorts[server_round - 1], self)

        def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> Any:
            result = super().aggregate_train(server_round, replies)
            TIMER.end()
            return result

    return TimedFedAvg(
        fraction_train=SPEC.cohort / SPEC.num_clients,
        fraction_evaluate=0.0,
        min_train_nodes=SPEC.cohort,
        min_evaluate_nodes=0,
        min_available_nodes=SPEC.num_clients,
    )


def _name_clients(sampled: Iterable[Any], clients: list[int], strategy: Any) -> list[Any]:
    """Flower's train messages again, the i-th one's config naming `clients[i]` (`client-id`).

    Flower's messages share one RecordDict; each gets its own here (the arrays are shared).
    """
    from flwr.app import ConfigRecord, Message, RecordDict

    renamed = []
    for msg, client in zip(sampled, clients, strict=True):
        arrays = msg.content[strategy.arrayrecord_key]
        config = ConfigRecord({**msg.content[strategy.configrecord_key], "client-id": client})
        content = RecordDict({strategy.arrayrecord_key: arrays, strategy.configrecord_key: config})
        renamed.append(Message(content, msg.metadata.dst_node_id, msg.metadata.message_type))
    return renamed


def _server_app() -> Any:
    """A ServerApp that runs the strategy from fedray's initial weights and evaluates the end."""
    from flwr.app import ArrayRecord, Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        model = pc.build_model(SPEC, _population())
        result = _strategy().start(
            grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=SPEC.rounds
        )
        model.load_state_dict(result.arrays.to_torch_state_dict())
        FINAL["accuracy"] = pc.evaluate(model, _population(), SPEC.eval_clients)

    return app


def main() -> None:
    """Runs the case and prints its result line."""
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    run_simulation(
        server_app=_server_app(),
        client_app=_client_app(),
        num_supernodes=SPEC.num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if "accuracy" not in FINAL:
        raise SystemExit("flower: the ServerApp did not finish (see its log above)")
    pc.emit("flower", SPEC, TIMER, FINAL["accuracy"], pc.versions("flwr", "ray"))


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
