"""The `fedray` command (also `python -m engine.app.run`): a Hydra app that runs one simulation.

Before Hydra and Ray start, the command line is composed and validated once, so that a misspelt
key, a wrong type or an invalid value fails in one line naming the key.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from common.errors import ConfigError
from engine.app.build import as_dict, build_experiment
from engine.app.checkpoint import FILE_NAME, Checkpoint, differences, load, run_defining
from engine.app.config import register_configs
from engine.app.runner import RunStoppedError, run_experiment, sha256_of
from engine.plan import CLUSTER_SPEED_ONLY, Tracking

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"
_MULTIRUN_FLAGS = ("-m", "--multirun")


def _composition_error(err: Exception) -> ConfigError:
    """The one-line `ConfigError` for a failure to compose, naming the key or group."""
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        choices = ", ".join(err.options)
        return ConfigError(group or "config", f"no option '{option}' (choose from {choices})")
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    lines = [line.strip() for line in (getattr(cause, "msg", None) or str(cause)).splitlines()]
    lines = [line for line in lines if line]
    key = getattr(cause, "full_key", None) or next(
        (line.partition(":")[2].strip() for line in lines if line.startswith("full_key:")), None
    )
    # Hydra wraps errors raised inside a config file as "In 'group/option': ... config:\n<why>".
    if len(lines) > 1 and lines[0].startswith("In '") and lines[0].endswith(":"):
        where = lines[0].split("'")[1]
        return ConfigError(key or "command line", f"{lines[1]} (in {where})")
    return ConfigError(key or "command line", lines[0] if lines else type(cause).__name__)


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """Each override, with sweeps (a,b / range(...)) replaced by their first value."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    first = []
    for override in parsed:
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            first.append(f"{override.get_key_element()}={value}")
        elif not override.get_key_element().startswith("hydra"):
            first.append(override.input_line or "")
    return first


