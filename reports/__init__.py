"""Reports read from a run's or a sweep's output directory (the summary, metrics and ledger log).

They run after training, from files alone: nothing here starts Ray or builds an experiment.
Scripts under `scripts/` are their command lines.
"""
