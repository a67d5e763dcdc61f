"""The application: the `fedray` entry point and everything around one run.

Owns the Hydra entry point and config schemas (`run.py`, `config.py`), building an `Experiment`
from a composed config (`build.py`, `fit.py`), the run loop with tracking, the metric registry
and checkpoints (`runner.py`, `tracking.py`, `metric_keys.py`, `checkpoint.py`), and plots.
Its modules are imported by path: nothing below imports the application, and
`python -m engine.app.run` must not find itself half-imported.
"""
