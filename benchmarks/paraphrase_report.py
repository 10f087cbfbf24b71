"""Tables, CSV and figure of ``benchmarks/paraphrase_routing.py`` (one result dict in, files out)."""

from __future__ import annotations

import csv
from pathlib import Path

from decoding.run_folder import atomic_file

COLUMNS = ("backbone", "layer", "pooling", "norm", "template", "recall", "ip_recall1", "ip_recall8",
           "expert_overlap", "dist_ratio")  # fmt: skip
HEAT_NORMS = ("raw", "centre", "whiten")


def _short(name: str) -> str:
    if name.startswith("smollm2"):
        return "SmolLM2-135M"
    return "tiny" if name.startswith("tiny:") else name


def _rows(backbone: dict, key: str = "rows") -> list[dict]:
    return [{"backbone": backbone["backbone"], **r} for r in backbone[key]]


def write_csv(result: dict, sweep_path: Path, scale_path: Path) -> None:
    """Every sweep row to ``sweep_path`` and every scaling row to ``scale_path`` (4 decimals)."""
    for path, key in ((sweep_path, "rows"), (scale_path, "scale")):
        with atomic_file(path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            for backbone in result["backbones"]:
                for row in _rows(backbone, key):
                    writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})


def _mean_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["template"] == "mean"]


def _best(rows: list[dict], oracle: bool = True, **where) -> dict:
    """The best ``mean`` row among those matching ``where``; ``oracle=False`` leaves out entity pooling."""
    pick = [
        r
        for r in _mean_rows(rows)
        if all(r[k] == v for k, v in where.items()) and (oracle or r["pooling"] != "entity")
    ]
    return max(pick, key=lambda r: (r["recall"], r["ip_recall1"], -r["layer"]))


def _templates(rows: list[dict], layer: int, pooling: str, norm: str) -> dict[str, dict]:
    return {
        r["template"]: r
        for r in rows
        if (r["layer"], r["pooling"], r["norm"]) == (layer, pooling, norm) and r["template"] != "mean"
    }


def _fmt(x: float) -> str:
    return "–" if x != x else f"{x:.2f}"  # NaN -> dash


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body] + [""]


METRIC_HEAD = ["recall", "ip recall@1", "ip recall@8", "expert overlap", "dist ratio"]
LAYER_COLS = [("mean", "raw"), ("mean", "centre"), ("mean", "whiten"), ("mean_q", "centre"),
              ("entity", "centre"), ("last", "centre"), ("max", "centre")]  # fmt: skip


def _metrics(r: dict) -> list[str]:
    return [_fmt(r[m]) for m in ("recall", "ip_recall1", "ip_recall8", "expert_overlap", "dist_ratio")]


def _cell(rows: list[dict], setting: tuple[int, str, str]) -> dict:
    return _best(rows, layer=setting[0], pooling=setting[1], norm=setting[2])


def render_markdown(result: dict) -> str:
    """Best settings, per-template recall, per-norm and per-pooling bests, the scaling check."""
    s, env = result["settings"], result["environment"]
    lines = [
        "# Paraphrase routing probe",
        "",
        f"Command: `{result['command']}`; commit {result['git_commit']}; torch {env['torch']}, "
        f"transformers {env['transformers']}, {env['cpu_capability']}, {s['threads']} thread(s). "
        f"{s['facts']} random facts (seed {s['seed']}); query projection d_k {s['key_dim']}; "
        f"{s['experts']} random expert keys, k {s['k']}.",
        "",
    ]
    for b in result["backbones"]:
        rows, prov, name = b["rows"], b["provenance"], _short(b["backbone"])
        gguf = f"; GGUF {prov['gguf_file']} sha256 `{prov['gguf_sha256']}`" if prov["gguf_sha256"] else ""
        lines += [
            f"## {name} (`{b['backbone']}`, {b['num_layers']} blocks, hidden {b['hidden_size']})",
            "",
            f"Weights: model.safetensors sha256 `{prov['safetensors_sha256']}`{gguf}.",
            "",
            "Best (layer, pooling) per normalisation (mean over templates):",
            "",
        ]
        norms = list(dict.fromkeys(r["norm"] for r in rows))
        for oracle in (True, False):
            body = [
                [n, str(r["layer"]), r["pooling"], *_metrics(r)]
                for n in norms
                for r in [_best(rows, oracle, norm=n)]
            ]
            if not oracle:
                lines += [
                    "The same without entity pooling (a router does not know a user question's entity):",
                    "",
                ]
            lines += _table(["norm", "layer", "pooling", *METRIC_HEAD], body)
        lines += ["Best layer per pooling, centred and whitened (mean recall):", ""]
        body = []
        for p in dict.fromkeys(r["pooling"] for r in rows):
            c, w = _best(rows, pooling=p, norm="centre"), _best(rows, pooling=p, norm="whiten")
            body.append([p, f"{c['layer']}, {_fmt(c['recall'])}", f"{w['layer']}, {_fmt(w['recall'])}"])
        lines += _table(["pooling", "centre: layer, recall", "whiten: layer, recall"], body)
        picks = [_best(rows, oracle=o, **w) for o in (True, False) for w in ({}, {"norm": "whiten"})]
        settings = [(r["layer"], r["pooling"], r["norm"]) for r in picks]
        plain = picks[2]
        settings = list(dict.fromkeys([*settings, (plain["layer"], "mean", "whiten")]))  # today's pooling
        lines += ["Per-template recall (cosine nearest original) at the best settings:", ""]
        per = [_templates(rows, *st) for st in settings]
        body = [[t, *(_fmt(p[t]["recall"]) for p in per)] for t in b["templates"]]
        body.append(["**mean**", *(_fmt(_cell(rows, st)["recall"]) for st in settings)])
        lines += _table(["template", *(f"L{layer} {p}/{n}" for layer, p, n in settings)], body)
        lines += ["Mean recall per layer (pooling/norm):", ""]
        body = [[str(layer), *(_fmt(_cell(rows, (layer, p, n))["recall"]) for p, n in LAYER_COLS)]
                for layer in range(b["num_layers"] + 1)]  # fmt: skip
        lines += _table(["layer", *(f"{p}/{n}" for p, n in LAYER_COLS)], body)
        if b["scale"]:
            lines += [f"Scaling: {s['scale_facts']} facts (same seed; keys = the originals' queries):", ""]
            body = [[str(r["layer"]), r["pooling"], r["norm"], *_metrics(r),
                     _fmt(_cell(rows, (r["layer"], r["pooling"], r["norm"]))["recall"])]
                    for r in _mean_rows(b["scale"])]  # fmt: skip
            lines += _table(["layer", "pooling", "norm", *METRIC_HEAD, f"recall at {s['facts']}"], body)
    return "\n".join(lines)


