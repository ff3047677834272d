"""The benchmark's outputs: the CPU speed targets checked, a markdown report and PNG plots."""

from __future__ import annotations

from benchmarks.cases import format_count

CPU_CONTENDERS = ("jaxupdate", "jaxupdate-fused", "optax", "xla-floor", "torch-single",
                  "torch-foreach", "torch-fused")
CUDA_CONTENDERS = ("torch-cuda-foreach", "torch-cuda-fused")


# ---------------------------------------------------------------------------------------------
# CPU speed targets: the XLA path (per-leaf kernels) and the fused step, against torch fused
# and optax, plus first call and peak memory


def evaluate_targets(results: dict) -> list[dict]:
    """Every CPU target that this run measured, one entry per configuration."""
    out = []

    def add(target, limit, row, value, where=None):
        out.append({
            "target": target,
            "limit": limit,
            "optimizer": row["optimizer"],
            "size": row.get("size"),
            "leaves": row.get("leaves"),
            "where": where or f"{row['optimizer']} {format_count(row['size'])} x {row['leaves']}",
            "value": value,
            "met": value <= limit,
        })

    for row in results.get("update_step", []):
        c = row.get("contenders", {})
        ju = c.get("jaxupdate")
        if not ju or ju.get("device") != "cpu":
            continue
        if "torch-fused" in c:
            add("jaxupdate time / torch fused (every leaf count)", 1.0, row,
                ju["median_s"] / c["torch-fused"]["median_s"])
        if "x_roofline" in ju:
            if row["leaves"] <= 100:
                add("jaxupdate x roofline (<= 100 leaves)", 1.15, row, ju["x_roofline"])
            if row["leaves"] >= 10_000:
                add("jaxupdate x roofline (10,000 leaves)", 2.0, row, ju["x_roofline"])
        if row["leaves"] == 1000 and "optax" in c:
            add("jaxupdate time / optax (1,000 leaves)", 0.6, row,
                ju["median_s"] / c["optax"]["median_s"])
        if row["leaves"] == 1000:
            add("jaxupdate first call, s (1,000 leaves)", 2.0, row, ju["first_call_s"])
        if row["leaves"] >= 10_000:
            add("jaxupdate first call, s (10,000 leaves)", 10.0, row, ju["first_call_s"])
        fused = c.get("jaxupdate-fused")
        if fused and "torch-fused" in c:
            add("jaxupdate-fused time / torch fused (every leaf count)", 0.9, row,
                fused["median_s"] / c["torch-fused"]["median_s"])
        if fused and row["leaves"] <= 100 and "x_roofline" in fused:
            add("jaxupdate-fused x roofline (<= 100 leaves)", 1.15, row, fused["x_roofline"])
        if fused and row["leaves"] == 1000:
            add("jaxupdate-fused first call, s (1,000 leaves)", 1.0, row, fused["first_call_s"])
        if fused and row["leaves"] >= 10_000:
            add("jaxupdate-fused first call, s (10,000 leaves)", 2.0, row,
                fused["first_call_s"])
    for m in results.get("memory", []):
        if m.get("contender") == "jaxupdate" and "ratio" in m:
            add("jaxupdate peak memory / (params + grads + state)", 1.1, m, m["ratio"],
                f"{m['optimizer']} {format_count(m['size'])} x {m['leaves']}")
    return out


def summarize_targets(targets: list[dict]) -> list[dict]:
    by = {}
    for t in targets:
        by.setdefault(t["target"], []).append(t)
    rows = []
    for name, items in by.items():
        worst = max(items, key=lambda t: t["value"])
        rows.append({
            "target": name,
            "limit": worst["limit"],
            "met": sum(t["met"] for t in items),
            "measured": len(items),
            "worst_value": worst["value"],
            "worst_where": worst["where"],
            "failures": [f"{t['where']}: {t['value']:.2f}" for t in items if not t["met"]],
        })
    return rows


# ---------------------------------------------------------------------------------------------
# markdown


def _ms(s):
    return f"{s * 1e3:.3g}" if s < 1 else f"{s * 1e3:,.0f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _contender_names(results):
    seen = []
    for row in results.get("update_step", []):
        for k in row.get("contenders", {}):
            if k not in seen:
                seen.append(k)
    order = CPU_CONTENDERS + CUDA_CONTENDERS
    return sorted(seen, key=lambda k: order.index(k) if k in order else len(order))


