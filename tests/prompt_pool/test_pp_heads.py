"""Decoding heads on the classifier: per-layer class logits, one accuracy matrix per head, checks first."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from decoding.errors import UserError
from decoding.head_spec import parse_head_spec
from prompt_pool.baselines import FineTune
from prompt_pool.cli import main
from prompt_pool.data_config import LoaderConfig, SourceConfig, SplitConfig
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.heads import head_predictions, head_slug, parse_eval_heads
from prompt_pool.l2p import L2P
from prompt_pool.pool import PoolConfig
from prompt_pool.runner import RunnerConfig, TaskSequenceRunner, check_learner_fits


class Kill(L.Callback):
    """Simulates a killed process in the middle of a given task."""

    def __init__(self, task: int) -> None:
        self.task = task

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.task == self.task and batch_idx == 1:
            raise RuntimeError("killed")


# SLED's default evolution_scale (10) is more than the 6 classes of the stream
HEADS = [
    "greedy",
    "sled:evolution_scale=4",
    "dola:dola_layers=low",
    "dera:lam=2",
    "dera:lam=0.5,head=sled,evolution_scale=6",
]


def _dm(setting: str = "class") -> TaskSequenceDataModule:
    return TaskSequenceDataModule(
        "synthetic",
        source=SourceConfig(synthetic_classes=6),
        split=SplitConfig(setting=setting, num_tasks=3),
        loader=LoaderConfig(batch_size=8),
    )


def _l2p(kw: dict, eval_heads: list[str] | None = None, num_classes: int = 6) -> L2P:
    return L2P(
        num_classes=num_classes,
        backbone_kwargs=kw,
        pool=PoolConfig(pool_size=6, prompt_length=2, top_n=2),
        batch_size=8,
        lr_reference_batch=8,
        seed=0,
        eval_heads=eval_heads,
    )


def test_layer_logits_end_with_the_logits_bit_for_bit(tiny_vit_kwargs):
    dm = _dm()
    x, _, uid = next(iter(dm.train_loader(0)))
    for m in (_l2p(tiny_vit_kwargs), FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs)):
        m.head.weight.data.normal_()  # a non-zero head: rows differ between layers
        m.eval()
        layers = m.layer_logits(x, uid)
        assert layers.early.shape == (2, x.shape[0], 6) and layers.num_layers == 2
        assert torch.equal(layers.mature, m.logits(x, uid)[0])  # greedy == today's argmax, exactly
        assert not torch.allclose(layers.early[0], layers.early[1])
    assert m.pool.task_counts.sum() == 0 if hasattr(m, "pool") else True


def test_l2p_reference_is_the_prompt_free_model(tiny_vit_kwargs):
    m = _l2p(tiny_vit_kwargs).eval()
    m.head.weight.data.normal_()
    x, _, uid = next(iter(_dm().train_loader(0)))
    ref = m.reference_layer_logits(x, uid)
    plain = m.backbone.layer_features(x, None, "cls")  # (N + 1, B, D), no prompts
    assert torch.allclose(ref.mature, m.head(plain[-1]), atol=1e-6)
    assert torch.allclose(ref.early, m.head(plain[:-1]), atol=1e-6)
    assert m.reference_layer_logits(x, uid, early=False).early.shape[0] == 0
    # DeRa's end points: lam = 1 is the prompted model, lam = 0 the prompt-free one
    heads = parse_eval_heads(["greedy", "dera:lam=1", "dera:lam=0"])
    preds = head_predictions(
        heads, m.layer_logits(x, uid), lambda e: m.reference_layer_logits(x, uid, e), None
    )
    assert torch.equal(preds["dera:lam=1"], preds["greedy"])
    assert torch.equal(preds["dera:lam=0"], ref.mature.argmax(-1))


def test_heads_choose_among_the_evaluated_classes_only(tiny_vit_kwargs):
    m = _l2p(tiny_vit_kwargs).eval()
    m.head.weight.data.normal_()
    x, _, uid = next(iter(_dm().train_loader(0)))
    layers = m.layer_logits(x, uid)
    ref = lambda e: m.reference_layer_logits(x, uid, e)  # noqa: E731
    preds = head_predictions(parse_eval_heads(HEADS[:1] + ["sled:evolution_scale=2"]), layers, ref, [4, 1])
    for p in preds.values():
        assert set(p.tolist()) <= {1, 4}
    masked = m.mask_logits(layers.mature, [4, 1]).argmax(-1)
    assert torch.equal(preds["greedy"], masked)


def test_one_matrix_per_head_and_greedy_reproduces_todays_matrix(tmp_path, tiny_vit_kwargs, make_trainer):
    dm = _dm()
    plain = TaskSequenceRunner(RunnerConfig(out_dir=str(tmp_path / "plain")), lambda: make_trainer(1)).run(
        _l2p(tiny_vit_kwargs), dm
    )
    out = tmp_path / "heads"
    r = TaskSequenceRunner(RunnerConfig(out_dir=str(out)), lambda: make_trainer(1)).run(
        _l2p(tiny_vit_kwargs, HEADS), _dm()
    )
    assert torch.equal(r.correct, plain.correct) and torch.equal(r.baseline, plain.baseline)
    assert r.metrics == plain.metrics
    assert list(r.heads) == HEADS
    assert torch.equal(r.heads["greedy"].correct, plain.correct)
    assert r.heads["greedy"].metrics == plain.metrics
    for spec, hr in r.heads.items():
        assert hr.accuracy.shape == (3, 3) and not torch.isnan(hr.accuracy).any()
        assert hr.baseline is not None and "forgetting" in hr.metrics
        assert (out / "heads" / head_slug(spec) / "accuracy_matrix.csv").exists()
        assert (out / "heads" / head_slug(spec) / "accuracy_matrix.png").stat().st_size > 0
        saved = json.loads((out / "heads" / head_slug(spec) / "results.json").read_text())
        assert saved["head"] == spec and saved["accuracy_matrix"] == hr.accuracy.tolist()
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == pytest.approx(plain.metrics, nan_ok=True)
    assert saved["heads"][HEADS[1]]["metrics"] == pytest.approx(r.heads[HEADS[1]].metrics, nan_ok=True)
    assert (out / "accuracy_matrix.csv").read_text() == (
        tmp_path / "plain" / "accuracy_matrix.csv"
    ).read_text()


def test_a_killed_run_resumes_every_head_matrix(tmp_path, tiny_vit_kwargs, make_trainer):
    heads = ["sled:evolution_scale=3", "dera:lam=2"]
    ref = TaskSequenceRunner(RunnerConfig(out_dir=str(tmp_path / "ref")), lambda: make_trainer(2)).run(
        _l2p(tiny_vit_kwargs, heads), _dm()
    )
    cfg = RunnerConfig(out_dir=str(tmp_path / "killed"), plots=False)
    with pytest.raises(RuntimeError, match="killed"):
        TaskSequenceRunner(cfg, lambda: make_trainer(2, callbacks=[Kill(1)])).run(
            _l2p(tiny_vit_kwargs, heads), _dm()
        )
    res = TaskSequenceRunner(replace(cfg, resume=True), lambda: make_trainer(2)).run(
        _l2p(tiny_vit_kwargs, heads), _dm()
    )
    for spec in heads:
        assert torch.equal(res.heads[spec].correct, ref.heads[spec].correct)
        assert torch.equal(res.heads[spec].baseline, ref.heads[spec].baseline)


def test_head_metrics_are_logged_under_the_head_name(tmp_path, tiny_vit_kwargs, make_trainer):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path / "logs", name="", version="")
    cfg = RunnerConfig(out_dir=str(tmp_path / "run"), plots=False)
    res = TaskSequenceRunner(cfg, lambda: make_trainer(1, logger=logger)).run(
        _l2p(tiny_vit_kwargs, ["sled"], num_classes=10),
        _dm(),  # SLED's default k = 10 classes
    )
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    final = next(row for row in rows if row.get("cl/final/sled/forgetting"))
    assert float(final["cl/final/sled/average_accuracy"]) == pytest.approx(
        res.heads["sled"].metrics["average_accuracy"]
    )
    assert float(final["cl/final/average_accuracy"]) == pytest.approx(res.metrics["average_accuracy"])
    assert any(row.get("cl/sled/acc_task2") for row in rows)


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        (["nucleus"], r"eval_heads entry 'nucleus' is not a decoding head.*unknown head"),
        (["dera:lam=-1"], r"eval_heads entry 'dera:lam=-1'.*lam=-1"),
        (["sled:rate=2"], r"unknown option 'rate'"),
        (["sled", " sled"], r"same head"),
        (["dola:dola_layers=0,5"], r"dola_layers \[5\] are out of range"),
        (
            ["sled:evolution_scale=7"],
            r"evolution_scale=7 exceeds the 6 classes of one evaluation; write evolution_scale=6",
        ),
    ],
)
def test_bad_heads_are_refused_before_the_model_is_built(tiny_vit_kwargs, specs, match):
    with pytest.raises(UserError, match=match) as err:
        _l2p(tiny_vit_kwargs, specs)
    assert "\n" not in str(err.value)


def test_dera_needs_a_reference_and_sled_fits_the_task_classes(tiny_vit_kwargs):
    with pytest.raises(UserError, match="DeRa needs a reference model and FineTune has none"):
        FineTune(num_classes=6, backbone_kwargs=tiny_vit_kwargs, eval_heads=["dera:lam=2"])
    m = _l2p(tiny_vit_kwargs, ["sled:evolution_scale=3"])
    check_learner_fits(m, _dm("class"))  # 6 classes per evaluation
    with pytest.raises(UserError, match=r"evolution_scale=3 exceeds the 2 classes"):
        check_learner_fits(m, _dm("task"))  # 2 classes per task


def test_head_slugs_are_file_names():
    assert head_slug("dola:dola_layers=0,2") == "dola-dola_layers=0-2"
    assert head_slug("dera:lam=2,head=sled") == "dera-lam=2-head=sled"
    assert parse_eval_heads(None) == {} and type(parse_eval_heads(["sled"])["sled"]) is type(
        parse_head_spec("sled")
    )


def test_the_heads_overlay_parses_on_top_of_split_digits(capsys):
    cfg = Path(__file__).resolve().parents[2] / "configs" / "prompt_pool"
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(cfg / "split_digits.yaml"),
                "--config",
                str(cfg / "heads.yaml"),
                "--print_config",
            ]
        )
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["class_path"] == "prompt_pool.l2p.L2P" and model["init_args"]["head_type"] == "cls"
    assert model["init_args"]["eval_heads"][:3] == ["greedy", "sled", "dola"]
    parse_eval_heads(model["init_args"]["eval_heads"])


def test_fit_with_eval_heads_from_the_cli(tmp_path, capsys, base_args):
    out = tmp_path / "run"
    main(base_args(out) + ["--model.init_args.eval_heads", '["sled:evolution_scale=4", "dera:lam=2"]'])
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.index("{") : printed.rindex("}") + 1])
    saved = json.loads((out / "results.json").read_text())
    assert metrics["average_accuracy"] == pytest.approx(saved["metrics"]["average_accuracy"])
    assert metrics["heads"]["dera:lam=2"]["average_accuracy"] == pytest.approx(
        saved["heads"]["dera:lam=2"]["metrics"]["average_accuracy"]
    )
    assert (out / "heads" / "sled-evolution_scale=4" / "accuracy_matrix.csv").exists()
    assert json.loads((out / "run_config.json").read_text())["model.init_args.eval_heads"] == [
        "sled:evolution_scale=4",
        "dera:lam=2",
    ]
