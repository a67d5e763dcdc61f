"""Whether a model fits a population: the inputs it needs against those the population gives.

Model and population classes declare `inputs` (`engine.population.base.Inputs`): the kind of a
client's `x` (feature vectors, token sequences or rated item ids) and, where fixed, the number
of features. `check_fit` compares a model class with a built population before anything starts,
so that `model=lm` on feature vectors fails in one line instead of in every client's training.
The populations that would fit are the shipped options (`engine.app.config.COMPONENTS`) whose
declarations match.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common.errors import ConfigError
from engine.app.config import COMPONENTS
from engine.population import InputKind, Inputs, Population


def check_fit(model: Callable[..., Any], population: Population) -> None:
    """Raises unless `model` can train on `population`'s data (undeclared sides pass).

    Args:
        model: The model class, or a `functools.partial` of it (as `hydra.utils.instantiate`
            with `_partial_=True` builds).
        population: The built population: its actual `num_features` is checked.

    Raises:
        ConfigError: Under `model`, e.g. "lm needs token sequences (population=zipf_text or
            shakespeare); population=synthetic gives feature vectors".
    """
    target = getattr(model, "func", model)
    needs: Inputs | None = getattr(target, "inputs", None)
    gives = type(population).inputs
    if needs is None or gives is None or _fits(needs, gives.kind, population.num_features):
        return
    given = gives.kind.value
    if gives.kind == needs.kind:
        given += f" of length {population.num_features}"
    raise ConfigError(
        "model",
        f"{_option('model', target)} needs {_describe(needs)} ({_fitting(needs)}); "
        f"population={_option('population', type(population))} gives {given}",
    )


def _fits(needs: Inputs, kind: InputKind, num_features: int | None) -> bool:
    """Whether inputs of `kind` with `num_features` features (None: any) meet `needs`."""
    if kind != needs.kind:
        return False
    return needs.num_features is None or num_features in (None, needs.num_features)


def _describe(inputs: Inputs) -> str:
    """E.g. "token sequences", "feature vectors of length 784"."""
    if inputs.num_features is None:
        return inputs.kind.value
    return f"{inputs.kind.value} of length {inputs.num_features}"


def _option(group: str, cls: object) -> str:
    """The shipped option of `group` whose `_target_` is `cls`, else the class's name."""
    options = (option for g, option, c in COMPONENTS if g == group and c is cls)
    return next(options, getattr(cls, "__name__", str(cls)))


def _fitting(needs: Inputs) -> str:
    """The shipped populations that give what `needs` asks, e.g. "population=zipf_text or ...".

    A population whose feature count its config or files decide fits "with N features".
    """
    exact: list[str] = []
    sized: list[str] = []
    for group, option, cls in COMPONENTS:
        gives: Inputs | None = getattr(cls, "inputs", None)
        if group == "population" and gives and _fits(needs, gives.kind, gives.num_features):
            fixed = needs.num_features in (None, gives.num_features)
            (exact if fixed else sized).append(option)
    parts = [_either(exact)] if exact else []
    if sized:
        parts.append(f"{_either(sized)} with {needs.num_features} features")
    return "population=" + ", or ".join(parts) if parts else "no shipped population gives them"


def _either(options: list[str]) -> str:
    """Joins options as "a", "a or b", or "a, b or c"."""
    return " or ".join([", ".join(options[:-1]), options[-1]] if len(options) > 1 else options)
