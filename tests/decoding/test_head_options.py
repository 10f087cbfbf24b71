"""Head options read from source (no torch) == the imported constructors; the CLI has a flag for each."""

from __future__ import annotations

import inspect
import subprocess
import sys
import typing

import pytest

from decoding.cli import _head, build_parser
from decoding.cli_parser import FLAG_NAMES, NARROWER, head_flags
from decoding.head import Head
from decoding.head_options import HEAD_CLASSES, docstring_args, head_options, hint_members, is_sequence_hint
from decoding.head_options import Head as HeadStandIn
from decoding.head_spec import head_class, parse_head_spec

HEADS = tuple(HEAD_CLASSES)


def _real(hint: typing.Any) -> typing.Any:
    """``hint`` with the stand-in Head replaced by the real class (to compare with get_type_hints)."""
    members = [Head if t is HeadStandIn else t for t in hint_members(hint)]
    out = members[0]
    for t in members[1:]:
        out = out | t
    return out


@pytest.mark.parametrize("name", HEADS)
def test_options_read_from_source_equal_the_imported_signature(name):
    cls = head_class(name)
    params = list(inspect.signature(cls).parameters.values())
    hints = typing.get_type_hints(cls.__init__)
    read = head_options(name)
    assert [o.name for o in read] == [p.name for p in params]
    assert [o.default for o in read] == [p.default for p in params]
    assert [_real(o.hint) for o in read] == [hints[p.name] for p in params]
    assert all(o.help for o in read), "document every option under the class docstring's Args:"


def test_reading_options_imports_no_torch():
    code = (
        "import sys; from decoding.head_options import head_options; "
        "[head_options(n) for n in ('greedy', 'dola', 'sled', 'dera')]; "
        "from decoding.head_spec import parse_head_options; parse_head_options('dera:lam=2,head=sled'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_docstring_args_joins_continuation_lines_and_stops_at_the_next_section():
    doc = """Summary.

    Args:
        alpha: the first
            and second line.
        beta: one line.

    Returns:
        gamma: not an argument.
    """
    assert docstring_args(doc) == {"alpha": "the first and second line.", "beta": "one line."}


def _group_flags(parser, title: str) -> set[str]:
    group = next(g for g in parser._action_groups if g.title == title)
    return {a.option_strings[0][2:] for a in group._group_actions}


@pytest.mark.parametrize("command", ["generate", "score"])
def test_every_constructor_option_has_a_flag_and_every_flag_an_option(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    expected = {
        (name, p) for name in HEADS for p in inspect.signature(head_class(name)).parameters
    }  # the imported constructors, not the source reader
    assert set(head_flags().values()) == expected
    assert len(head_flags()) == len(expected)  # no two options share a flag
    for name in HEADS:
        cls_name = HEAD_CLASSES[name][1]
        own = {flag for flag, (head, _) in head_flags().items() if head == name}
        if not own:
            assert cls_name not in {g.title for g in sub._action_groups}
            continue
        extra = {"ref_model"} if name == "dera" else set()  # a model, not a head option
        assert _group_flags(sub, cls_name) == own | extra
    assert {k for k in FLAG_NAMES} | {k for k in NARROWER} <= expected  # no stale entry


def _changed_value(hint: typing.Any, default: typing.Any) -> str:
    """A command-line value other than ``default`` that ``hint`` accepts."""
    members = [t for t in hint_members(hint) if t is not type(None)]
    if members == [bool]:
        return "true"
    if members == [int]:
        return str(default + 1)
    if members == [float]:
        return str(default + 0.5)
    if any(is_sequence_hint(t) for t in members):
        return "low" if default == "high" else "0,1"
    if members == [HeadStandIn]:
        return "sled"
    raise AssertionError(f"no sample value for {hint}")


@pytest.mark.parametrize("flag", sorted(head_flags()))
def test_each_flag_builds_the_head_its_option_string_builds(flag):
    """``--head NAME --FLAG V`` == ``--head NAME:option=V``, and differs from ``--head NAME``."""
    name, option = head_flags()[flag]
    read = {o.name: o for o in head_options(name)}[option]
    value = _changed_value(read.hint, read.default)
    store_true = read.hint is bool
    argv = ["generate", "--model", "tiny:llama", "--prompt", "Q:", "--head", name, f"--{flag}"]
    by_flag = _head(build_parser().parse_args(argv + ([] if store_true else [value])), "generation")
    parse_head_spec(f"{name}:{option}={value}")  # the option string is valid on its own
    by_spec = _head(build_parser().parse_args([*argv[:-2], f"{name}:{option}={value}"]), "generation")
    plain = _head(build_parser().parse_args(argv[:-1]), "generation")
    assert repr(by_flag) == repr(by_spec) != repr(plain)
