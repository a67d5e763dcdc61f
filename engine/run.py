"""The `fedray` command (also `python -m engine.run`): a Hydra app that runs one simulation.

Before Hydra and Ray start, the command line is composed and validated once, so that a misspelt
key, a wrong type or an invalid value fails in one line naming the key.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine.config import register_configs
from engine.errors import ConfigError
from engine.experiment import as_dict, build_experiment
from engine.runner import run_experiment, sha256_of

CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"
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
    register_configs()
    overrides = [a for a in args if a not in _MULTIRUN_FLAGS]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=_first_of_sweeps(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise _composition_error(err) from None
    build_experiment(cfg)


def main() -> None:
    """Entry point of the `fedray` console script."""
    register_configs()
    args = sys.argv[1:]
    if all(a in _MULTIRUN_FLAGS or not a.startswith("-") for a in args):
        try:
            check_command_line(args)
        except ConfigError as err:
            raise SystemExit(f"fedray: error: {err}") from None
    _app()


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        experiment, tracking = build_experiment(cfg)
    except ConfigError as err:
        raise SystemExit(f"fedray: error: {err}") from None
    config = as_dict(cfg)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True, sort_keys=True)
    summary = run_experiment(
        experiment, tracking, output_dir, config, sha256_of(config_yaml.encode())
    )
    print(summary, flush=True)


if __name__ == "__main__":
    main()
