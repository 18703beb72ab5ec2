"""The embedded policy, the tiny test model, the embedded encoder, hub errors."""

import numpy as np
import pytest
import torch

from stepsearch_lib.config import ModelConfig, get_config
from stepsearch_lib.encoder import encoder_path, load_encoder
from stepsearch_lib.models import build_tiny_model, load_policy, policy_from_config, smollm2_gguf_path


def test_gguf_ships_in_the_wheel():
    assert smollm2_gguf_path().stat().st_size > 50_000_000


def test_embedded_policy_converts_once_and_answers(model_cache):
    model, tok = load_policy(ModelConfig(cache_dir=str(model_cache)))
    assert (model_cache / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1] :])


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_uses_the_real_tokenizer(tokenizer, arch):
    model = build_tiny_model(tokenizer, arch=arch)
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    ids = tokenizer(["hello world"], return_tensors="pt")
    assert model(**ids).logits.shape[-1] == len(tokenizer)
    # seeded construction: same seed -> same weights, global RNG untouched
    state = torch.random.get_rng_state()
    again = build_tiny_model(tokenizer, arch=arch)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_smoke_profile_policy_has_lora(model_cache):
    model, tok = policy_from_config(get_config("smoke", overrides={"model.cache_dir": str(model_cache)}))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert tok.padding_side == "left" and tok.pad_token is not None


def test_embedded_encoder_ranks_related_text_higher():
    enc = load_encoder("all-minilm-l6-v2", device="cpu")
    assert enc.dim == 384 and enc.query_prefix == ""
    q = enc.encode_queries(["Who directed the film Shanghai 13?"])
    p = enc.encode_passages(
        [
            "Shanghai 13 is a 1984 martial arts film directed by Chang Cheh.",
            "Chamisal is a census-designated place in Taos County, New Mexico.",
        ]
    )
    sims = (q @ p.T)[0]
    assert sims[0] > sims[1] + 0.2
    assert np.allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)


def test_hub_ids_fail_with_a_clear_offline_message(monkeypatch):
    """Hub ids are real code paths; the hub is unreachable here, so the error must say what to do."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time: patch the flag
    with pytest.raises(OSError, match="huggingface-cli download no-such-org/no-such-model"):
        load_policy(ModelConfig(policy="no-such-org/no-such-model"))
    assert encoder_path("intfloat/e5-base-v2") == "intfloat/e5-base-v2"