def render_png(result: dict, path: str | Path) -> None:
    """Per backbone: heat maps pooling x layer of the mean recall (raw, centred, whitened), and the
    per-template recall across layers at the best (pooling, norm) without entity pooling. 800 px wide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    backbones = result["backbones"]
    fig = plt.figure(figsize=(8, 5.6 * len(backbones)), dpi=100)
    grid = fig.add_gridspec(2 * len(backbones), len(HEAT_NORMS), height_ratios=[1, 1.2] * len(backbones),
                            hspace=0.75, wspace=0.3, left=0.1, right=0.92, top=0.95, bottom=0.07)  # fmt: skip
    for i, b in enumerate(backbones):
        rows, layers, name = b["rows"], list(range(b["num_layers"] + 1)), _short(b["backbone"])
        poolings = list(dict.fromkeys(r["pooling"] for r in rows))
        step = 1 if len(layers) <= 12 else 6
        heat_axes = []
        for j, norm in enumerate(HEAT_NORMS):
            ax = fig.add_subplot(grid[2 * i, j])
            heat_axes.append(ax)
            heat = np.array(
                [
                    [_best(rows, layer=layer, pooling=p, norm=norm)["recall"] for layer in layers]
                    for p in poolings
                ]
            )  # fmt: skip  (pooling, layer)
            image = ax.imshow(heat, vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest")
            ax.set_yticks(range(len(poolings)), poolings if j == 0 else [""] * len(poolings), fontsize=8)
            ax.set_xticks(layers[::step], [str(x) for x in layers[::step]], fontsize=8)
            ax.set_xlabel("layer", fontsize=8)
            ax.set_title(f"{name}: {norm}", fontsize=9)
        fig.colorbar(image, ax=heat_axes, fraction=0.03, pad=0.02).set_label("mean recall@1", fontsize=8)
        best = _best(rows, oracle=False)
        ax = fig.add_subplot(grid[2 * i + 1, :])
        for t in b["templates"]:
            ys = [_templates(rows, layer, best["pooling"], best["norm"])[t]["recall"] for layer in layers]
            ax.plot(layers, ys, marker=".", lw=1.2, label=t)
        ax.axvline(best["layer"], color="0.5", lw=0.8, ls="--")
        ax.set_ylim(0, 1.02)
        ax.set_xticks(layers[:: 1 if len(layers) <= 12 else 2])
        ax.set_xlabel("layer (hidden_states[l], the input of block l)", fontsize=8)
        ax.set_ylabel("recall@1", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(
            f"{name}, per template: {best['pooling']} pooling, {best['norm']} (best without entity "
            f"pooling: layer {best['layer']}, mean {best['recall']:.2f})",
            fontsize=9,
        )
        ax.legend(fontsize=7, ncol=len(b["templates"]), loc="upper center", bbox_to_anchor=(0.5, -0.22),
                  frameon=False, handlelength=1.2, columnspacing=0.8)  # fmt: skip
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
