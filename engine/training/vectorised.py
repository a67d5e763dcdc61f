"""Vectorised local training: a worker's clients as one batched computation (torch.func).

The per-client loop (`client.train_client`) pays Python and autograd overhead per step
and per client; for a small model that overhead is most of the cost. Here the clients of a
group take their s-th local step together: one `vmap` of a `functional_call` forward over the
client axis, each client with its own parameters, then one backward for all of them (a client's
loss depends on its own parameters only, so the gradient of the summed losses is every client's
own gradient).

Each client draws its batches exactly as the loop does (the same `rng.permutation` per epoch,
split into `batch_size` batches), so both paths compute the same update to float rounding.

Shapes never depend on which other clients share a group, so a client's update is the same,
bit for bit, however the clients are chunked, grouped or spread over workers:

- every batch is padded to `batch_size` and masked (a padded example adds nothing to the loss
  or its gradient);
- clients are ordered by their step counts, longest first, so the clients still moving at step
  s are a prefix of the group and the batched step runs on that prefix only: a client whose
  steps are used up drops out, and no padded step is ever computed;
- a client's first `vectorise_steps` steps are batched (see `batched_steps`); its later ones
  (the heavy tail of client sizes, where few clients remain to batch) run on the per-client
  loop.

Groups are at most as large as the memory budget (`vectorise_memory_mb`) allows.

Models qualify when they have none of the per-client hooks (`loss`, `begin_client`,
`round_stats`): their training loss is the mean cross-entropy of `forward`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F  # noqa: N812

from engine.population import ClientData
from engine.training.client import ClientUpdate, LocalTraining, client_batches, sgd_steps

_HOOKS = ("loss", "begin_client", "round_stats")
# Batched steps per client on a CPU when `vectorise_steps` is None (see `batched_steps`).
CPU_BATCHED_STEPS = 8
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

Weights = dict[str, torch.Tensor]


def supports_vectorised(model: nn.Module) -> bool:
    """Whether `model` trains with the default loss and no per-client hooks."""
    return not any(callable(getattr(model, hook, None)) for hook in _HOOKS)


def prefers_vectorised(model: nn.Module, device: torch.device) -> bool:
    """What `vectorise=auto` picks: the batched path where it is the faster one.

    On a GPU that is every supported model. On a CPU it is models without convolutions: a
    batched convolution ran slower than the loop there (0.67x for the FEMNIST CNN, one
    thread), while logistic regression ran about 3x faster (`scripts/bench_overhead.py`).
    """
    if not supports_vectorised(model):
        return False
    return device.type == "cuda" or not any(isinstance(m, _CONVOLUTIONS) for m in model.modules())


def batch_plan(
    plans: Sequence[Sequence[np.ndarray]], num_steps: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first `num_steps` batches of each client, padded to `width` examples.

    Returns:
        `index` int64 [C, num_steps, width]: the example each slot of each step reads (0 where
        padded), and `mask` bool [C, num_steps, width]: which slots are real.
    """
    index = np.zeros((len(plans), num_steps, width), dtype=np.int64)
    mask = np.zeros((len(plans), num_steps, width), dtype=bool)
    for c, batches in enumerate(plans):
        for s, batch in enumerate(batches[:num_steps]):
            index[c, s, : len(batch)] = batch
            mask[c, s, : len(batch)] = True
    return index, mask


def batched_steps(training: LocalTraining, device: torch.device, most: int) -> int:
    """How many of each client's first steps are batched, when the longest client has `most`.

    `training.vectorise_steps`, or if None: `CPU_BATCHED_STEPS` on a CPU (a batched step there
    costs about as much as three looped ones, so the tail of a few large clients is cheaper on
    the loop), every step on a GPU (where a looped step costs as much as a batched one).
    """
    chosen = training.vectorise_steps
    if chosen is None:
        chosen = CPU_BATCHED_STEPS if device.type == "cpu" else most
    return min(chosen, most)


