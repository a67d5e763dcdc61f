"""Vectorised local training: a group of clients as one batched computation (torch.func).

The per-client loop (`engine.client.train_client`) pays Python and autograd overhead per step
and per client; for a small model that overhead is most of the cost. Here every client of a
group takes its s-th local step together: `vmap` over the client axis of `grad_and_value` of a
`functional_call`, with each client's own parameters.

Each client draws its batches exactly as the loop does (the same `rng.permutation` per epoch,
split into `batch_size` batches), so both paths compute the same update to float rounding.
Clients have different example counts: every step's batch is padded to a common width and
masked (a padded example adds nothing to the loss or its gradient), and a client whose steps
are used up takes masked no-op steps (no move, momentum included). Groups are formed from
clients of similar step counts (bucketing), at most as many as a memory budget allows; a
bucket of fewer than `MIN_GROUP` clients trains on the per-client loop instead.

Models qualify when they have none of the per-client hooks (`loss`, `begin_client`,
`round_stats`): their training loss is the mean cross-entropy of `forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F  # noqa: N812

from engine.client import ClientUpdate, LocalTraining, train_client
from engine.population import ClientData

_HOOKS = ("loss", "begin_client", "round_stats")
# Fewest clients a batched group takes: a batched step costs about as much as a step of ~5
# small clients on the loop (one CPU thread, logistic regression), so smaller groups loop.
MIN_GROUP = 8


def supports_vectorised(model: nn.Module) -> bool:
    """Whether `model` trains with the default loss and no per-client hooks."""
    return not any(callable(getattr(model, hook, None)) for hook in _HOOKS)


def batch_plan(
    sizes: Sequence[int], training: LocalTraining, rngs: Sequence[np.random.Generator]
) -> tuple[np.ndarray, np.ndarray]:
    """Each client's local steps, as the loop takes them, padded to common shapes.

    Returns:
        `index` int64 [C, S, B]: the example each slot of each step reads (0 where padded), and
        `mask` bool [C, S, B]: which slots are real. S is the most steps of any client, B the
        widest batch.
    """
    steps: list[list[np.ndarray]] = []
    for size, rng in zip(sizes, rngs, strict=True):
        batches: list[np.ndarray] = []
        for _ in range(training.epochs):
            order = rng.permutation(size)
            batches.extend(np.split(order, range(training.batch_size, size, training.batch_size)))
        steps.append([b for b in batches if len(b)])
    num_steps = max((len(s) for s in steps), default=0)
    width = max((len(b) for s in steps for b in s), default=0)
    index = np.zeros((len(sizes), num_steps, width), dtype=np.int64)
    mask = np.zeros((len(sizes), num_steps, width), dtype=bool)
    for c, batches in enumerate(steps):
        for s, batch in enumerate(batches):
            index[c, s, : len(batch)] = batch
            mask[c, s, : len(batch)] = True
    return index, mask


def group_clients(step_counts: Sequence[int], max_group: int) -> list[np.ndarray]:
    """Client positions in buckets of similar step counts, at most `max_group` per bucket.

    A bucket's clients take at most twice the steps of its first (fewest), so padding at most
    doubles the steps computed, however heavy-tailed the example counts are.
    """
    counts = np.asarray(step_counts)
    groups: list[np.ndarray] = []
    current: list[int] = []
    for position in np.argsort(counts, kind="stable").tolist():
        full = len(current) >= max(1, max_group)
        if current and (full or counts[position] > 2 * max(int(counts[current[0]]), 1)):
            groups.append(np.array(current, dtype=np.int64))
            current = []
        current.append(position)
    if current:
        groups.append(np.array(current, dtype=np.int64))
    return groups


def max_group_size(num_params: int, example_numel: int, width: int, memory_mb: float) -> int:
    """Clients one group may hold within `memory_mb`.

    A rough bound per client, in float32 values: its parameters four times (weights, gradient,
    momentum, a temporary) and its padded data and activations, taken as 8 x its batch's input
    (this suits the small on-device models the path is for).
    """
    per_client = 4 * (4 * num_params + 8 * max(width, 1) * max(example_numel, 1))
    return max(1, int(memory_mb * 2**20 // per_client))


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
    sizes = [len(d) for d in datas]
    steps = [training.epochs * -(-n // training.batch_size) for n in sizes]
    width = min(training.batch_size, max(sizes, default=1))
    example_numel = int(np.prod(datas[0].x.shape[1:])) if datas else 1
    limit = max_group_size(len(params), example_numel, width, training.vectorise_memory_mb)
    updates: list[ClientUpdate | None] = [None] * len(datas)
    for group in group_clients(steps, limit):
        if len(group) < MIN_GROUP:  # too few to pay for the batched call: the loop is faster
            trained = [train_client(model, params, datas[p], training, rngs[p]) for p in group]
        else:
            plans = {int(p): batch_plan([sizes[p]], training, [rngs[p]]) for p in group}
            trained = _train_group(model, params, datas, plans, group, training)
        for position, update in zip(group, trained, strict=True):
            updates[int(position)] = update
    return [u for u in updates if u is not None]


def _train_group(
    model: nn.Module,
    params: torch.Tensor,
    datas: Sequence[ClientData],
    plans: dict[int, tuple[np.ndarray, np.ndarray]],
    group: np.ndarray,
    training: LocalTraining,
) -> list[ClientUpdate]:
    """Trains the clients at positions `group` together."""
    device = params.device
    members = [int(p) for p in group]
    num_steps = max(plans[p][0].shape[1] for p in members)
    width = max(plans[p][0].shape[2] for p in members)
    index = np.zeros((len(members), num_steps, width), dtype=np.int64)
    mask = np.zeros((len(members), num_steps, width), dtype=bool)
    for row, p in enumerate(members):
        idx, msk = plans[p]
        index[row, : idx.shape[1], : idx.shape[2]] = idx[0]
        mask[row, : msk.shape[1], : msk.shape[2]] = msk[0]
    x, y = _padded([datas[p] for p in members], device)
    rows = torch.arange(len(members), device=device)[:, None]
    index_t = torch.from_numpy(index).to(device)
    mask_t = torch.from_numpy(mask).to(device)
    weights = _batched_params(model, params, len(members))
    velocity = {k: torch.zeros_like(v) for k, v in weights.items()} if training.momentum else {}
    step = vmap(grad_and_value(_masked_loss(model)))
    loss_sum = torch.zeros(len(members), dtype=torch.float64, device=device)
    for s in range(num_steps):
        batch = index_t[:, s]
        grads, losses = step(weights, x[rows, batch], y[rows, batch], mask_t[:, s])
        counts = mask_t[:, s].sum(dim=1)
        active = (counts > 0).to(params.dtype)
        _sgd_step(weights, velocity, grads, active, training)
        loss_sum += losses.double() * counts
    flat = torch.cat([w.reshape(len(members), -1) for w in weights.values()], dim=1)
    deltas = (flat - params).cpu().numpy()
    return [
        ClientUpdate(
            delta=deltas[row],
            num_examples=len(datas[p]),
            loss_sum=float(loss_sum[row]),
            examples_seen=training.epochs * len(datas[p]),
        )
        for row, p in enumerate(members)
    ]


def _padded(datas: Sequence[ClientData], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The clients' x and y stacked, each padded with its first example to the largest size."""
    longest = max(len(d) for d in datas)
    xs, ys = [], []
    for d in datas:
        pad = longest - len(d)
        xs.append(np.concatenate([d.x, np.repeat(d.x[:1], pad, axis=0)]) if pad else d.x)
        ys.append(np.concatenate([d.y, np.repeat(d.y[:1], pad, axis=0)]) if pad else d.y)
    return torch.from_numpy(np.stack(xs)).to(device), torch.from_numpy(np.stack(ys)).to(device)


def _batched_params(model: nn.Module, params: torch.Tensor, count: int) -> dict[str, torch.Tensor]:
    """`count` copies of the flat `params`, as the model's named parameters [count, ...]."""
    out, offset = {}, 0
    for name, param in model.named_parameters():
        size = param.numel()
        block = params[offset : offset + size].view(param.shape)
        out[name] = block.expand(count, *param.shape).clone()
        offset += size
    return out


def _masked_loss(
    model: nn.Module,
) -> Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """One client's loss on one padded batch: the mean cross-entropy of its real examples."""

    def loss(
        weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(model, weights, (x,))
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return (ce * mask).sum() / mask.sum().clamp(min=1)

    return loss


def _sgd_step(
    weights: dict[str, torch.Tensor],
    velocity: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    active: torch.Tensor,
    training: LocalTraining,
) -> None:
    """One SGD (with momentum) step of every active client, in place; others stay put."""
    for name, weight in weights.items():
        shape = (-1,) + (1,) * (weight.dim() - 1)
        grad = grads[name]
        if velocity:
            moving = active.view(shape)
            velocity[name] = velocity[name] * (1 - moving + moving * training.momentum) + grad
            grad = velocity[name]
        weight.sub_(grad * (training.lr * active.view(shape)))
