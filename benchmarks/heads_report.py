"""Markdown tables and a PNG of a ``heads_factuality.py`` result (also re-renders a saved results.json).

python benchmarks/heads_report.py runs/heads_smollm2/results.json          # prints the markdown
python benchmarks/heads_report.py runs/heads_smollm2/results.json --png /tmp/heads.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {
    "MC1": "MC1",
    "MC2": "MC2",
    "MC3": "MC3",
    "accuracy": "accuracy",
    "rep4": "rep-4 (lower = less repetition)",
    "distinct2": "distinct-2",
}
TITLES = {"truthfulqa-mc": "TruthfulQA-layout MC", "factor": "FACTOR", "open": "open-ended generation"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(s: dict) -> str:
    return f"{_pct(s['mean'])} [{_pct(s['low'])}, {_pct(s['high'])}]"


def _diff(s: dict) -> str:
    d = s.get("diff")
    if d is None:
        return "—"
    mark = " *" if d["excludes_zero"] else ""
    return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]{mark}"


def _cost(run: dict) -> str:
    return f"{run['s_per_item']:.2f} ({run['cpu_s_per_item']:.2f})"


def _verdicts(summary: dict, metrics: list[str], head: str) -> str:
    parts = []
    for metric in metrics:
        d = summary[metric][head]["diff"]
        side = "higher" if d["mean"] > 0 else "lower"
        parts.append(f"{metric} {'excludes 0 (' + side + ')' if d['excludes_zero'] else 'includes 0'}")
    return "; ".join(parts)


def task_markdown(task: str, res: dict) -> list[str]:
    """The head table of one task, one sentence per head on its difference to greedy, the sweep table."""
    metrics, heads = res["metrics"], res["head_order"]  # run order (results.json sorts its keys)
    n = res["n"]
    lines = [f"## {TITLES.get(task, task)} (`{task}`, n = {n})", ""]
    if task == "open":
        lines.append(
            f"{res['n_prompts']} prompts, {res['max_new_tokens']} new tokens at most, chat template "
            f"{'on' if res['chat_template'] else 'off'}, repetition penalty {res['repetition_penalty']} for "
            f"every head, batch {res['batch']}; {res['dropped_short']} prompt(s) dropped for every head "
            "because one continuation had fewer than 4 tokens. Per-token metrics on token ids."
        )
        lines.append("")
    header = ["head"] + [f"{LABELS[m]} % [95% CI]" for m in metrics] + [f"Δ {m} vs greedy" for m in metrics]
    header += ["s/item (CPU s)"]
    if task == "truthfulqa-mc":
        header.append("MC2 NaN→0")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for h in heads:
        row = [f"`{h}`"] + [_ci(res["summary"][m][h]) for m in metrics]
        row += [_diff(res["summary"][m][h]) for m in metrics] + [_cost(res["heads"][h])]
        if task == "truthfulqa-mc":
            row.append(str(res["heads"][h]["mc2_nan"]))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Heads: " + "; ".join(f"`{h}` = `{res['heads'][h]['head']}`" for h in heads) + "."]
    lines.append("")
    for h in heads[1:]:
        lines.append(f"- `{h}` − greedy (paired bootstrap, 95%): {_verdicts(res['summary'], metrics, h)}.")
    lines.append("")
    sweep = res.get("sweep")
    if sweep:
        lines += [
            f"SLED sweep on the first {sweep['n']} items, one factor at a time around the preset "
            f"`{sweep['preset']}` (Δ against greedy on the same {sweep['n']} items):",
            "",
        ]
        header = ["point"] + [f"{m} %" for m in metrics] + [f"Δ {m}" for m in metrics] + ["s/item (CPU s)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in sweep["order"]:
            p = sweep["points"][name]
            row = [f"`{name}`"] + [_ci(p["summary"][m]) for m in metrics]
            row += [_diff(p["summary"][m]) for m in metrics] + [_cost(p)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def render_markdown(result: dict) -> str:
    """The whole report: provenance, then one section per task."""
    prov, settings = result["provenance"], result["settings"]
    env = prov["environment"]
    lines = [
        f"# Decoding heads on `{prov['model']}`",
        "",
        f"- {prov['weights_note']}.",
        f"- GGUF sha256 `{prov['gguf_sha256']}`; model.safetensors sha256 `{prov['safetensors_sha256']}`.",
        f"- torch {env['torch']}, transformers {env['transformers']}, CPU path {env['cpu_capability']}, "
        f"{env['torch_threads']} torch threads, float32; git `{prov['git_commit']}`"
        f"{' (uncommitted changes)' if prov['git_dirty'] else ''}.",
        f"- `{prov['command']}`",
        f"- TruthfulQA prompt: {settings['prompt']}, scores summed "
        f"{'after log_softmax' if settings['tqa_post_softmax'] else 'raw (the references)'}; "
        f"limit {settings['limit']}; bootstrap "
        f"{settings['n_boot']} resamples (seed {settings['boot_seed']}), percentile intervals over items; "
        "Δ = head − greedy in points on the same resamples, `*` = its 95% interval excludes 0; s/item = "
        "wall seconds per item (process CPU seconds, all threads, in brackets).",
        "",
    ]
    for task in result["settings"]["tasks"]:
        lines += task_markdown(task, result["tasks"][task])
    return "\n".join(lines)


def render_png(result: dict, path: str | Path) -> None:
    """Mean with 95% interval bars per head, one panel per (task, metric); 700 px wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["tasks"]
    panels = [(t, m) for t in result["settings"]["tasks"] for m in tasks[t]["metrics"]]
    cols = 3
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7, 2.5 * rows), dpi=100, squeeze=False)
    for ax, (task, metric) in zip(axes.flat, panels):
        summary = tasks[task]["summary"][metric]
        heads = tasks[task]["head_order"]
        mean = [100 * summary[h]["mean"] for h in heads]
        err = [
            [100 * (summary[h]["mean"] - summary[h]["low"]) for h in heads],
            [100 * (summary[h]["high"] - summary[h]["mean"]) for h in heads],
        ]
        colors = ["0.4" if h == "greedy" else f"C{i}" for i, h in enumerate(heads)]
        for i, h in enumerate(heads):
            ax.errorbar(i, mean[i], yerr=[[err[0][i]], [err[1][i]]], fmt="o", color=colors[i], capsize=4)
        ax.axhline(mean[0], color="0.6", lw=0.8, ls="--")
        ax.set_xticks(range(len(heads)), heads, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(heads) - 0.5)
        ax.tick_params(axis="y", labelsize=8)
        name = {"truthfulqa-mc": "TQA", "factor": "FACTOR", "open": "open"}.get(task, task)
        ax.set_title(f"{name} {metric} (n={summary[heads[0]]['n']})", fontsize=9)
        ax.set_ylabel("%", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{result['provenance']['model']}: mean, 95% bootstrap interval", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results.json written by heads_factuality.py")
    p.add_argument("--png", default=None, help="also draw the figure here")
    args = p.parse_args()
    result = json.loads(Path(args.results).read_text(encoding="utf-8"))
    print(render_markdown(result))
    if args.png:
        render_png(result, args.png)


if __name__ == "__main__":
    main()