def max_group_size(num_params: int, example_numel: int, training: LocalTraining, steps: int) -> int:
    """Clients one group may hold within `training.vectorise_memory_mb`.

    A rough bound per client, in float32 values: its parameters four times (weights, gradient,
    momentum, a temporary), its gathered batches of `steps` batched steps and its activations,
    taken as (`steps` + 8) x its batch's input (this suits the small on-device models the path
    is for).
    """
    batch_numel = training.batch_size * max(example_numel, 1)
    per_client = 4 * (4 * num_params + (steps + 8) * batch_numel)
    return max(1, int(training.vectorise_memory_mb * 2**20 // per_client))


def train_clients(
    model: nn.Module,
    params: torch.Tensor,
    datas: Sequence[ClientData],
    training: LocalTraining,
    rngs: Sequence[np.random.Generator],
) -> list[ClientUpdate]:
    """Local SGD of every client from `params`, vectorised; updates in the clients' order.

    Args:
        model: A scratch module of the architecture (`supports_vectorised`); only its
            structure is used.
        params: Flat float32 starting point, on the model's device.
        datas: The clients' examples.
        training: Local SGD settings (shared by all clients).
        rngs: Each client's stream for this round: it decides the shuffling, as in the loop.
    """
    plans = [client_batches(len(d), training, r) for d, r in zip(datas, rngs, strict=True)]
    longest_first = sorted(range(len(datas)), key=lambda p: -len(plans[p]))
    example_numel = int(np.prod(datas[0].x.shape[1:])) if datas else 1
    steps = batched_steps(training, params.device, max((len(p) for p in plans), default=0))
    limit = max_group_size(len(params), example_numel, training, steps)
    updates: list[ClientUpdate | None] = [None] * len(datas)
    for start in range(0, len(datas), limit):
        group = longest_first[start : start + limit]
        group_plans = [plans[p] for p in group]
        trained = _train_group(
            model, params, [datas[p] for p in group], group_plans, training, steps
        )
        for position, update in zip(group, trained, strict=True):
            updates[position] = update
    return [u for u in updates if u is not None]


def _train_group(
    model: nn.Module,
    params: torch.Tensor,
    datas: Sequence[ClientData],
    plans: Sequence[Sequence[np.ndarray]],
    training: LocalTraining,
    steps: int,
) -> list[ClientUpdate]:
    """Trains a group of clients (`plans` longest first): `steps` batched steps, then tails."""
    weights = _batched_params(model, params, len(datas))
    velocity = {k: torch.zeros_like(v) for k, v in weights.items()} if training.momentum else {}
    loss_sums = _batched_phase(model, weights, velocity, datas, plans, training, steps)
    for row, (data, batches) in enumerate(zip(datas, plans, strict=True)):
        tail = batches[steps:]
        if tail:
            loss_sums[row] += _looped_tail(model, weights, velocity, row, data, tail, training)
    flat = torch.cat([w.reshape(len(datas), -1) for w in weights.values()], dim=1)
    deltas = (flat - params).cpu().numpy()
    return [
        ClientUpdate(
            delta=deltas[row],
            num_examples=len(data),
            loss_sum=float(loss_sums[row]),
            examples_seen=training.epochs * len(data),
        )
        for row, data in enumerate(datas)
    ]


def _batched_phase(
    model: nn.Module,
    weights: Weights,
    velocity: Weights,
    datas: Sequence[ClientData],
    plans: Sequence[Sequence[np.ndarray]],
    training: LocalTraining,
    steps: int,
) -> np.ndarray:
    """The first `steps` steps of every client, batched; returns the loss sums."""
    num_steps = min(steps, len(plans[0]) if plans else 0)
    if num_steps == 0:
        return np.zeros(len(datas))
    device = next(iter(weights.values())).device
    index, mask = batch_plan(plans, num_steps, training.batch_size)
    counts = np.array([len(batches) for batches in plans])
    moving = (counts[:, None] > np.arange(num_steps)).sum(axis=0)  # longest first: a prefix
    xs, ys = _gathered(datas, index, device)
    mask_t = torch.from_numpy(mask).to(device=device, dtype=torch.float32)
    losses_of = _client_losses(model)
    losses = torch.zeros(num_steps, len(datas), device=device)
    for s in range(num_steps):
        n = int(moving[s])
        live, live_velocity = _prefix(weights, n), _prefix(velocity, n)
        step = functools.partial(losses_of, x=xs[:n, s], y=ys[:n, s], mask=mask_t[:n, s])
        losses[s, :n] = _sgd_step(step, live, live_velocity, training)
    return (losses.double().cpu().numpy() * mask.sum(axis=2).T).sum(axis=0)


def _looped_tail(
    model: nn.Module,
    weights: Weights,
    velocity: Weights,
    row: int,
    data: ClientData,
    batches: Sequence[np.ndarray],
    training: LocalTraining,
) -> float:
    """One client's steps after the batched phase, on the per-client loop; returns their loss.

    The client's weights (and momentum) move into `model`, take the loop's steps
    (`engine.training.client.sgd_steps`) and move back into row `row` of `weights`.
    """
    parameters = list(model.parameters())
    with torch.no_grad():
        for parameter, batched in zip(parameters, weights.values(), strict=True):
            parameter.copy_(batched[row])
    device = parameters[0].device
    x, y = torch.from_numpy(data.x).to(device), torch.from_numpy(data.y).to(device)
    moments = {i: v[row].clone() for i, v in enumerate(velocity.values())}
    steps = (torch.from_numpy(batch).to(device) for batch in batches)
    total = sgd_steps(model, x, y, steps, training, moments)
    with torch.no_grad():
        for parameter, batched in zip(parameters, weights.values(), strict=True):
            batched[row].copy_(parameter)
    return total


def _sgd_step(
    losses_of: Callable[[Weights], torch.Tensor],
    weights: Weights,
    velocity: Weights,
    training: LocalTraining,
) -> torch.Tensor:
    """One SGD (with momentum) step of each client's `weights`, in place (they are views).

    Args:
        losses_of: The clients' losses [n] at given weights; client i's depends on its own
            weights only, so the gradient of their sum is every client's own gradient.
        weights: The clients' weights [n, ...], moved in place.
        velocity: Their momentum buffers (empty without momentum), updated in place.
        training: Learning rate and momentum.

    Returns:
        The clients' losses before the step.
    """
    live = {k: w.detach().requires_grad_() for k, w in weights.items()}
    losses = losses_of(live)
    grads = torch.autograd.grad(
        losses.sum(), list(live.values()), allow_unused=True, materialize_grads=True
    )
    with torch.no_grad():
        steps = list(grads)
        if velocity:
            moments = list(velocity.values())
            torch._foreach_mul_(moments, training.momentum)
            torch._foreach_add_(moments, steps)
            steps = moments
        torch._foreach_add_(list(weights.values()), steps, alpha=-training.lr)
    return losses.detach()


def _prefix(tensors: Weights, count: int) -> Weights:
    """The first `count` clients' rows of batched tensors (views)."""
    return {k: t[:count] for k, t in tensors.items()}


def _gathered(
    datas: Sequence[ClientData], index: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every client's batched steps' examples, x and y [C, steps, width, ...], gathered once."""
    xs, ys = [], []
    for data, taken in zip(datas, index, strict=True):
        if len(data):
            xs.append(data.x[taken])
            ys.append(data.y[taken])
        else:  # an empty client reads nothing real: any zeros will do
            xs.append(np.zeros((*taken.shape, *data.x.shape[1:]), dtype=data.x.dtype))
            ys.append(np.zeros((*taken.shape, *data.y.shape[1:]), dtype=data.y.dtype))
    return torch.from_numpy(np.stack(xs)).to(device), torch.from_numpy(np.stack(ys)).to(device)


def _batched_params(model: nn.Module, params: torch.Tensor, count: int) -> Weights:
    """`count` copies of the flat `params`, as the model's named parameters [count, ...]."""
    out, offset = {}, 0
    for name, param in model.named_parameters():
        size = param.numel()
        block = params[offset : offset + size].view(param.shape)
        out[name] = block.expand(count, *param.shape).clone()
        offset += size
    return out


def _client_losses(model: nn.Module) -> Callable[..., torch.Tensor]:
    """Each client's loss on its padded batch: the mean cross-entropy of its real examples.

    Only the forward is vmapped over the clients; the cross-entropy runs once over all their
    logits (cheaper than vmapping it).
    """
    forward = vmap(lambda weights, x: functional_call(model, weights, (x,)))

    def losses(
        weights: Weights, *, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        logits = forward(weights, x)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        per_example = ce.reshape(*mask.shape, -1)  # [n, width, tokens]: tokens of a sequence
        summed = (per_example * mask[:, :, None]).sum(dim=(1, 2))
        return summed / (mask.sum(dim=1).clamp(min=1) * per_example.shape[2])

    return losses
