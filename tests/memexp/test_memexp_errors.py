"""Bad input to ``memexp fit`` ends with one stderr line that names the value, before any work starts.

Every case runs the real command line in-process (``memexp.cli.main``) and checks: exit code != 0, exactly
one ``memexp: error:`` line on stderr (besides Lightning's "Seed set to" line and the model-loading
progress bar, printed before any check can run), no traceback, the expected words, and an untouched run
folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from memexp_helpers import QUICK_MODEL, quick_trainer

from decoding.errors import UserError
from decoding.models import resolve_model_path
from memexp.cli import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "memexp" / "demo.yaml")
MOME = str(ROOT / "configs" / "memexp" / "mome_demo.yaml")
QUICK = [f"--model.init_args.backbone={QUICK_MODEL}", "--data.init_args.num_random_facts=8"]
LORA = ["--model.init_args.method=lora"]
NOISE = re.compile(  # Lightning's start-up lines and the model-loading progress bar, printed before any check
    r"^(Restoring states from the checkpoint path at .*|.*Loading weights.*"
    r"|[GT]PU available: .*|💡 Tip: .*)$"
)

FACT_FILES = {  # name -> bytes
    "good.jsonl": b'{"question": "q1?", "answer": "AB"}\n{"question": "q2?", "answer": "CD"}\n',
    "empty.jsonl": b"\n\n",
    "badjson.jsonl": b'{"question": "q1?", "answer": "AB"}\n{"question": "q2?", "answer": \n',
    "latin1.jsonl": b'{"question": "q1?", "answer": "AB"}\n{"question": "caf\xe9?", "answer": "CD"}\n',
    "conflict.jsonl": (
        b'{"question": "q1?", "answer": "AB"}\n{"question": "q2?", "answer": "CD"}\n'
        b'{"question": "q1?", "answer": "EF"}\n'
    ),
    "nolist.jsonl": b'["q1?", "AB"]\n',
}


def write_checkpoints(folder: Path) -> None:
    """Checkpoint files that ``--ckpt_path`` must refuse."""
    folder.mkdir(exist_ok=True)
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "text.ckpt").write_text("not a checkpoint\n")
    torch.save({"state_dict": {}, "epoch": 3}, folder / "foreign.ckpt")
    lightning = {"state_dict": {}, "epoch": 3, "global_step": 9, "pytorch-lightning_version": "2.6.0"}
    torch.save(lightning, folder / "no_record.ckpt")
    identity = {"module": "memexp.fact_tuning.FactTuning", "backbone": "tiny:gpt2", "method": "full"}
    torch.save({**lightning, "memexp": identity}, folder / "other_run.ckpt")
    torch.save({"state_dict": {}, "obj": Path("x")}, folder / "pickled.ckpt")  # needs unpickling
    data = (folder / "other_run.ckpt").read_bytes()
    (folder / "cut.ckpt").write_bytes(data[: len(data) // 2])


CASES = [  # id, config, extra arguments ({d}: folder with the fact files and checkpoints), expected words
    # --- the model (memexp.fact_tuning.FactTuning)
    ("lora_r 0", DEMO, [*LORA, "--model.init_args.lora_r=0"], ["lora_r=0", ">= 1"]),
    ("lora_alpha < 0", DEMO, [*LORA, "--model.init_args.lora_alpha=-1"], ["lora_alpha=-1.0", "> 0"]),
    ("lora_dropout 1.5", DEMO, [*LORA, "--model.init_args.lora_dropout=1.5"], ["lora_dropout=1.5", "[0, 1)"]),
    ("lora targets none match", DEMO, [*LORA, "--model.init_args.lora_targets=[qkv]"], ["['qkv']", "q_proj"]),
    ("lora targets, full", DEMO, ["--model.init_args.lora_targets=[q_proj]"], ["lora_targets", "full"]),
    ("unknown method", DEMO, ["--model.init_args.method=qlora"], ["method", "qlora", "'full', 'lora'"]),
    ("lr 0", DEMO, ["--model.init_args.lr=0"], ["lr=0.0", "> 0"]),
    ("lr < 0", DEMO, ["--model.init_args.lr=-0.001"], ["lr=-0.001", "> 0"]),
    ("lr nan", DEMO, ["--model.init_args.lr=nan"], ["lr", "nan"]),
    ("weight_decay < 0", DEMO, ["--model.init_args.weight_decay=-1"], ["weight_decay=-1.0", ">= 0"]),
    ("dtype typo", DEMO, ["--model.init_args.dtype=bfloat61"], ["'bfloat61'", "bfloat16"]),
    ("unknown head", DEMO, ["--model.init_args.eval_heads=[beam]"], ["'beam'", "greedy, dola, sled, dera"]),
    ("head option", DEMO, ["--model.init_args.eval_heads=[dola:8]"], ["'dola:8'", "key=value"]),
    ("head bad key", DEMO, ["--model.init_args.eval_heads=[sled:nosuch=1]"], ["'sled:nosuch=1'", "nosuch"]),
    ("unknown tiny backbone", DEMO, ["--model.init_args.backbone=tiny:llamma"], ["'tiny:llamma'", "'llama'"]),
    ("missing backbone folder", DEMO, ["--model.init_args.backbone=./no/such/model"], ["'./no/such/model'"]),
    # --- the data (memexp.data.FactsDataModule)
    ("batch_size 0", DEMO, ["--data.init_args.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    ("eval_batch_size 0", DEMO, ["--data.init_args.eval_batch_size=0"], ["data.eval_batch_size=0"]),
    ("num_random_facts < 0", DEMO, ["--data.init_args.num_random_facts=-1"], ["num_random_facts=-1"]),
    ("no random facts", DEMO, ["--data.init_args.num_random_facts=0"], ["num_random_facts=0", "facts_path"]),
    ("num_heldout < 0", DEMO, ["--data.init_args.num_heldout=-2"], ["data.num_heldout=-2"]),
    ("answer lengths", DEMO, ["--data.init_args.answer_max_len=4"], ["answer_max_len=4", "answer_min_len=8"]),
    ("template lacks field", DEMO, ["--data.init_args.template=Q: A:"], ["'Q: A:'", "{question}"]),
    ("template other field", DEMO, ["--data.init_args.template=Question {q}"], ["'Question {q}'", "['q']"]),
    ("facts missing", DEMO, ["--data.init_args.facts_path={d}/none.jsonl"], ["none.jsonl does not exist"]),
    ("facts empty", DEMO, ["--data.init_args.facts_path={d}/empty.jsonl"], ["empty.jsonl holds no facts"]),
    ("facts bad JSON", DEMO, ["--data.init_args.facts_path={d}/badjson.jsonl"], ["badjson.jsonl:2", "JSON"]),
    ("facts not UTF-8", DEMO, ["--data.init_args.facts_path={d}/latin1.jsonl"], ["latin1.jsonl:2", "UTF-8"]),
    (
        "facts conflicting question",
        DEMO,
        ["--data.init_args.facts_path={d}/conflict.jsonl"],
        ["conflict.jsonl:3", "'q1?'", "line 1", "'AB'"],
    ),
    ("facts not objects", DEMO, ["--data.init_args.facts_path={d}/nolist.jsonl"], ["nolist.jsonl:1"]),
    (
        "num_heldout >= facts",
        DEMO,
        ["--data.init_args.facts_path={d}/good.jsonl", "--data.init_args.num_heldout=2"],
        ["num_heldout=2", "holds 2 facts"],
    ),
    # --- memory experts (memexp.mome.tuning.MoMETuning, memexp.mome.MoMEConfig)
    ("mome k > experts", MOME, ["--model.init_args.mome.k=5000"], ["mome.k=5000", "num_experts=4096"]),
    ("mome num_experts 0", MOME, ["--model.init_args.mome.num_experts=0"], ["mome.num_experts=0"]),
    ("mome rank 0", MOME, ["--model.init_args.mome.rank=0"], ["mome.rank=0"]),
    ("mome key_dim 0", MOME, ["--model.init_args.mome.key_dim=0"], ["mome.key_dim=0"]),
    ("mome unknown index", MOME, ["--model.init_args.mome.index.kind=pq"], ["'pq'", "flat, ivf, hnsw"]),
    ("mome balance", MOME, ["--model.init_args.mome.balance=layernorm"], ["'layernorm'", "batchnorm"]),
    ("mome temperature 0", MOME, ["--model.init_args.mome.temperature=0"], ["mome.temperature=0"]),
    ("mome gate < 0", MOME, ["--model.init_args.mome.gate=-1"], ["gate=-1"]),
    ("mome gate per token", MOME, ["--model.init_args.mome.per_token=true"], ["gate=0.5", "per_token"]),
    ("mome router_lr 0", MOME, ["--model.init_args.router_lr=0"], ["router_lr=0.0"]),
    ("mome phase1 < 0", MOME, ["--model.init_args.phase1_epochs=-1"], ["phase1_epochs=-1"]),
    ("mome optimizer", MOME, ["--model.init_args.optimizer=sgd"], ["optimizer", "sgd"]),
    (
        "mome sites match nothing",
        MOME,
        [f"--model.init_args.backbone={QUICK_MODEL}", "--model.init_args.mome.query_layer=-1"],
        ["model.layers.[23].mlp.down_proj", "matches no nn.Linear"],
    ),
    (
        "mome query layer after site",
        MOME,
        [
            f"--model.init_args.backbone={QUICK_MODEL}",
            "--model.init_args.mome.sites=[model.layers.0.mlp.down_proj]",
            "--model.init_args.mome.query_layer=1",
        ],
        ["query_layer=1", "layer 0"],
    ),
]

CHECKPOINT_CASES = [  # --ckpt_path (run without a logger: wandb starts before a trainer hook can check)
    ("checkpoint missing", "none.ckpt", "does not exist"),
    ("checkpoint empty", "empty.ckpt", "is empty (0 bytes"),
    ("checkpoint not torch", "text.ckpt", "is not a torch checkpoint"),
    ("checkpoint truncated", "cut.ckpt", "is truncated or corrupt"),
    ("checkpoint pickled", "pickled.ckpt", "holds pickled objects other than tensors"),
    ("checkpoint foreign", "foreign.ckpt", "is not a Lightning checkpoint"),
    ("checkpoint without record", "no_record.ckpt", "was not written by memexp"),
    ("checkpoint of another run", "other_run.ckpt", "belongs to another run (backbone='tiny:gpt2' there"),
]

CHECKPOINT_IDS = [c[0] for c in CHECKPOINT_CASES]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    resolve_model_path(QUICK_MODEL)  # built once, before any case captures stderr
    folder = tmp_path_factory.mktemp("inputs")
    for name, data in FACT_FILES.items():
        (folder / name).write_bytes(data)
    write_checkpoints(folder)
    return folder


def run_fit(config: str, extra: list[str], root: Path, inputs: Path, command: str = "fit") -> None:
    args = [a.replace("{d}", str(inputs)) for a in extra]
    quick = QUICK if config == DEMO else []
    common = [f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"]
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--config", config, *common, *quick, *args])
    assert exit_info.value.code != 0


def check_one_line(err: str, words: list[str], inputs: Path, root: Path) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and not NOISE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("memexp: error: "), err
    for word in words:
        assert word.replace("{d}", str(inputs)) in lines[0], lines[0]
    assert not root.exists() or not any(root.iterdir()), sorted(root.iterdir())


@pytest.mark.parametrize("config, extra, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_value(config, extra, words, inputs, tmp_path, capfd):
    root = tmp_path / "run"
    run_fit(config, [f"--trainer.logger.init_args.save_dir={root}", *extra], root, inputs)
    check_one_line(capfd.readouterr().err, words, inputs, root)


@pytest.mark.parametrize("file, words", [c[1:] for c in CHECKPOINT_CASES], ids=CHECKPOINT_IDS)
def test_bad_checkpoint_is_one_line_naming_the_file(file, words, inputs, tmp_path, capfd):
    """``memexp validate --ckpt_path FILE`` checks the file before Lightning reads it."""
    root = tmp_path / "run"
    run_fit(DEMO, ["--trainer.logger=false", f"--ckpt_path={{d}}/{file}"], root, inputs, command="validate")
    check_one_line(capfd.readouterr().err, [f"{{d}}/{file} {words}"], inputs, root)


def test_weights_only_is_not_an_option(inputs, tmp_path, capfd):
    root = tmp_path / "run"
    run_fit(DEMO, ["--weights_only=false"], root, inputs)
    check_one_line(capfd.readouterr().err, ["--weights_only"], inputs, root)


@pytest.mark.parametrize("file, words", [c[1:] for c in CHECKPOINT_CASES], ids=CHECKPOINT_IDS)
def test_trainer_refuses_bad_checkpoint_before_restoring(file, words, inputs, tmp_path, small_facts):
    """The same files through ``Trainer.fit(ckpt_path=...)``: the checked reader and identity check."""
    module, dm = small_facts("full", n=4)
    with pytest.raises(UserError, match=re.escape(f"{inputs / file} {words}")):
        quick_trainer(tmp_path / "run", max_epochs=1).fit(module, datamodule=dm, ckpt_path=inputs / file)
    assert not (tmp_path / "run").exists()


def test_trainer_refuses_weights_only_false(inputs, tmp_path, small_facts):
    module, dm = small_facts("full", n=4)
    with pytest.raises(UserError, match="--weights_only false is refused"):
        quick_trainer(tmp_path, max_epochs=1).fit(
            module, datamodule=dm, ckpt_path=inputs / "other_run.ckpt", weights_only=False
        )


def test_there_are_many_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
