"""Head option strings: one parser typed by each head's signature; layout checks without loading weights."""

from __future__ import annotations

import pytest

from decoding.dera import DeRa
from decoding.dola import DoLa
from decoding.errors import UserError
from decoding.greedy import Greedy
from decoding.head_spec import ModelLayout, check_head_fits, model_layout, parse_head_options, parse_head_spec
from decoding.sled import SLED


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("greedy", Greedy()),
        ("dola:dola_layers=low", DoLa("low")),
        ("dola:dola_layers=0", DoLa([0])),
        ("dola:dola_layers=0,2", DoLa([0, 2])),
        (
            "dola:dola_layers=0,2,relative_top=0,batch_mean=true",
            DoLa([0, 2], relative_top=0.0, batch_mean=True),
        ),
        ("sled:evolution_rate=0.5,evolution_scale=5,layers=1,3", SLED(0.5, 5, layers=[1, 3])),
        ("sled:layers=none", SLED()),
        ("dera:lam=2", DeRa(2.0)),
        ("dera:lam=2,head=sled", DeRa(2.0, SLED())),
        ("dera:lam=0.5,head=dola,dola_layers=0,2", DeRa(0.5, DoLa([0, 2]))),
        ("dera:lam=3,evolution_scale=7,head=sled", DeRa(3.0, SLED(evolution_scale=7))),
    ],
)
def test_specs_build_the_head_their_options_name(spec, expected):
    head = parse_head_spec(spec)
    assert repr(head) == repr(expected)


def test_values_are_typed_by_the_signature():
    assert parse_head_options("sled:evolution_scale=5,evolution_rate=2") == (
        "sled",
        {"evolution_scale": 5, "evolution_rate": 2.0},
    )
    assert isinstance(parse_head_options("sled:evolution_rate=2")[1]["evolution_rate"], float)
    assert parse_head_options("dola:post_softmax=none,batch_mean=no")[1] == {
        "post_softmax": None,
        "batch_mean": False,
    }


@pytest.mark.parametrize(
    "spec, message",
    [
        ("beam", "unknown head 'beam'"),
        ("dera:lam=abc", "lam='abc' in 'dera:lam=abc' must be a finite number"),
        ("dera:lam=nan", "lam='nan'"),
        ("dera:lam=-1", "lam=-1.0 must be >= 0"),
        ("dera:head=dera", "head='dera'"),
        ("dera:head=beam", "head='beam'"),
        ("dola:dola_layers=abc", "dola_layers='abc'"),
        ("sled:evolution_scale=1.5", "evolution_scale='1.5'"),
        ("sled:alpha=2", "unknown option 'alpha' for head 'sled'"),
        ("greedy:x=1", "unknown option 'x' for head 'greedy'"),
        ("dola:high", "'high' in 'dola:high' must look like key=value"),
        ("sled:=3", "has no name"),
        ("dera:lam=1,lam=2", "'lam' is given twice"),
        ("dola:batch_mean=maybe", "batch_mean='maybe'"),
    ],
)
def test_bad_specs_name_the_value(spec, message):
    with pytest.raises(UserError) as err:
        parse_head_spec(spec)
    assert message in str(err.value)


def test_model_layout_from_names_and_config_files(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    assert model_layout("tiny:gpt2?layers=3") == ModelLayout(3, True, 512)
    assert model_layout(tiny_llama_dir) == ModelLayout(2, False, 512)
    assert model_layout(tiny_gpt2_dir).tied
    assert model_layout(str(tmp_path)) is None  # no config.json: unknown, checked after loading
    with pytest.raises(UserError, match="'depth'"):
        model_layout("tiny:llama?depth=2")


def test_check_head_fits_layers_and_vocabulary():
    layout = ModelLayout(num_layers=4, tied=False, vocab=100)
    check_head_fits(parse_head_spec("dola:dola_layers=0,2,4"), layout, "s", "m")  # 4 = mature, dropped
    for spec, message in [
        ("dola:dola_layers=5", "dola_layers [5] are out of range"),
        ("sled:layers=4", "layer index 4 is out of range"),
        ("dera:head=dola,dola_layers=9", "dola_layers [9]"),
        ("dera:head=sled,evolution_scale=101", "evolution_scale=101 exceeds the vocabulary size 100"),
    ]:
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_head_fits(parse_head_spec(spec), layout, spec, "m")
    check_head_fits(parse_head_spec("dola:dola_layers=99"), None, "s", "m")  # unknown layout: later check


def test_the_head_interface_imports_no_head_and_no_registry():
    """No import cycle: heads import ``decoding.head``; the registry (``head_spec``) imports the heads."""
    import subprocess
    import sys

    code = (
        "import sys, decoding.head; "
        "print(sorted(m for m in sys.modules if m in ('decoding.' + n for n in "
        "('greedy', 'dola', 'sled', 'dera', 'head_spec'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