def markdown(results: dict) -> str:
    from benchmarks.machine import one_line

    m = results["machine"]
    s = results["settings"]
    out = ["# jaxupdate benchmarks", ""]
    out.append(f"Machine: {one_line(m)}.  ")
    out.append(f"Load average (1/5/15 min) at start {m.get('load_average_at_start')}, at end "
               f"{results.get('load_average_at_end')}; CPU pressure (PSI some avg60) at start "
               f"{m.get('cpu_pressure_avg60_at_start')}%.  ")
    if s.get("torch_threads"):
        out.append(f"torch.set_num_threads({s['torch_threads']}).  ")
    out.append(f"Preset `{s['preset']}`, {s['rounds']} interleaved rounds after {s['warmup']} "
               f"warm-up steps, medians; {m.get('date_utc')}, commit {m.get('git_commit')}; "
               f"run took {results.get('elapsed_s', 0):.0f} s.")
    busy = m.get("load_average_at_start") and m["load_average_at_start"][0] > m["usable_cpus"]
    if busy:
        out += ["", f"> Warning: the load average ({m['load_average_at_start'][0]}) exceeded the "
                f"{m['usable_cpus']} usable CPUs while this ran: other processes shared the "
                "cores, and multi-threaded contenders (torch's OpenMP pools, XLA's) suffer most. "
                "Compare ratios within a row rather than absolute times; on a shared machine "
                "`--torch-threads 1` keeps torch's OpenMP barriers from stalling."]
    out.append("")
    for dev, bw in results.get("bandwidth", {}).items():
        extra = (f", jax donated in-place {bw['jax_inplace_GBps']:.1f} GB/s"
                 if "jax_inplace_GBps" in bw else "")
        out.append(f"Roofline bandwidth ({dev}): in-place `x.mul_(c)` over "
                   f"{format_count(bw['floats'])} float32 = **{bw['inplace_GBps']:.1f} GB/s** "
                   f"(copy {bw['copy_GBps']:.1f} GB/s{extra}). Roofline of a step = bytes per "
                   "parameter (Adam/AdamW 28, SGD-momentum/RMSprop/Adagrad 20) x parameters / "
                   "that bandwidth.")
    rows = results.get("update_step", [])
    if rows:
        names = _contender_names(results)
        out += ["", "## Update step", "",
                "Median time of one step in ms, and in parentheses as a multiple of the "
                "roofline (lower is better). `ju/x` = jaxupdate's time over x's (below 1: "
                "jaxupdate is faster). Leaves mix 2-D weights of four shapes and 1-D biases. "
                "`xla-floor` is the leanest hand-written jitted step (benchmarks/floor.py): "
                "what XLA costs without any library.", ""]
        ratio_cols = [k for k in ("jaxupdate/torch-fused", "jaxupdate/optax", "jaxupdate/xla-floor",
                                  "jaxupdate-fused/torch-fused")
                      if any(k in r.get("ratios", {}) for r in rows)]
        header = (["optimizer", "params", "leaves", "roofline ms"] + names
                  + [k.replace("jaxupdate", "ju") for k in ratio_cols])
        body = []
        for r in rows:
            if r.get("skipped"):
                body.append([r["optimizer"], format_count(r["size"]), r["leaves"], "-"]
                            + [f"skipped: {r['skipped']}"] + [""] * (len(names) - 1
                                                                   + len(ratio_cols)))
                continue
            cells = []
            for n in names:
                c = r["contenders"].get(n)
                if c is None:
                    cells.append("n/a" if n in r.get("unavailable", {}) else "-")
                elif "x_roofline" in c:
                    cells.append(f"{_ms(c['median_s'])} ({c['x_roofline']:.2g}x)")
                else:
                    cells.append(_ms(c["median_s"]))
            roof = r["roofline_s"].get("cpu")
            body.append([r["optimizer"], format_count(r["size"]), r["leaves"],
                         _ms(roof) if roof else "-"] + cells
                        + [f"{r['ratios'][k]:.2f}" if k in r.get("ratios", {}) else "-"
                           for k in ratio_cols])
        out.append(_table(header, body))

        out += ["", "## First call (trace + compile + one step)", "",
                "Seconds. torch has nothing to compile; its first step allocates the state.", ""]
        first_names = [n for n in ("jaxupdate", "jaxupdate-fused", "optax", "xla-floor",
                                   "torch-fused")
                       if n in names]
        body = []
        for r in rows:
            if r.get("skipped"):
                continue
            body.append([r["optimizer"], format_count(r["size"]), r["leaves"]]
                        + [f"{r['contenders'][n]['first_call_s']:.2f}"
                           if n in r["contenders"] else "-" for n in first_names])
        out.append(_table(["optimizer", "params", "leaves"] + first_names, body))

    mem = results.get("memory", [])
    if mem:
        out += ["", "## Peak memory", "",
                "Each contender in a fresh process: resident-set peak during allocation of "
                "params and grads, state creation and "
                f"{mem[0].get('steps', 3)} steps, minus the resident set just before (after "
                "imports and compilation; peak counter reset through /proc/self/clear_refs). "
                "`ratio` = that / (params + grads + state in float32). `XLA` = the compiled "
                "step's own estimate (arguments + outputs - donated aliases + temporaries).", ""]
        body = []
        for x in mem:
            if "error" in x or "skipped" in x:
                body.append([x["optimizer"], format_count(x["size"]), x["leaves"],
                             x["contender"], x.get("error") or x.get("skipped"), "", "", ""])
                continue
            xla = x.get("xla_memory_analysis")
            body.append([x["optimizer"], format_count(x["size"]), x["leaves"], x["contender"],
                         f"{x['peak_extra_bytes'] / 2**20:.0f}",
                         f"{x['params_grads_state_bytes'] / 2**20:.0f}",
                         f"{x['ratio']:.3f}" + ("" if x.get("peak_reset", True) else " *"),
                         f"{xla['step_peak_estimate_bytes'] / 2**20:.0f}" if xla else "-"])
        out.append(_table(["optimizer", "params", "leaves", "contender", "peak MiB",
                           "params+grads+state MiB", "ratio", "XLA MiB"], body))

    ts = results.get("train_step")
    if ts:
        out += ["", "## Whole training step", "",
                f"{ts['model']}, batch {ts['batch']}, {ts['params']:,} parameters in "
                f"{ts['leaves']} leaves; steps per second from the median of {ts['rounds']} "
                "interleaved steps (higher is better). `loss diff` = relative difference of the "
                "final losses of jaxupdate and torch eager after the same steps.", ""]
        cols = ["jaxupdate (jax.jit)", "torch eager", "torch eager, fused"]
        body = []
        for e in ts["results"]:
            c = e["contenders"]
            body.append([e["torch_class"]]
                        + [f"{c[k]['steps_per_s']:.1f}" if k in c else "n/a" for k in cols]
                        + [f"{e[k]:.2f}x" if k in e else "-" for k in
                           ("speedup vs torch eager", "speedup vs torch eager, fused")]
                        + [f"{e['final_loss_rel_diff']:.1e}" if "final_loss_rel_diff" in e
                           else "-"])
        out.append(_table(["optimizer"] + [f"{k} steps/s" for k in cols]
                          + ["jax / eager", "jax / eager fused", "loss diff"], body))

    summary = results.get("targets_summary", [])
    if summary:
        out += ["", "## CPU speed targets", "",
                "Checked on every configuration of this run where the target applies.", ""]
        body = [[t["target"], f"<= {t['limit']:g}", f"{t['met']}/{t['measured']}",
                 f"{t['worst_value']:.2f} ({t['worst_where']})"] for t in summary]
        out.append(_table(["target", "limit", "configurations met", "worst (where)"], body))
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# plots


