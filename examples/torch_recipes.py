"""Porting common torch recipes, side by side with torch.

    python examples/torch_recipes.py

A Hugging Face style fine-tuning setup (AdamW, ``no_decay = ["bias", "LayerNorm.weight"]``
groups, ``get_linear_schedule_with_warmup``), converted from the live torch objects with
``from_torch`` and also written natively in jaxupdate; then timm's param groups (biases and
norms first) with a ReduceLROnPlateau stepped once per epoch. Both frameworks train on the same
gradients; the script prints the largest relative difference and exits non-zero above 1e-12.
Needs torch (transformers is not needed: its warm-up lambda is copied below).
"""

from __future__ import annotations

import functools
import sys

import jax

jax.config.update("jax_enable_x64", True)  # float64, as torch's Python-float schedules

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import jaxupdate as ju  # noqa: E402
from jaxupdate.interop import current_lr, from_torch  # noqa: E402
from jaxupdate.interop.weights import weights_from_torch  # noqa: E402
from jaxupdate.lr_scheduler import lambda_lr, step_plateau  # noqa: E402
from jaxupdate.param_groups import by_name  # noqa: E402


# transformers' _get_linear_schedule_with_warmup_lr_lambda (plain Python: if, max, float)
def linear_warmup(current_step, *, num_warmup_steps, num_training_steps):
    if current_step < num_warmup_steps:
        return float(current_step) / float(max(1, num_warmup_steps))
    return max(0.0, float(num_training_steps - current_step)
               / float(max(1, num_training_steps - num_warmup_steps)))


class Block(torch.nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.dense = torch.nn.Linear(n_in, n_out)
        self.LayerNorm = torch.nn.LayerNorm(n_out)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(Block(300, 33), Block(33, 33), torch.nn.Linear(33, 7)).double()


def hf_groups(net, no_decay):
    """transformers' examples: weight decay except for biases and LayerNorm weights."""
    named = list(net.named_parameters())
    decay = [p for n, p in named if not any(nd in n for nd in no_decay)]
    return [{"params": decay, "weight_decay": 0.01},
            {"params": [p for n, p in named if any(nd in n for nd in no_decay)],
             "weight_decay": 0.0}]


def train(net, opt, tx, params, steps, rng, *, sched=None, epoch_end=None, every=None):
    """Both sides on the same gradients; returns the largest relative difference seen."""
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    names = list(params)
    worst = 0.0
    for k in range(steps):
        grads = {n: rng.standard_normal(tuple(p.shape)) for n, p in net.named_parameters()}
        for n, p in net.named_parameters():
            p.grad = torch.tensor(grads[n])
        opt.step()
        if sched is not None:
            sched.step()
        updates, state = step(type(params)((n, jnp.asarray(grads[n])) for n in names),
                              state, params)
        params = ju.apply_updates(params, updates)
        if epoch_end is not None and (k + 1) % every == 0:
            state = epoch_end(state, (k + 1) // every)
        ours = dict(net.named_parameters())
        for n in names:
            t = ours[n].detach().numpy()
            scale = max(float(np.max(np.abs(t))), 1e-300)  # zero biases at lr 0 (warm-up)
            worst = max(worst, float(np.max(np.abs(np.asarray(params[n]) - t))) / scale)
    return worst, state


def main() -> int:
    rng = np.random.default_rng(0)
    warmup = functools.partial(linear_warmup, num_warmup_steps=10, num_training_steps=60)
    no_decay = ["bias", "LayerNorm.weight"]
    results = {}

    # 1. Hugging Face: from_torch of the live optimizer + LambdaLR, jitted
    net = model()
    opt = torch.optim.AdamW(hf_groups(net, no_decay), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    tx = from_torch(opt, sched)
    params = weights_from_torch(net, optimizer=opt)  # the optimizer's order, not the model's
    results["HF AdamW + warm-up, from_torch"], _ = train(net, opt, tx, params, 60, rng,
                                                          sched=sched)

    # 2. the same recipe written in jaxupdate: torch's dotted names, a Python lambda under jit
    net = model()
    opt = torch.optim.AdamW(hf_groups(net, no_decay), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
    tx = ju.param_groups(ju.adamw, [
        {"params": by_name(lambda n: not any(nd in n for nd in no_decay)),
         "weight_decay": 0.01},
        {"params": by_name(lambda n: any(nd in n for nd in no_decay)), "weight_decay": 0.0},
    ], lr=lambda_lr(5e-3, warmup))
    results["HF AdamW + warm-up, native"], _ = train(net, opt, tx, weights_from_torch(net), 60,
                                                     rng, sched=sched)

    # 3. timm's groups (biases and norms first) + ReduceLROnPlateau once per epoch
    net = model()
    decay = [p for n, p in net.named_parameters() if p.ndim > 1 and not n.endswith(".bias")]
    rest = [p for n, p in net.named_parameters() if p.ndim <= 1 or n.endswith(".bias")]
    opt = torch.optim.SGD([{"params": rest, "weight_decay": 0.0},
                           {"params": decay, "weight_decay": 1e-4}], lr=0.1, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    val_loss = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98, 0.97, 0.96]
    tx = from_torch(opt, plateau, steps_per_epoch=5)
    params = weights_from_torch(net, optimizer=opt)

    def epoch_end(state, epoch):
        plateau.step(val_loss[epoch - 1])                  # torch: scheduler.step(val_loss)
        return step_plateau(tx, state, val_loss[epoch - 1])

    err, state = train(net, opt, tx, params, 40, rng, epoch_end=epoch_end, every=5)
    results["timm groups + per-epoch ReduceLROnPlateau"] = err
    print(f"lr after 8 epochs: torch {plateau.get_last_lr()}, jaxupdate {current_lr(tx, state)}")

    for name, err in results.items():
        print(f"{name:45s} max relative difference {err:.1e}")
    print(f"largest relative difference to torch: {max(results.values()):.1e}")
    return 0 if all(e <= 1e-12 for e in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
