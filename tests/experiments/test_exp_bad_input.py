"""Bad input to the studies ends before any work: exit != 0, one stderr line naming the value, no traceback,
and nothing written (the output root stays empty, an existing run folder byte for byte the same)."""

from __future__ import annotations

import pytest

from experiments import hallucination_vs_loss, random_labels
from experiments.study_cli import config_dict, parse_study_args
from experiments.study_folder import open_run_dir

RL = ["--config", "configs/experiments/random_labels.yaml", "--quick"]
HVL = ["--config", "configs/experiments/hallucination_vs_loss.yaml", "--quick"]


@pytest.fixture(autouse=True)
def _no_work(monkeypatch):
    """Any start of real work fails the test at once (instead of pretraining for minutes)."""

    def work(*args, **kwargs):
        raise AssertionError("work started: the bad setting was not refused up front")

    for study in (random_labels, hallucination_vs_loss):
        monkeypatch.setattr(study, "pretrain_base", work)
        monkeypatch.setattr(study, "run_cell", work)


def files_under(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(study, argv: list[str], capsys) -> tuple[int, str]:
    """Run ``study.main(argv)``; return (exit code, stderr) after checking the one-line contract."""
    with pytest.raises(SystemExit) as exc:
        study.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exc.value.code not in (0, None)
    assert len(lines) == 1 and "Traceback" not in err, err
    return exc.value.code, lines[0]


@pytest.mark.parametrize(
    "study, args, names",
    [
        (random_labels, ["--num_train", "0"], "num_train=0"),  # --quick must not override it
        (random_labels, ["--num_heldout", "-1"], "num_heldout=-1"),
        (random_labels, ["--fractions", "[0.0, 1.5]"], "got 1.5"),
        (random_labels, ["--methods", "[full, ewc]"], "unknown method 'ewc'"),
        (random_labels, ["--image.methods", "[mome]"], "unknown image method 'mome'"),
        (random_labels, ["--image.num_train", "5000"], "image.num_train=5000"),
        (random_labels, ["--image.lr", "0"], "image.lr=0"),
        (random_labels, ["--code_len", "1"], "code_len=1"),
        (random_labels, ["--base.backbone", "/nonexistent/model"], "'/nonexistent/model' does not exist"),
        (random_labels, ["--base.backbone", "tiny:llama?depth=3"], "'depth'"),
        (random_labels, ["--base.pretrain_epochs", "0"], "base.pretrain_epochs=0"),
        (random_labels, ["--train.max_epochs", "0"], "train.max_epochs=0"),
        (random_labels, ["--train.accelerator", "tpu"], "'tpu'"),
        (random_labels, ["--train.method_options", "{full: {lrr: 1}}"], "['lrr']"),
        (random_labels, ["--train.method_options", "{lora: {lr: -1}}"], "lora.lr=-1"),
        (random_labels, ["--run", "a/b"], "run='a/b'"),
        (random_labels, ["--resume", "--overwrite"], "not both"),
        (random_labels, ["--resume"], "holds no run to resume"),
        (random_labels, ["--nope", "3"], "--nope"),
        (hallucination_vs_loss, ["--num_facts", "0"], "num_facts=0"),
        (hallucination_vs_loss, ["--train.heads", "[beam]"], "unknown head 'beam'"),
        (
            hallucination_vs_loss,
            ["--train.heads", "[dola:dola_layers=99]"],
            "dola_layers [99] are out of range",
        ),
        (
            hallucination_vs_loss,
            ["--train.heads", '["dola:dola_layers=0,2"]'],
            "dola_layers [2] are out of range",
        ),
        (hallucination_vs_loss, ["--train.heads", "[dera:lam=abc]"], "lam='abc'"),
        (hallucination_vs_loss, ["--train.heads", "[dera:lam=-1]"], "lam=-1.0 must be >= 0"),
        (hallucination_vs_loss, ["--train.heads", "[sled:evolution_scale=100000]"], "evolution_scale=100000"),
        (hallucination_vs_loss, ["--train.heads", "[sled:alpha=2]"], "unknown option 'alpha'"),
        (
            hallucination_vs_loss,
            ["--train.method_options", "{mome: {mome: {k: 0}}}"],
            "train.method_options.mome",
        ),
    ],
)
def test_bad_setting_is_refused_before_any_work(study, args, names, tmp_path, capsys):
    if args[:2] == ["--train.heads", '["dola:dola_layers=0,2"]']:
        args = [*args, "--base.backbone", "tiny:llama?layers=1"]  # 1 block: id 2 is beyond the mature layer
    code, line = refused(
        study, [*(RL if study is random_labels else HVL), "--output_root", str(tmp_path), *args], capsys
    )
    assert names in line
    assert line.startswith(f"{study.PROG}: error:")
    assert list(tmp_path.iterdir()) == []


def test_missing_config_file_is_one_line(tmp_path, capsys):
    code, line = refused(random_labels, ["--config", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml" in line


@pytest.mark.parametrize(
    "extra, message", [([], "already holds a finished run"), (["--seed", "5"], "(seed)")]
)
def test_existing_run_folder_is_refused_and_left_as_it_was(tmp_path, capsys, extra, message):
    args = [*RL, "--output_root", str(tmp_path), "--wandb", "false"]
    cfg, _ = parse_study_args(random_labels.RandomLabelsConfig, args, "t", "prog")
    root = open_run_dir(tmp_path / "random_labels" / cfg.run, config_dict(cfg), False, False)
    (root / "results.json").write_text('{"status": "finished"}')
    before = files_under(tmp_path)
    _, line = refused(random_labels, [*args, *extra], capsys)
    assert message in line and "--overwrite" in line
    assert files_under(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="num_train=0"):
        random_labels.main([*RL, "--output_root", str(tmp_path), "--num_train", "0", "--debug"])