def plots(results: dict, out_dir) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = [r for r in results.get("update_step", []) if not r.get("skipped")]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    names = _contender_names(results)
    styles = {"jaxupdate": dict(color="C3", lw=2.5, marker="o"),
              "jaxupdate-fused": dict(color="C6", lw=2.5, marker="P"),
              "optax": dict(color="C0", marker="s"),
              "xla-floor": dict(color="k", marker="x", ls="-."),
              "torch-single": dict(color="C7", marker="v", ls=":"),
              "torch-foreach": dict(color="C2", marker="^", ls="--"),
              "torch-fused": dict(color="C1", marker="D"),
              "torch-cuda-foreach": dict(color="C4", marker="^", ls="--"),
              "torch-cuda-fused": dict(color="C5", marker="D")}

    def grid(n):
        cols = min(n, 3)
        fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(5 * cols, 3.8 *
                                 ((n + cols - 1) // cols)), squeeze=False)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        return fig, list(axes.flat)

    def save(fig, name):
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    def xy_plot(key_fixed, key_x, fname, xlabel, title):
        fig, axes = grid(max(1, len(optimizers)))
        for ax, opt in zip(axes, optimizers):
            mine = [r for r in rows if r["optimizer"] == opt]
            # the fixed value with the most points (ties: the largest)
            counts = {}
            for r in mine:
                counts[r[key_fixed]] = counts.get(r[key_fixed], 0) + 1
            fixed = max(counts, key=lambda v: (counts[v], v))
            sel = sorted((r for r in mine if r[key_fixed] == fixed), key=lambda r: r[key_x])
            for n in names:
                pts = [(r[key_x], r["contenders"][n]["x_roofline"]) for r in sel
                       if n in r["contenders"] and "x_roofline" in r["contenders"][n]]
                if pts:
                    ax.plot(*zip(*pts), label=n, **styles.get(n, {}))
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("time / roofline")
            label = format_count(fixed) + " params" if key_fixed == "size" else f"{fixed} leaves"
            ax.set_title(f"{opt}, {label}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(title)
        save(fig, fname)

    if rows:
        xy_plot("size", "leaves", "update_step_vs_leaves.png", "leaves",
                "Update step time as a multiple of the roofline, against leaf count")
        xy_plot("leaves", "size", "update_step_vs_size.png", "parameters",
                "Update step time as a multiple of the roofline, against size")
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for i, opt in enumerate(optimizers):
            for n, ls in (("jaxupdate", "-"), ("optax", "--")):
                by_leaves = {}
                for r in rows:
                    if r["optimizer"] == opt and n in r["contenders"]:
                        v = r["contenders"][n]["first_call_s"]
                        by_leaves[r["leaves"]] = max(v, by_leaves.get(r["leaves"], 0))
                if by_leaves:
                    xs = sorted(by_leaves)
                    ax.plot(xs, [by_leaves[x] for x in xs], ls=ls, marker="o", color=f"C{i}",
                            label=f"{n} {opt}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("leaves")
        ax.set_ylabel("first call, s (slowest over sizes)")
        ax.set_title("First call (trace + compile + one step)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        save(fig, "first_call.png")

    mem = [x for x in results.get("memory", []) if "ratio" in x]
    if mem:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{x['contender']}\n{x['optimizer']} {format_count(x['size'])}x{x['leaves']}"
                  for x in mem]
        ax.bar(range(len(mem)), [x["ratio"] for x in mem],
               color=[styles.get(x["contender"], {}).get("color", "C9") for x in mem])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.1, color="C3", lw=0.8, ls="--", label="target 1.1x")
        ax.set_xticks(range(len(mem)), labels, fontsize=7)
        ax.set_ylabel("peak / (params + grads + state)")
        ax.set_title("Peak memory of an update step")
        ax.legend(fontsize=8)
        save(fig, "peak_memory.png")

    ts = results.get("train_step")
    if ts and ts.get("results"):
        cols = ["jaxupdate (jax.jit)", "torch eager", "torch eager, fused"]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        width = 0.8 / len(cols)
        for j, k in enumerate(cols):
            vals = [e["contenders"].get(k, {}).get("steps_per_s", 0) for e in ts["results"]]
            ax.bar([i + j * width for i in range(len(vals))], vals, width, label=k,
                   color=["C3", "C2", "C1"][j])
        ax.set_xticks([i + width for i in range(len(ts["results"]))],
                      [e["torch_class"] for e in ts["results"]])
        ax.set_ylabel("steps per second")
        ax.set_title(f"Training step, {ts['model']}, batch {ts['batch']}", fontsize=9)
        ax.legend(fontsize=8)
        save(fig, "train_step.png")
    return written
