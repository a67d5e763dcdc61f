"""Where metrics go: metrics.jsonl, a wandb run (driver only), and a progress bar.

Keys are namespaced train/ eval/ privacy/ participation/ system/, and `round` is the x-axis.
Everything written goes through `engine.app.metric_keys`: an undeclared key is an error, and a
private run drops the clients' statistics.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from tqdm import tqdm

from engine.app.metric_keys import METRICS, releasable
from engine.plan import Tracking

_BAR_KEYS = {"train/loss": "loss", "eval/accuracy": "acc", "system/client_updates_per_s": "cl/s"}


class RunTracker:
    """Records one run. Use as a context manager; `finish` writes the summary.

    Args:
        output_dir: The run's output directory (Hydra's runtime.output_dir).
        tracking: wandb mode, project and group, and whether to show progress.
        name: Experiment name, the wandb group unless `tracking.group` is set.
        config: The resolved config, stored with the wandb run.
        rounds: Rounds planned, for the progress bar.
        first_round: The first round this process runs (> 0 when resuming): metrics.jsonl keeps
            the earlier rounds' lines and drops later ones (a killed run's, past its checkpoint).
        state: `state_dict()` of the tracker that logged the earlier rounds: its wandb run is
            resumed.
        tags: wandb tags (a sweep's job: its overrides).
        private: The run adds noise: keys that are statistics of the clients' data are dropped.
        pinned: Fields shown in the progress line throughout (e.g. the noise multiplier).
    """

    def __init__(
        self,
        output_dir: Path,
        tracking: Tracking,
        name: str,
        config: dict[str, Any],
        rounds: int,
        first_round: int = 0,
        state: dict[str, Any] | None = None,
        tags: Sequence[str] = (),
        private: bool = False,
        pinned: dict[str, str] | None = None,
    ) -> None:
        self.output_dir = output_dir
        self._private = private
        output_dir.mkdir(parents=True, exist_ok=True)
        kept = _rounds_before(output_dir / "metrics.jsonl", first_round)
        self._metrics = (output_dir / "metrics.jsonl").open("w", encoding="utf-8")
        self._metrics.writelines(kept)
        self._bar = tqdm(
            total=rounds,
            initial=first_round,
            unit="round",
            disable=not tracking.progress,
            file=sys.stderr,
        )
        self._shown: dict[str, str] = dict(pinned or {})
        self._wandb = None
        if tracking.mode != "disabled":
            import wandb  # Imported here: a disabled run never pays for it.

            run_id = (state or {}).get("wandb_id")
            self._wandb = wandb.init(
                project=tracking.project,
                group=tracking.group or name,
                name=f"{name}-{output_dir.name}",
                mode=cast(Any, tracking.mode),
                dir=str(output_dir),
                config=config,
                tags=list(tags),
                id=run_id,
                resume="allow" if run_id else None,
            )
            self._wandb.define_metric("round")
            self._wandb.define_metric("*", step_metric="round")
            for metric in METRICS:
                if metric.when in ("round", "eval") and metric.summary != "last":
                    self._wandb.define_metric(
                        metric.key, step_metric="round", summary=metric.summary
                    )

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this one's wandb run."""
        return {"wandb_id": self._wandb.id if self._wandb is not None else None}

    def log(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Records one round's metrics (`metrics["round"]` must increase); returns what it wrote.

        Raises:
            UndeclaredMetricError: If a key is not declared in `engine.app.metric_keys`.
        """
        metrics = releasable(metrics, self._private)
        self._metrics.write(json.dumps(metrics, sort_keys=True) + "\n")
        self._metrics.flush()
        if self._wandb is not None:
            self._wandb.log(metrics)
        self._shown.update(
            {short: f"{metrics[k]:.3g}" for k, short in _BAR_KEYS.items() if k in metrics}
        )
        self._bar.set_postfix(self._shown, refresh=False)
        self._bar.update(1)
        return metrics

    def log_images(self, round_idx: int, images: dict[str, Path]) -> None:
        """Logs PNG files (already saved in the output directory) to wandb at `round_idx`."""
        images = releasable(images, self._private)
        if self._wandb is not None:
            import wandb

            self._wandb.log(
                {"round": round_idx, **{k: wandb.Image(str(p)) for k, p in images.items()}}
            )

    def finish(self, summary: dict[str, Any]) -> Path:
        """Writes summary.json, closes the wandb run; returns the summary's path."""
        summary = releasable(summary, self._private)
        path = self.output_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if self._wandb is not None:
            self._wandb.summary.update(summary)
        self.close()
        return path

    def close(self) -> None:
        """Closes the file, the bar and the wandb run (idempotent)."""
        if not self._metrics.closed:
            self._metrics.close()
        self._bar.close()
        if self._wandb is not None:
            run_dir = Path(self._wandb.dir).parent
            offline = self._wandb.settings.mode == "offline"
            self._wandb.finish()
            self._wandb = None
            if offline:
                print(
                    f"fedray: offline wandb run; upload with: wandb sync {run_dir}", file=sys.stderr
                )

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _rounds_before(path: Path, first_round: int) -> list[str]:
    """The lines of an existing metrics.jsonl for rounds < `first_round` (none if fresh)."""
    if first_round == 0 or not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["round"] < first_round:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the half-written last line of a killed run
    return kept
