"""The two pictures of a run, drawn from ``metrics.jsonl`` alone (so they can be
redrawn for any run, resumed or not)."""

from __future__ import annotations

import json
from pathlib import Path

from mama_augment.train.runs import RunPaths


def read_metrics(path: Path) -> list[dict]:
    rows = []
    if not path.exists():
        return rows
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
    return rows


def draw(run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = RunPaths(Path(run_dir))
    rows = read_metrics(paths.metrics)
    steps = [r for r in rows if r.get("kind") == "step"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    curves = [r for r in rows if r.get("kind") == "curve"]
    written = []

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    ax = axes[0][0]
    if steps:
        x = [r["step"] for r in steps]
        ax.plot(x, [r["loss"] for r in steps], label="train loss (weighted)")
        ax.plot(x, [r["loss_unweighted"] for r in steps], label="train loss (plain)", alpha=0.7)
        meta = [(r["step"], r["meta_loss"]) for r in steps if r.get("meta_loss") is not None]
        if meta:
            ax.plot(*zip(*meta), label="meta loss", alpha=0.7)
    ax.set_title("losses")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    if steps:
        ax.plot([r["step"] for r in steps], [r["logit_scale"] for r in steps])
    ax.set_title("logit scale exp(s)")
    ax.set_xlabel("step")
    ax = axes[1][0]
    weighted = [r for r in steps if r.get("weight_mean") is not None]
    if weighted:
        x = [r["step"] for r in weighted]
        ax.plot(x, [r["weight_mean"] for r in weighted], label="raw weight mean")
        ax.fill_between(x, [r["weight_min"] for r in weighted], [r["weight_max"] for r in weighted], alpha=0.2, label="min-max")
        ax.plot(x, [r["weight_norm_std"] for r in weighted], label="normalised weight std")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no meta-weighting", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("sample weights")
    ax.set_xlabel("step")
    ax = axes[1][1]
    if evals:
        ax.plot([r["step"] for r in evals], [r["t2v_R@1"] for r in evals], marker="o", label="text->video")
        ax.plot([r["step"] for r in evals], [r["v2t_R@1"] for r in evals], marker="o", label="video->text")
        ax.legend(fontsize=8)
    else:  # an empty panel would read as a plot that failed to draw
        ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("validation R@1 (%)")
    ax.set_xlabel("step")
    fig.tight_layout()
    path = paths.training_plot
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)

    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        cmap = plt.get_cmap("viridis")
        for k, row in enumerate(curves):
            colour = cmap(k / max(1, len(curves) - 1))
            ax.plot(row["loss_grid"], row["weight"], color=colour, label=f"step {row['step']}")
            if row.get("loss_p5") is not None:
                ax.axvspan(row["loss_p5"], row["loss_p95"], color=colour, alpha=0.05)
        ax.set_xlabel("per-sample loss l")
        ax.set_ylabel("weight V(l; phi)")
        ax.set_title("learned loss -> weight function (shade: 5-95% of batch losses)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = paths.loss_weight_plot
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
