"""PyTorch's MNIST example, ported: the same training run in torch and in jaxupdate + flax nnx.

    python examples/port_mnist.py [out.png] [--samples 512] [--epochs 3] [--dtype float32]

The model, optimizer and schedule of pytorch/examples' ``mnist/main.py`` (conv 1->32 3x3,
conv 32->64 3x3, max-pool 2, fc 9216->128, fc 128->10, log-softmax + NLL loss; Adadelta
lr=1.0; StepLR(step_size=1, gamma=0.7) stepped once per epoch), trained on a small
synthetic MNIST-like data set generated here (28x28 images, labels from a fixed random
teacher network), so nothing is downloaded. Dropout is left out on both sides (as in
``model.eval()``): the two frameworks draw different random masks, and a ported run should
be compared on the arithmetic.

The port:

* the nnx model gets torch's initial weights with
  :func:`jaxupdate.interop.weights.torch_to_nnx` (transposed ``Linear`` kernels, ``Conv``
  kernels (O, I, kh, kw) -> (kh, kw, I, O));
* images are NCHW in torch and NHWC in flax; torch's ``flatten(x, 1)`` flattens (C, H, W),
  so the nnx model transposes back to channels-first before flattening, and ``fc1``'s
  weights keep their meaning;
* the optimizer and the per-epoch StepLR come from the live torch objects:
  ``ju.from_torch(optimizer, scheduler, steps_per_epoch=len(loader))``.

Both loss curves (one value per batch) are printed with their largest difference and drawn
into a PNG; the script exits 1 when they disagree beyond the tolerance below.

Tolerance. Both sides compute the same arithmetic in a different order: oneDNN's and XLA's
convolutions and matrix products sum their terms differently (a few ulps per layer), and
training feeds those differences back through every Adadelta step. With ``--dtype float64``
the two curves agree to 4.4e-16 (measured, default sizes): the port itself is exact. In
float32 the gap grows from 1e-7 at the first steps to 6.2e-5 at the last (measured), the
same size as torch's *own* float32 run against its float64 run (6.2e-5 at the last step:
0.49109262 vs 0.49112320), i.e. float32 rounding amplified by training, not a porting
error. The float32 tolerance, 1e-3 relative, leaves a margin of about 16 over that.
"""

from __future__ import annotations

import argparse
import sys

import jax

jax.config.update("jax_enable_x64", True)  # float64 available for --dtype float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flax import nnx  # noqa: E402

from jaxupdate.interop import from_torch  # noqa: E402
from jaxupdate.interop.weights import torch_to_nnx  # noqa: E402

TOL = {"float32": 1e-3, "float64": 1e-12}  # relative to the loss; see the docstring


# --- torch: pytorch/examples mnist/main.py, without dropout ------------------------------------
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, 1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, 1)
        self.fc1 = torch.nn.Linear(9216, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = torch.flatten(x, 1)  # (C, H, W) order
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


# --- flax nnx: the same network --------------------------------------------------------------
class NnxNet(nnx.Module):
    def __init__(self, dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=dtype, dtype=dtype, rngs=rngs)
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="VALID", **kw)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="VALID", **kw)
        self.fc1 = nnx.Linear(9216, 128, **kw)
        self.fc2 = nnx.Linear(128, 10, **kw)

    def __call__(self, x):  # x: NCHW, as torch's
        x = jnp.transpose(x, (0, 2, 3, 1))  # NHWC for flax
        x = nnx.relu(self.conv1(x))
        x = nnx.relu(self.conv2(x))
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's (C, H, W)
        x = nnx.relu(self.fc1(x))
        return jax.nn.log_softmax(self.fc2(x), axis=1)


def synthetic_mnist(n: int, seed: int = 0):
    """``n`` 28x28 images (smooth blobs plus noise, MNIST-like range) and teacher labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 1, 28, 28))
    for _ in range(3):  # three random strokes per image
        cy, cx = rng.uniform(6, 22, (2, n, 1, 1))
        s = rng.uniform(2, 5, (n, 1, 1))
        images[:, 0] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    images += 0.1 * rng.standard_normal(images.shape)
    images = (images - 0.1307) / 0.3081  # torchvision's MNIST normalization
    teacher = rng.standard_normal((784, 10))
    labels = np.argmax(images.reshape(n, -1) @ teacher, axis=1)
    return images, labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="port_mnist.png")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args(argv)

    tdtype, jdtype = getattr(torch, args.dtype), jnp.dtype(args.dtype)
    images, labels = synthetic_mnist(args.samples)
    batches = [
        (images[i : i + args.batch_size], labels[i : i + args.batch_size])
        for i in range(0, args.samples, args.batch_size)
    ]

    torch.manual_seed(1)
    net = Net().to(tdtype)
    model = NnxNet(jdtype, nnx.Rngs(0))
    torch_to_nnx(model, net)  # same initial weights, layouts converted

    optimizer = torch.optim.Adadelta(net.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    # the jaxupdate twin, built before torch trains (its state and position are copied now)
    tx = from_torch(optimizer, scheduler, steps_per_epoch=len(batches))

    # torch's training loop
    torch_losses = []
    for _ in range(args.epochs):
        net.train()
        for x, y in batches:
            optimizer.zero_grad()
            loss = F.nll_loss(net(torch.tensor(x, dtype=tdtype)), torch.tensor(y))
            loss.backward()
            optimizer.step()
            torch_losses.append(loss.item())
        scheduler.step()

    # jaxupdate + nnx: the same loop (the schedule steps at epoch boundaries by itself)
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y):
        def loss_fn(p):
            logp = nnx.merge(graphdef, p)(x)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    jax_losses = []
    for _ in range(args.epochs):
        for x, y in batches:
            params, opt_state, loss = train_step(
                params, opt_state, jnp.asarray(x, jdtype), jnp.asarray(y)
            )
            jax_losses.append(float(loss))

    t, j = np.asarray(torch_losses), np.asarray(jax_losses)
    rel = np.abs(t - j) / np.abs(t)
    print(f"{'step':>4}  {'torch loss':>14}  {'jaxupdate loss':>14}  {'rel diff':>9}")
    for k, (a, b, r) in enumerate(zip(t, j, rel)):
        print(f"{k:>4}  {a:14.8f}  {b:14.8f}  {r:9.2e}")
    worst = float(rel.max())
    tol = TOL[args.dtype]
    print(f"largest relative difference: {worst:.3e} (tolerance {tol:g}, {args.dtype})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t, lw=4, alpha=0.4, label="torch")
    ax.plot(j, "k--", lw=1, label="jaxupdate + flax nnx")
    per_epoch = len(batches)
    for e in range(1, args.epochs):
        ax.axvline(e * per_epoch - 0.5, color="grey", lw=0.5)
    ax.set_xlabel("batch")
    ax.set_ylabel("NLL loss")
    ax.set_title(f"MNIST example, Adadelta + StepLR per epoch ({args.dtype}): "
                 f"max rel diff {worst:.1e}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    if not worst <= tol:
        print("the two loss curves disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
