"""Every key a run logs, declared once: what it is, its unit, and whether a private run releases it.

`RunTracker` applies this registry to everything it writes (metrics.jsonl, summary.json, wandb):
a key that is not declared here is an error in any run, and a private run drops the keys that
are statistics of the clients' data. The release audit test (tests/test_release_audit.py) runs
every private configuration on neighbouring data sets and checks that each `PUBLIC` key is
identical on both; `docs/metrics.md` is written from this table
(`python -m engine.app.metric_keys`).

Guarantees:
    A private run's outputs are the noisy model, values computed from it and from public
    information (`PRIVATISED`: covered by the accountant as post-processing), values that do
    not depend on the clients' data at all (`PUBLIC`), and simulator-only diagnostics
    (`SIMULATOR`, namespaced `system/`, `eval/` and `final/`: wall-clock timings, memory, and
    evaluation on held-out clients that never train) that a real deployment would not release.
    Statistics of the training clients' data (`NONPRIVATE`: losses, example counts, failures,
    bytes that depend on rows touched) are dropped. The adjacency is user-level
    replace-with-zero, as in `mechanisms`.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from common.errors import require


class Release(Enum):
    """What a key may reveal, and so whether a private run logs it."""

    PUBLIC = "public"
    """A function of the config and public randomness only: equal on neighbouring data sets."""
    PRIVATISED = "privatised"
    """Computed from the noisy release (post-processing): covered by the accountant."""
    SIMULATOR = "simulator"
    """A simulator-only diagnostic: logged, never released by a real deployment."""
    NONPRIVATE = "non-private only"
    """A statistic of the training clients' data: logged by non-private runs only."""


# The namespaces of simulator-only diagnostics: a dashboard hides them by prefix.
SIMULATOR_PREFIXES = ("system/", "eval/", "final/")
WHEN = ("round", "eval", "summary", "end")
SUMMARIES = ("min", "max", "mean", "last", "none")


@dataclass(frozen=True)
class Metric:
    """One declared key.

    Attributes:
        key: The key, or an `fnmatch` pattern for a family of keys (`train/expert_load/e*`).
        release: What it may reveal.
        unit: Its unit ("" for a pure number).
        when: "round" (every round), "eval" (rounds with an evaluation), "summary"
            (summary.json and the wandb summary), or "end" (images at the end of a run).
        meaning: One line.
        summary: wandb's summary rule for a logged series: min, max, mean, last or none.
    """

    key: str
    release: Release
    unit: str
    when: str
    meaning: str
    summary: str = "last"

    def __post_init__(self) -> None:
        require(self.when in WHEN, "when", f"must be one of {WHEN}, got {self.when!r}")
        require(self.summary in SUMMARIES, "summary", f"must be one of {SUMMARIES}")
        hidden = self.key.startswith(SIMULATOR_PREFIXES)
        require(
            hidden if self.release is Release.SIMULATOR else not (self.released and hidden),
            self.key,
            f"simulator-only keys live under {SIMULATOR_PREFIXES}, released ones elsewhere",
        )

    @property
    def released(self) -> bool:
        """Whether a real deployment would release it (public and privatised keys)."""
        return self.release in (Release.PUBLIC, Release.PRIVATISED)


_P, _V, _S, _N = Release.PUBLIC, Release.PRIVATISED, Release.SIMULATOR, Release.NONPRIVATE
_PRIVACY = "the planned guarantee of the rounds so far, from the policy's declared (k, b)"

