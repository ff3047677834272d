"""Draws every jaxupdate.lr_scheduler schedule next to torch's, into one PNG.

    python examples/schedules.py [out.png]      # default: schedules.png

Each panel shows torch's learning rate after each ``scheduler.step()`` (a real torch optimizer
and scheduler) as a thick line and jaxupdate's ``schedule(count)`` on top of it as a thin
dashed line, with the largest relative difference in the title. Needs torch and matplotlib.
"""

from __future__ import annotations

import sys
import warnings

import jax

jax.config.update("jax_enable_x64", True)  # float64, as torch's Python-float schedules

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from jax import lax  # noqa: E402
from torch.optim import lr_scheduler as tls  # noqa: E402

from jaxupdate import lr_scheduler as ls  # noqa: E402

LR, STEPS = 0.1, 300

PANELS = [
    ("LambdaLR", lambda o: tls.LambdaLR(o, lambda e: 0.99**e),
     ls.lambda_lr(LR, lambda e: 0.99**e)),
    ("MultiplicativeLR", lambda o: tls.MultiplicativeLR(o, lambda e: 0.995),
     ls.multiplicative_lr(LR, lambda e: 0.995)),
    ("StepLR", lambda o: tls.StepLR(o, 60, 0.5), ls.step_lr(LR, 60, 0.5)),
    ("MultiStepLR", lambda o: tls.MultiStepLR(o, [50, 120, 200], 0.3),
     ls.multi_step_lr(LR, [50, 120, 200], 0.3)),
    ("ConstantLR", lambda o: tls.ConstantLR(o, 0.4, 100), ls.constant_lr(LR, 0.4, 100)),
    ("LinearLR", lambda o: tls.LinearLR(o, 0.1, 1.0, 150), ls.linear_lr(LR, 0.1, 1.0, 150)),
    ("ExponentialLR", lambda o: tls.ExponentialLR(o, 0.99), ls.exponential_lr(LR, 0.99)),
    ("SequentialLR (warm-up, cosine)",
     lambda o: tls.SequentialLR(o, [tls.LinearLR(o, 0.1, total_iters=30),
                                    tls.CosineAnnealingLR(o, 270)], [30]),
     ls.sequential_lr(LR, [ls.linear_lr(LR, 0.1, total_iters=30),
                           ls.cosine_annealing_lr(LR, 270)], [30])),
    ("PolynomialLR", lambda o: tls.PolynomialLR(o, 250, 2.0), ls.polynomial_lr(LR, 250, 2.0)),
    ("CosineAnnealingLR (past T_max)", lambda o: tls.CosineAnnealingLR(o, 100, 0.01),
     ls.cosine_annealing_lr(LR, 100, 0.01)),
    ("ChainedScheduler (constant, exp)",
     lambda o: tls.ChainedScheduler([tls.ConstantLR(o, 0.3, 80), tls.ExponentialLR(o, 0.995)]),
     ls.chained_scheduler([ls.constant_lr(LR, 0.3, 80), ls.exponential_lr(LR, 0.995)])),
    ("CyclicLR (triangular2)", lambda o: tls.CyclicLR(o, 0.01, 0.1, 40, mode="triangular2"),
     ls.cyclic_lr(0.01, 0.1, 40, mode="triangular2")),
    ("CosineAnnealingWarmRestarts", lambda o: tls.CosineAnnealingWarmRestarts(o, 20, 2, 0.005),
     ls.cosine_annealing_warm_restarts(LR, 20, 2, 0.005)),
    ("OneCycleLR (three_phase)",
     lambda o: tls.OneCycleLR(o, 0.1, total_steps=STEPS, three_phase=True),
     ls.one_cycle_lr(0.1, total_steps=STEPS, three_phase=True)),
]  # fmt: skip


def torch_curve(make, steps=STEPS, metrics=None):
    """lr and momentum of torch's param group after construction and after each step."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))], lr=LR,
                          momentum=0.9)  # fmt: skip
    sched = make(opt)
    group = opt.param_groups[0]
    lrs, moms = [group["lr"]], [group["momentum"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(steps):
            opt.step()
            sched.step() if metrics is None else sched.step(metrics[k])
            lrs.append(group["lr"])
            moms.append(group["momentum"])
    return np.asarray(lrs), np.asarray(moms)


def jax_curve(schedule, steps=STEPS):
    """schedule(count) for count = 0..steps, one count at a time as an optimizer evaluates it."""
    counts = jnp.arange(steps + 1, dtype=jnp.int32)
    return np.asarray(jax.jit(lambda c: lax.map(schedule, c))(counts))


def plateau_curves(steps=STEPS):
    rng = np.random.default_rng(0)
    metrics = np.maximum(1.0 - 0.01 * np.arange(steps), 0.4) + 0.02 * rng.standard_normal(steps)
    want, _ = torch_curve(lambda o: tls.ReduceLROnPlateau(o, patience=15, factor=0.5), steps,
                          metrics)  # fmt: skip
    plateau = ls.reduce_lr_on_plateau(LR, patience=15, factor=0.5)

    def body(state, m):
        state = plateau.step(state, m)
        return state, state.lr

    _, lrs = jax.jit(lambda ms: lax.scan(body, plateau.init(), ms))(jnp.asarray(metrics))
    return want, np.concatenate([[LR], np.asarray(lrs)])


def rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def main(out="schedules.png"):
    curves = []
    for title, make, sched in PANELS:
        want, want_mom = torch_curve(make)
        curves.append((title, want, jax_curve(sched)))
        if title.startswith("OneCycleLR"):
            curves.append(("OneCycleLR momentum", want_mom, jax_curve(sched.momentum)))
    want, got = plateau_curves()
    curves.append(("ReduceLROnPlateau (noisy metric)", want, got))

    cols = 4
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (title, want, got) in zip(axes.flat, curves):
        ax.plot(want, color="tab:orange", linewidth=4, alpha=0.5, label="torch")
        ax.plot(got, color="black", linewidth=1, linestyle="--", label="jaxupdate")
        ax.set_title(f"{title}\nmax rel diff {rel(got, want):.1e}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.supxlabel("scheduler steps (count)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    worst = max(rel(got, want) for _, want, got in curves)
    print(f"wrote {out}: {len(curves)} panels, largest relative difference to torch {worst:.1e}")
    return 0 if worst <= 1e-10 else 1


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
