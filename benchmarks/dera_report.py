"""The DeRa benchmark's report: a markdown table, a JSON record and a two-panel PNG (``dera_real.py``)."""

from __future__ import annotations

from pathlib import Path

from decoding.run_folder import atomic_file, atomic_write_json, atomic_write_text

COLUMNS = {  # metric -> (header, kind)
    "one_word": ("one-word answers", "pct"),
    "words": ("words per answer", "num"),
    "expected": ("holds the expected word", "pct"),
    "nll_base": ("NLL/token, base (adapter off)", "num"),
    "nll_tuned": ("NLL/token, tuned (adapter on)", "num"),
    "hit_cap": ("hit the token cap", "pct"),
}


def _cell(stat: tuple[float, float, float], kind: str) -> str:
    mean, lo, hi = stat
    if kind == "pct":
        return f"{100 * mean:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def markdown_table(runs: dict) -> str:
    """One row per lambda: mean [95% bootstrap interval] of each metric."""
    lines = [
        "| run | " + " | ".join(h for h, _ in COLUMNS.values()) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for res in runs.values():
        cells = [_cell(res["summary"][k], kind) for k, (_, kind) in COLUMNS.items()]
        lines.append(f"| DeRa λ = {res['lam']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _examples(sweep: dict, questions: list[dict], picks: int = 4) -> str:
    step = max(1, len(questions) // picks)
    lines = []
    named = {f"greedy, {k}": v for k, v in sweep["plain"].items()} | sweep["runs"]
    for i in range(0, len(questions), step)[:picks]:
        lines.append(f"- **{questions[i]['text']}** (expected: {questions[i]['answer']})")
        for name, res in named.items():
            text = " ".join(res["texts"][i].split())
            lines.append(f"  - {name}: {text[:100] + ('…' if len(text) > 100 else '')!r}")
    return "\n".join(lines)


def plot(runs: dict, path: Path) -> None:
    """Two panels against lambda: one-word answers; NLL/token of the answers under base and tuned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(runs.values())
    lams = [r["lam"] for r in runs]

    def series(key: str, scale: float = 1.0):
        mean = [scale * r["summary"][key][0] for r in runs]
        err = [
            [scale * (r["summary"][key][0] - r["summary"][key][1]) for r in runs],
            [scale * (r["summary"][key][2] - r["summary"][key][0]) for r in runs],
        ]
        return mean, err

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=80)
    for ax in (a, b):
        ax.axvspan(0, 1, color="0.92", zorder=0)
        ax.axvline(1, color="0.6", lw=0.8, ls=":")
        ax.set_xlabel("DeRa λ  (0 = base, 1 = tuned, > 1 extrapolates)")
        ax.set_xticks(lams)
        ax.grid(alpha=0.3)
    mean, err = series("one_word", 100)
    a.errorbar(lams, mean, yerr=err, marker="o", capsize=3, color="C0")
    a.set_ylabel("one-word answers (%)")
    a.set_ylim(-5, 105)
    a.set_title("behaviour: one-word answers")
    for key, label, color in (
        ("nll_base", "base (adapter off)", "C3"),
        ("nll_tuned", "tuned (adapter on)", "C2"),
    ):
        mean, err = series(key)
        b.errorbar(lams, mean, yerr=err, marker="o", capsize=3, color=color, label=f"under {label}")
    b.set_ylabel("NLL of the answers (nats/token)")
    b.set_title("likelihood of the greedy answers")
    b.legend(fontsize=9)
    fig.suptitle("SmolLM2-135M-Instruct + one-word LoRA, DeRa sweep (mean, 95% bootstrap CI)", fontsize=11)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


def write_report(out: Path, sweep: dict, meta: dict) -> None:
    """Write the PNG, ``dera_table.md`` and ``dera_table.json`` (last: it marks the sweep finished)."""
    plot(sweep["runs"], out / "dera_real.png")
    prov = meta["provenance"]
    checks = [
        f"- {name}: same tokens as greedy with the {res['same_tokens_as']['run']} on "
        f"{res['same_tokens_as']['prompts']}/{res['same_tokens_as']['of']} prompts"
        for name, res in sweep["runs"].items()
        if "same_tokens_as" in res
    ]
    env = ", ".join(f"{k} {v}" for k, v in prov["environment"].items())
    tr, st = meta["train"], meta["settings"]
    dirty = " (with uncommitted changes)" if prov["git_dirty"] else ""
    md = "\n\n".join(
        [
            "# DeRa on SmolLM2-135M-Instruct with a one-word LoRA",
            f"Command: `{meta['command']}` ({meta['wall_seconds']:.0f} s after argument checks).",
            f"{len(meta['questions'])} held-out questions, greedy, at most {st['max_new_tokens']} new "
            f"tokens; mean [95% bootstrap interval over questions, {st['n_boot']} resamples].",
            markdown_table(sweep["runs"]),
            "End points:\n" + "\n".join(checks),
            f"Adapter: LoRA r={tr['rank']}, alpha={tr['alpha']:g} on {', '.join(tr['targets'])} of the "
            f"last {tr['top_layers']} blocks, {tr['steps']} steps of {tr['train_batch']} on {tr['n_train']} "
            f"training questions, lr {tr['lr']:g}, seed {tr['seed']}, {tr['train_seconds']:.0f} s; final "
            f"training loss {meta['final_train_loss']:.3f}; adapter sha256 `{meta['adapter_sha256']}`.",
            f"Model: `{prov['model']}`, GGUF sha256 `{prov['gguf_sha256']}`, converted model.safetensors "
            f"sha256 `{prov['converted_model_safetensors_sha256']}`; weights: {prov['weights']}. "
            f"Environment: {env}; git commit {prov['git_commit']}{dirty}.",
            "Examples:\n" + _examples(sweep, meta["questions"]),
        ]
    )
    atomic_write_text(out / "dera_table.md", md + "\n")
    record = {
        "meta": meta,
        "runs": {
            name: {
                "lam": res["lam"],
                **{k: dict(zip(("mean", "low", "high"), v)) for k, v in res["summary"].items()},
                **({"same_tokens_as": res["same_tokens_as"]} if "same_tokens_as" in res else {}),
                "per_prompt": res["per_prompt"],
                "texts": res["texts"],
            }
            for name, res in sweep["runs"].items()
        },
        "greedy": {name: res["texts"] for name, res in sweep["plain"].items()},
    }
    atomic_write_json(out / "dera_table.json", record)