METRICS: tuple[Metric, ...] = (
    Metric("round", _P, "", "round", "the round (from 0): the x-axis of every series"),
    # The schedule: public in a private run (clients are timed without their data).
    Metric("participation/available", _P, "clients", "round", "online at the round's start"),
    Metric("participation/selected", _P, "clients", "round", "selected (with over-selection)"),
    Metric("participation/reported", _P, "clients", "round", "reports the server kept"),
    Metric("participation/dropped", _P, "clients", "round", "selected, dropped out mid-round"),
    Metric("participation/stragglers", _P, "clients", "round", "selected, missed the deadline"),
    Metric("participation/late", _P, "clients", "round", "on time after the cohort was full"),
    Metric("participation/attempts", _P, "", "round", "attempts the round took (1: no retry)"),
    Metric("participation/clients_aggregated", _P, "clients", "round", "updates in the sum"),
    Metric("participation/histogram", _P, "image", "end", "participations per client"),
    Metric(
        "participation/availability_over_time",
        _P,
        "image",
        "end",
        "available and reporting clients against simulated time",
    ),
    # The release and what is computed from it.
    Metric("privacy/clip_norm", _V, "L2", "round", "the round's clip norm (adaptive: noisy)"),
    Metric("privacy/next_clip_norm", _V, "L2", "round", "the next round's clip norm"),
    Metric(
        "privacy/unclipped_fraction",
        _V,
        "",
        "round",
        "adaptive clipping: the noisy share of updates within the clip norm",
    ),
    Metric("privacy/epsilon", _P, "", "eval", f"epsilon(delta), {_PRIVACY}", "max"),
    Metric("privacy/rho", _P, "", "eval", f"zCDP rho, {_PRIVACY}", "max"),
    Metric("privacy/epsilon_rdp", _P, "", "eval", "privacy/epsilon by the RDP accountant", "max"),
    Metric("privacy/epsilon_pld", _P, "", "eval", "privacy/epsilon by the PLD accountant", "max"),
    Metric("privacy/delta", _P, "", "eval", "the delta of every reported epsilon"),
    Metric("privacy/ddp_bits", _P, "bits", "round", "distributed DP: log2 of the SecAgg group"),
    Metric("privacy/ddp_scale", _P, "", "round", "distributed DP: the encoder's scale s"),
    Metric(
        "privacy/ddp_local_noise",
        _P,
        "",
        "round",
        "distributed DP: a client's noise share (DDGauss sigma, Skellam variance), integers",
    ),
    Metric(
        "system/ddp_wrapped_coordinates",
        _S,
        "",
        "round",
        "distributed DP: coordinates of the unreduced sum outside [-m/2, m/2) (never released)",
    ),
    Metric(
        "system/ddp_rounding_retries",
        _S,
        "",
        "round",
        "distributed DP: conditional-rounding retries of the round's clients (their data)",
    ),
    Metric(
        "privacy/noise_multiplier",
        _P,
        "",
        "summary",
        "the mechanism's noise multiplier (solved when the config said auto; 0: no noise)",
    ),
    Metric(
        "privacy/epsilon_observed",
        _P,
        "",
        "eval",
        "epsilon under the (k, b) observed in the ledger: holds only for this realised schedule",
        "max",
    ),
    # The empirical audit: post-processing of the released iterates with public canaries.
    Metric("audit/num_canaries", _P, "clients", "eval", "canary clients inserted"),
    Metric(
        "audit/epsilon_estimate*",
        _V,
        "",
        "eval",
        "one-run epsilon estimate from canary cosines (Andrew et al. 2024), _low/_high its "
        "bootstrap interval; _all_iterates: from the largest cosine with any round's change",
    ),
    Metric("audit/observed_*", _V, "", "eval", "fitted mean/std of the canaries' cosines"),
    Metric("audit/null_*", _V, "", "eval", "fitted mean/std of the null directions' cosines"),
    Metric("audit/cosines", _V, "image", "end", "canary against null cosines, with fits"),
    Metric("audit/exposure/r*", _V, "bits", "summary", "Secret Sharer exposure, r repetitions"),
    Metric("audit/exposure_max", _P, "bits", "summary", "log2 of the candidates: top exposure"),
    # Statistics of the clients' data: non-private runs only.
    Metric("train/loss", _N, "nats", "round", "clients' mean local training loss", "min"),
    Metric("train/rows_touched", _N, "rows", "round", "sparse: distinct rows in the sum"),
    Metric("train/expert_load/e*", _N, "tokens", "round", "MoE: tokens routed to expert i"),
    Metric("train/router_entropy", _N, "nats", "round", "MoE: clients' mean router entropy"),
    Metric("system/cohort_examples", _N, "examples", "round", "examples of the cohort"),
    Metric("system/failed_clients", _N, "clients", "round", "clients whose training kept failing"),
    Metric(
        "system/nonfinite_updates",
        _N,
        "clients",
        "round",
        "non-finite updates: dropped without clipping, summed as zeros with it",
    ),
    Metric("system/upload_bytes", _N, "bytes", "round", "what the clients uploaded"),
    Metric("system/transport_bytes", _N, "bytes", "round", "what the workers sent the server"),
    # Simulator-only diagnostics.
    Metric("system/sim_time_h", _S, "h", "round", "simulated time at the round's start"),
    Metric("system/sim_round_s", _S, "s", "round", "simulated length of the counted attempt"),
    Metric("system/server_s", _S, "s", "round", "the server's reduce, release and step", "mean"),
    Metric("system/train_s", _S, "s", "round", "the slowest worker's training", "mean"),
    Metric("system/round_s", _S, "s", "round", "wall time of the round", "mean"),
    Metric("system/overhead_s", _S, "s", "round", "round_s - train_s - server_s", "mean"),
    Metric("system/client_updates_per_s", _S, "1/s", "round", "reports per wall second", "mean"),
    Metric("eval/accuracy", _S, "", "eval", "top-1 accuracy on the held-out clients", "max"),
    Metric("eval/loss", _S, "nats", "eval", "mean cross-entropy on the held-out clients", "min"),
    Metric("eval/perplexity", _S, "", "eval", "exp(eval/loss)", "min"),
    Metric("eval/majority_class_rate", _S, "", "eval", "the held-out clients' commonest label"),
    # The summary.
    Metric("rounds_completed", _P, "rounds", "summary", "rounds the run applied"),
    Metric("config_sha256", _P, "", "summary", "hash of the settings that decide the results"),
    Metric("model_sha256", _V, "", "summary", "hash of the final (noisy) weights"),
    Metric("model/num_params", _P, "", "summary", "the model's parameters"),
    Metric("population/num_clients", _P, "clients", "summary", "the population N"),
    Metric("population/registry_bytes", _P, "bytes", "summary", "the driver's per-client columns"),
    Metric(
        "participation/bound_max_participations",
        _P,
        "",
        "summary",
        "the policy's declared k (null: none)",
    ),
    Metric("participation/bound_min_separation", _P, "rounds", "summary", "declared b"),
    Metric("participation/bound_holds", _P, "", "summary", "the ledger satisfies (k, b)"),
    Metric(
        "participation/observed_max_participations",
        _P,
        "",
        "summary",
        "the most participations of one client",
    ),
    Metric(
        "participation/observed_min_separation",
        _P,
        "rounds",
        "summary",
        "the smallest gap between two participations of one client (null: nobody twice)",
    ),
    Metric("participation/clients_seen", _P, "clients", "summary", "clients that took part"),
    Metric(
        "participation/mean_participations",
        _P,
        "",
        "summary",
        "the mean participations of the clients seen",
    ),
    Metric("final/eval_accuracy", _S, "", "summary", "eval/accuracy after the last round"),
    Metric("final/eval_loss", _S, "nats", "summary", "eval/loss after the last round"),
    Metric("final/eval_perplexity", _S, "", "summary", "eval/perplexity after the last round"),
    Metric("final/majority_class_rate", _S, "", "summary", "eval/majority_class_rate, last"),
    Metric("system/total_s", _S, "s", "summary", "wall time of the run"),
    Metric("system/cold_start_s", _S, "s", "summary", "wall time before the first round"),
    Metric("system/driver_peak_rss_mib", _S, "MiB", "summary", "the driver's peak memory"),
)


