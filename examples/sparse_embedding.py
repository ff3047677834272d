"""Sparse embedding gradients in JAX, trained with sparse_adam, next to torch's SparseAdam.

torch's ``nn.Embedding(sparse=True)`` hands its weight a sparse COO gradient: one row per
looked-up id (ids repeated in the batch give repeated rows), and ``torch.optim.SparseAdam``
updates only those rows. JAX has no sparse autograd for a lookup, but the same gradient is
two lines away: differentiate the loss with respect to the *gathered rows* (a dense
``(lookups, dim)`` array) and pair it with the ids::

    rows = table[ids.ravel()]                                  # the lookup
    loss, g_rows = jax.value_and_grad(loss_of_rows)(rows)      # d loss / d rows
    g_table = sparse.BCOO((g_rows, ids.reshape(-1, 1)), shape=table.shape)

``sparse_adam`` sums the duplicate ids (torch's ``coalesce``) and moves only the rows that were
looked up, with torch's arithmetic. The dense head is trained with ``adam``, as torch users
pair ``SparseAdam`` with ``Adam``. When torch is installed, the same model is trained with
``nn.Embedding(sparse=True)`` + ``SparseAdam`` + ``Adam`` and the weights are compared.

Run: ``python examples/sparse_embedding.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import sparse

import jaxupdate as ju
from jaxupdate.optim.sparse_adam import sparse_adam

NUM, DIM, CLASSES = 50, 8, 3  # vocabulary, embedding width, classes
BATCH, SEQ = 16, 5  # 80 lookups per step, among 50 ids: many repeats
STEPS, LR = 40, 0.05


def data(seed=0):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((NUM, DIM)).astype(np.float32)
    weight = (0.3 * rng.standard_normal((CLASSES, DIM))).astype(np.float32)
    bias = np.zeros(CLASSES, np.float32)
    # ids drawn from the first 40 only: the last 10 rows never get a gradient
    ids = rng.integers(0, 40, size=(STEPS, BATCH, SEQ))
    labels = rng.integers(0, CLASSES, size=(STEPS, BATCH))
    return table, weight, bias, ids, labels


def loss_of_rows(rows, head, y):
    """Mean-pooled embeddings -> linear head -> cross-entropy, from the gathered rows."""
    pooled = rows.reshape(BATCH, SEQ, DIM).mean(axis=1)
    logits = pooled @ head["weight"].T + head["bias"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def train_jax(table, weight, bias, ids, labels):
    emb_tx = sparse_adam(lr=LR)
    head_tx = ju.adam(lr=LR)
    table = jnp.asarray(table)
    head = {"weight": jnp.asarray(weight), "bias": jnp.asarray(bias)}
    emb_state, head_state = emb_tx.init(table), head_tx.init(head)

    @jax.jit
    def train_step(table, head, emb_state, head_state, ids, y):
        rows = table[ids.ravel()]
        loss, (g_rows, g_head) = jax.value_and_grad(loss_of_rows, argnums=(0, 1))(rows, head, y)
        # torch's sparse embedding gradient: one row per lookup, duplicate ids kept
        g_table = sparse.BCOO((g_rows, ids.reshape(-1, 1)), shape=table.shape)
        updates, emb_state = emb_tx.update(g_table, emb_state)
        table = optax.apply_updates(table, updates)
        updates, head_state = head_tx.update(g_head, head_state, head)
        head = optax.apply_updates(head, updates)
        return table, head, emb_state, head_state, loss

    losses = []
    for step in range(STEPS):
        table, head, emb_state, head_state, loss = train_step(
            table, head, emb_state, head_state, ids[step], labels[step]
        )
        losses.append(float(loss))
    return np.array(losses), np.asarray(table), np.asarray(head["weight"])


def train_torch(table, weight, bias, ids, labels):
    import torch

    torch.set_num_threads(1)
    emb = torch.nn.Embedding(NUM, DIM, sparse=True)
    head = torch.nn.Linear(DIM, CLASSES)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(table))
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    opt_sparse = torch.optim.SparseAdam(emb.parameters(), lr=LR)
    opt_dense = torch.optim.Adam(head.parameters(), lr=LR)
    losses = []
    for step in range(STEPS):
        x = torch.from_numpy(ids[step])
        y = torch.from_numpy(labels[step])
        loss = torch.nn.functional.cross_entropy(head(emb(x).mean(dim=1)), y)
        loss.backward()  # emb.weight.grad is a sparse COO tensor
        opt_sparse.step()
        opt_dense.step()
        opt_sparse.zero_grad()
        opt_dense.zero_grad()
        losses.append(loss.item())
    return np.array(losses), emb.weight.detach().numpy(), head.weight.detach().numpy()


def main():
    table, weight, bias, ids, labels = data()
    losses, t_jax, w_jax = train_jax(table, weight, bias, ids, labels)
    moved = np.flatnonzero(np.any(t_jax != table, axis=1))
    print(f"sparse_adam + adam: loss {losses[0]:.4f} -> {losses[-1]:.4f} after {STEPS} steps")
    print(f"  rows updated: {moved.size} of {NUM} (ids 40..49 never looked up stay put)")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("(torch is not installed: skipping the comparison)")
        return 0
    t_losses, t_torch, w_torch = train_torch(table, weight, bias, ids, labels)
    print(f"torch SparseAdam + Adam: loss {t_losses[0]:.4f} -> {t_losses[-1]:.4f}")
    diff = float(max(np.max(np.abs(t_jax - t_torch)), np.max(np.abs(w_jax - w_torch))))
    same_rows = np.array_equal(moved, np.flatnonzero(np.any(t_torch != table, axis=1)))
    print(f"largest parameter difference (float32): {diff:.2e}; same rows updated: {same_rows}")
    return 0 if diff < 1e-5 and same_rows else 1


if __name__ == "__main__":
    jax.config.update("jax_platforms", "cpu")
    raise SystemExit(main())
