"""HF ``custom_generate`` entry of the ``decoding`` heads (greedy, DoLa, SLED, DeRa).

Laid out like a Hub repository, so that transformers 5.x loads it from this folder::

    from decoding.hf_generate import custom_generate_dir

    model.generate(ids, custom_generate=custom_generate_dir(), trust_remote_code=True, head="sled")

HF imports this file and calls its ``generate(model=..., **generate_arguments)``; the work is done by
:func:`decoding.hf_generate.generate` (the ``decoding`` package must be importable).
"""

from decoding.hf_generate import generate

__all__ = ["generate"]
