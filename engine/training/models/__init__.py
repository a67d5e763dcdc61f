"""Models trained by the clients, and the flat-vector view of their parameters.

A model is an `nn.Module` built as `Model(num_features, num_classes, **config)`, whose
`parameters()` order is the layout of the flat vector (see `flatten`). `forward(x)` returns
logits [n, num_classes], or [n, seq, num_classes] for a sequence model (token ids [n, seq]).
Every model class declares `inputs` (`engine.population.base.Inputs`), the data it needs, which
`engine.app.fit` checks against the population's own declaration before a run starts.

Optional hooks, duck-typed and called by `engine.training.client` when present:

- `loss(x, y) -> Tensor`: the scalar training loss of a batch. Default: the mean cross-entropy
  of `forward(x)` flattened to [-1, num_classes] against `y` flattened to [-1]. Evaluation
  always uses the full-softmax cross-entropy of `forward(x)`, never this hook.
- `begin_client(x, y) -> None`: called once per client, after the global parameters are loaded
  and with gradients enabled, before its local training and before evaluating its data (e.g.
  to rebuild client-local state, as in Federated Reconstruction).
- `round_stats() -> dict[str, np.ndarray]`: statistics accumulated since the last call (e.g.
  tokens routed to each expert), then reset; returned in `ClientUpdate.stats`.

Structural queries some models answer for sparse or per-expert aggregation:
`row_sparse_parameters() -> tuple[str, ...]` (`NextWordLM`) and
`expert_parameters() -> list[list[str]]` (`MoETransformerLM`); names are `named_parameters()`
names.
"""

from engine.training.models.classifiers import CNN, MLP, LogisticRegression
from engine.training.models.lm import NextWordLM
from engine.training.models.moe import MoETransformerLM
from engine.training.models.params import assign_flat, flatten, init_parameters

__all__ = [
    "CNN",
    "MLP",
    "LogisticRegression",
    "MoETransformerLM",
    "NextWordLM",
    "assign_flat",
    "flatten",
    "init_parameters",
]
