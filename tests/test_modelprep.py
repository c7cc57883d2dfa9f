"""The conversion step: a complete, loadable folder, idempotent, offline."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from indexer.modelprep import DEFAULT_MODEL_DIR, PROMPTS


def test_folder_is_a_standard_sentence_transformers_model():
    folder = DEFAULT_MODEL_DIR
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "modules.json", "config_sentence_transformers.json", "1_Pooling/config.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"] == PROMPTS
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    pooling = json.loads((folder / "1_Pooling/config.json").read_text())
    assert pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode") == "mean"
    assert oct((folder / "model.safetensors").stat().st_mode)[-3:] == "644"


def test_conversion_is_idempotent():
    out = subprocess.run([sys.executable, "-m", "indexer.modelprep"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and "already present" in out.stdout


def test_loads_offline_with_plain_sentence_transformers():
    code = ("from sentence_transformers import SentenceTransformer; "
            f"m = SentenceTransformer({str(DEFAULT_MODEL_DIR)!r}); "
            "print(m.encode_query(['测试']).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-500:]
    assert "(1, 384)" in out.stdout