def check_command_line(args: list[str]) -> None:
    """Composes and validates the config the command line asks for, then forgets it.

    Raises:
        ConfigError: naming the first invalid key.
    """
    overrides = [a for a in args if a not in _MULTIRUN_FLAGS]
    try:
        cfg = _composed(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise _composition_error(err) from None
    build_experiment(cfg)


def _composed(overrides: list[str]) -> DictConfig:
    """The config of a command line's overrides (a sweep's first job)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=_first_of_sweeps(overrides))


def with_resume(args: list[str]) -> list[str]:
    """The command line of `fedray resume=DIR ...`: DIR's own overrides, then these, into DIR.

    A resumed run keeps what decides its results. An override of `tracking` or of a cluster
    setting that changes only speed (`CLUSTER_SPEED_ONLY`) replaces DIR's; any other that
    contradicts one DIR was run with is an error. New ones are kept, and the config they make is
    compared with DIR's checkpoint here, before Hydra writes the new overrides into DIR: a
    change of results (`cluster.chunk_size`, say) is refused and leaves DIR as it was.

    Raises:
        ConfigError: Under `resume`, if DIR is not a fedray output directory, an override
            contradicts DIR's, or the config is not the checkpoint's (naming the keys).
    """
    given = [arg for arg in args if arg.startswith("resume=")]
    if not given:
        return args
    directory = Path(given[-1].partition("=")[2])
    saved_path = directory / ".hydra" / "overrides.yaml"
    if not saved_path.is_file():
        raise ConfigError("resume", f"{directory}: not a fedray output directory (no {saved_path})")
    saved = [str(o) for o in OmegaConf.load(saved_path) if not str(o).startswith("resume=")]
    saved_by_key = {override.partition("=")[0]: override for override in saved}
    speed_only = {f"cluster.{key}" for key in CLUSTER_SPEED_ONLY}
    extra = []
    for arg in args:
        key = arg.partition("=")[0]
        if arg in _MULTIRUN_FLAGS or key == "resume" or saved_by_key.get(key) == arg:
            continue
        if key in saved_by_key:
            if key != "tracking" and not key.startswith("tracking.") and key not in speed_only:
                raise ConfigError(
                    "resume",
                    f"{directory} was run with {saved_by_key[key]}; it cannot resume as {arg}",
                )
            saved.remove(saved_by_key.pop(key))
        extra.append(arg)
    resumed = [*saved, *extra, f"resume={directory}", f"hydra.run.dir={directory}"]
    if (directory / FILE_NAME).is_file():
        try:
            config = as_dict(_composed(resumed))
        except (HydraException, OmegaConfBaseException):
            return resumed  # `check_command_line` names the error
        checkpoint_to_resume(str(directory), config)
    return resumed


def main() -> None:
    """Entry point of the `fedray` console script."""
    # conf/hydra/launcher/ray.yaml sets defaults of hydra-ray-launcher's schema of that name.
    warnings.filterwarnings("ignore", message=r"(?s).*validated against ConfigStore schema")
    register_configs()
    args = sys.argv[1:]
    if all(a in _MULTIRUN_FLAGS or not a.startswith("-") for a in args):
        try:
            args = with_resume(args)
            check_command_line(args)
        except ConfigError as err:
            raise SystemExit(f"fedray: error: {err}") from None
        sys.argv[1:] = args
    _app()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        experiment, tracking = build_experiment(cfg)
        config = as_dict(cfg)
        checkpoint = checkpoint_to_resume(cfg.resume, config)
    except ConfigError as err:
        raise SystemExit(f"fedray: error: {err}") from None
    if cfg.mechanism.get("noise_multiplier") == "auto":
        print(
            f"fedray: mechanism.noise_multiplier=auto solved to "
            f"{experiment.mechanism.noise_multiplier:.6g} for privacy.target_epsilon="
            f"{experiment.privacy.target_epsilon:g} (delta {experiment.privacy.delta:g})",
            file=sys.stderr,
            flush=True,
        )
    tracking, tags = sweep_tracking(tracking, experiment.name, hydra_cfg)
    defining = OmegaConf.to_yaml(OmegaConf.create(run_defining(config)), sort_keys=True)
    try:
        summary = run_experiment(
            experiment,
            tracking,
            output_dir,
            config,
            sha256_of(defining.encode()),
            resume=checkpoint,
            tags=tags,
        )
    except RunStoppedError as err:
        raise SystemExit(f"fedray: error: {err}") from None
    print(summary, flush=True)


def sweep_tracking(tracking: Tracking, name: str, hydra_cfg: Any) -> tuple[Tracking, list[str]]:
    """A sweep job's wandb group (one per sweep) and tags (its overrides); a run's are as set.

    Args:
        tracking: The job's tracking settings; an explicit `tracking.group` is kept.
        name: The experiment name.
        hydra_cfg: `HydraConfig.get()` of the job.
    """
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return tracking, []
    group = tracking.group or f"{name}-{Path(hydra_cfg.sweep.dir).name}"
    tags = [override[:64] for override in hydra_cfg.overrides.task]  # wandb's longest tag
    return dataclasses.replace(tracking, group=group), tags


def checkpoint_to_resume(resume: str | None, config: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint of `resume=DIR`, checked against the config; None without `resume`.

    Raises:
        ConfigError: Under `resume`, if DIR has no readable checkpoint or it is of a different
            config (naming the keys that differ).
    """
    if resume is None:
        return None
    try:
        checkpoint = load(Path(resume))
    except ValueError as error:
        raise ConfigError("resume", str(error)) from None
    if checkpoint is None:
        raise ConfigError("resume", f"{resume}: no {FILE_NAME} (checkpoint.every=0, or too early)")
    changed = differences(checkpoint.config, run_defining(config))
    if changed:
        keys = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise ConfigError("resume", f"{resume} is a run of a different config ({keys} differ)")
    return checkpoint


if __name__ == "__main__":
    main()