class UndeclaredMetricError(KeyError):
    """A run logged a key that `METRICS` does not declare."""


def declared(key: str) -> Metric:
    """The declaration of `key` (exact keys first, then patterns).

    Raises:
        UndeclaredMetricError: If no entry declares it.
    """
    for metric in METRICS:
        if metric.key == key:
            return metric
    for metric in METRICS:
        if fnmatch.fnmatchcase(key, metric.key):
            return metric
    raise UndeclaredMetricError(f"{key!r} is not declared in engine/app/metric_keys.py")


def releasable(values: Mapping[str, Any], private: bool) -> dict[str, Any]:
    """`values` without the keys a private run must not log (all of them when not private).

    Raises:
        UndeclaredMetricError: If a key is not declared, private run or not.
    """
    keep = {}
    for key, value in values.items():
        if declared(key).release is not Release.NONPRIVATE or not private:
            keep[key] = value
    return keep


def reference() -> str:
    """The metrics reference (docs/metrics.md) as Markdown, from `METRICS`."""
    lines = [
        "# Metrics reference",
        "",
        "Written by `python -m engine.app.metric_keys` from `engine/app/metric_keys.py`; a test "
        "keeps",
        "them equal. `release`: `public` keys are equal on neighbouring data sets; `privatised`",
        "ones are computed from the noisy release (covered by the accountant); `simulator`",
        f"keys ({', '.join(f'`{p}`' for p in SIMULATOR_PREFIXES)}) are diagnostics a real",
        "deployment would not release; `non-private only` keys are statistics of the clients'",
        "data that private runs drop (some live under `system/`). A real deployment releases",
        "the `public` and `privatised` keys, which never live under those prefixes.",
        "`when`: every round, rounds with an evaluation, the summary, or the run's end",
        "(images). `wandb summary`: the rule of the key's wandb summary.",
        "",
        "| key | release | unit | when | wandb summary | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in METRICS:
        rule = m.summary if m.when in ("round", "eval") else ""
        lines.append(
            f"| `{m.key}` | {m.release.value} | {m.unit} | {m.when} | {rule} | {m.meaning} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
