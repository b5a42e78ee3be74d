"""The plot: learning rate, batch size, source shares and loss over the chain's tokens, from each stage's
``logs/metrics.jsonl``, drawn into ``pipeline-<variant>.png``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml


def chain_series(runs: list[tuple[str, Path]]) -> list[dict]:
    """Per stage: its training rows from logs/metrics.jsonl (the last row of each step wins, for a resumed run),
    with x = tokens of the whole chain so far and batch in tokens."""
    out, offset = [], 0
    for name, run_dir in runs:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
        seq_len = cfg.get("seq_len", 1)
        by_step = {}
        f = run_dir / "logs" / "metrics.jsonl"
        for line in (f.read_text().splitlines() if f.is_file() else []):
            row = json.loads(line)
            if "lr" in row:
                by_step[row["step"]] = row
        rows = [by_step[k] for k in sorted(by_step)]
        configured = {}
        if cfg.get("mixture") and rows:  # the configured share at each logged step (ramps included)
            import numpy as np

            from ..data.mixture import parse_mixture

            mixture = parse_mixture(cfg["mixture"])
            # the share of the samples of step s is the weight at their token position (within this stage)
            pos = np.array([r["tokens_seen"] - r["global_batch"] * seq_len / 2 for r in rows], dtype=np.float64)
            w = np.stack([m.at(pos) for m in mixture], axis=1)
            w = w / w.sum(axis=1, keepdims=True)
            configured = {m.name: w[:, j].tolist() for j, m in enumerate(mixture)}
        out.append({"stage": name, "start": offset, "x": [offset + r["tokens_seen"] for r in rows],
                    "configured": configured,
                    "lr": [r["lr"] for r in rows], "batch_tokens": [r["global_batch"] * seq_len for r in rows],
                    "loss": [r.get("loss") for r in rows],
                    "mix": {k[4:]: [r.get(k, 0.0) for r in rows] for k in sorted({k for r in rows for k in r
                                                                                   if k.startswith("mix/")})}})
        offset = out[-1]["x"][-1] if rows else offset
    return out


def plot_chain(runs: list[tuple[str, Path]], out: Path, title: str) -> Path:
    """learning rate, batch size (tokens), source shares (a moving average over ~16 log lines) and loss over the
    chain's tokens, one panel each, stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = chain_series(runs)
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    colours = {}
    for st in series:
        if not st["x"]:
            continue
        axes[0].plot(st["x"], st["lr"], color="tab:blue")
        axes[1].step(st["x"], st["batch_tokens"], where="post", color="tab:green")
        for src, shares in st["mix"].items():
            c = colours.setdefault(src, f"C{len(colours)}")
            k = max(1, min(16, len(shares) // 4))
            smooth = np.convolve(shares, np.ones(k) / k, mode="valid") if len(shares) >= k else np.array(shares)
            axes[2].plot(st["x"], shares, color=c, alpha=0.2, lw=0.8)
            axes[2].plot(st["x"][k - 1:], smooth, color=c, lw=1.8,
                         label=src if src not in axes[2].get_legend_handles_labels()[1] else None)
            if src in st["configured"]:
                axes[2].plot(st["x"], st["configured"][src], color=c, lw=1, ls=":")
        losses = [(x, y) for x, y in zip(st["x"], st["loss"]) if y is not None]
        if losses:
            axes[3].plot(*zip(*losses), color="tab:red", lw=1)
    for ax in axes:
        for st in series:
            ax.axvline(st["start"], color="grey", ls="--", lw=0.8)
    for st in series:
        axes[0].annotate(st["stage"], (st["start"], 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                         textcoords="offset points", fontsize=8, color="grey")
    axes[0].set_ylabel("learning rate")
    axes[1].set_ylabel("batch (tokens)")
    axes[2].set_ylabel("source share\n(read; dotted: configured)")
    axes[2].set_ylim(-0.02, 1.02)
    if colours:
        axes[2].legend(loc="center left", fontsize=8)
    axes[3].set_ylabel("train loss")
    axes[3].set_xlabel("tokens, whole chain")
    axes[0].set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out
