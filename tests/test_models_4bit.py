"""4-bit + LoRA gradients on CPU match a dequantised fp32 reference after `generate()`."""

import bitsandbytes as bnb
import pytest
import torch

from stepsearch_lib.config import ModelConfig
from stepsearch_lib.models import LoraSpec, add_lora, build_tiny_model, guard_4bit_cpu_gradients, load_policy

SPEC = LoraSpec(r=4, alpha=8, dropout=0.0)


def tiny_4bit(**fields) -> ModelConfig:
    """The 4-bit tiny policy whose LoRA settings are `SPEC`."""
    return ModelConfig(policy="tiny-random", load_in_4bit=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, **fields)


def _randomise_lora(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _dequantised_reference(model4, tok):
    """fp32 copy of the 4-bit model: every Linear4bit replaced by its dequantised weights."""
    ref = add_lora(build_tiny_model(tok), SPEC)
    state4 = {n: p for n, p in model4.named_parameters()}
    mods4 = dict(model4.named_modules())
    with torch.no_grad():
        for name, module in ref.named_modules():
            m4 = mods4.get(name)
            if isinstance(m4, bnb.nn.Linear4bit):
                w = bnb.functional.dequantize_4bit(m4.weight.data, m4.weight.quant_state).float()
                module.weight.copy_(w)
        for name, p in ref.named_parameters():
            if name in state4 and state4[name].dtype.is_floating_point and state4[name].shape == p.shape:
                p.copy_(state4[name].float())
    return ref


def _lora_grads(model, batch):
    model.train()
    model.zero_grad()
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _rel_err(a, b):
    return max((a[n] - b[n]).norm().item() / max(b[n].norm().item(), 1e-12) for n in b)


@pytest.fixture(scope="module")
def setup(model_cache):
    model4, tok = load_policy(tiny_4bit(cache_dir=str(model_cache)), lora=True)
    _randomise_lora(model4)
    batch = tok(
        ["Who wrote Hamlet? <search> Hamlet author </search>", "Paris is the capital of"],
        return_tensors="pt",
        padding=True,
    )
    return model4, tok, batch


def _after_generate(model4, tok, batch):
    model4.eval()
    with torch.no_grad():
        model4.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)


def test_every_linear4bit_is_guarded(setup):
    model4, _, _ = setup
    layers = [m for m in model4.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)


def test_lora_grads_match_dequantised_reference_after_generate(setup):
    model4, tok, batch = setup
    _after_generate(model4, tok, batch)
    g4 = _lora_grads(model4, batch)
    gref = _lora_grads(_dequantised_reference(model4, tok), batch)
    assert set(g4) == set(gref) and len(g4) > 0
    assert _rel_err(g4, gref) < 1e-3


@pytest.mark.skipif(
    not bnb.functional.has_avx512bf16() if hasattr(bnb.functional, "has_avx512bf16") else True,
    reason="the bitsandbytes repacking path only exists on AVX512-BF16 CPUs",
)
def test_without_guard_gradients_go_wrong(model_cache):
    """The reason for the guard: on AVX512-BF16 CPUs the unguarded path is measurably off."""
    model4, tok = load_policy(tiny_4bit(cache_dir=str(model_cache)), lora=True)
    _randomise_lora(model4)
    for m in model4.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True
    batch = tok(["Who wrote Hamlet?", "Paris is the capital of"], return_tensors="pt", padding=True)
    gref = _lora_grads(_dequantised_reference(model4, tok), batch)
    _after_generate(model4, tok, batch)
    g4 = _lora_grads(model4, batch)
    assert _rel_err(g4, gref) > 1e-2
    assert guard_4bit_cpu_gradients(model4) > 0


def test_a_warm_start_survives_the_4bit_path(tmp_path, tokenizer):
    """A QLoRA warm start (its adapter trained on the NF4 base) loaded for RL on the 4-bit path: the policy
    (fresh RL adapter, B = 0) and the KL reference both compute exactly the warm-started log-probabilities.
    Merging the adapter into the NF4 weights instead (the earlier path) re-quantises them and loses it."""
    from peft import PeftModel

    from stepsearch_lib.batching import build_batch
    from stepsearch_lib.critic import ValueModel, add_critic_adapter
    from stepsearch_lib.models import WARM_ADAPTER, token_logprobs
    from stepsearch_lib.steppo import reference_logprobs

    sft = add_lora(load_policy(tiny_4bit(), seed=0)[0], LoraSpec(r=8, alpha=16, dropout=0.0))
    _randomise_lora(sft, seed=3)
    with torch.no_grad():  # a realistic warm start: a change well below the NF4 step of the weights
        for n, p in sft.named_parameters():
            if "lora_" in n:
                p.mul_(0.1)
    sft.save_pretrained(tmp_path / "sft")
    ids = torch.tensor(
        [tokenizer("Who wrote Hamlet? <search> Hamlet author </search> <answer> Shakespeare </answer>")["input_ids"]]
    )
    attn = torch.ones_like(ids)

    def logprobs(model):
        model.eval()
        with torch.no_grad():
            return token_logprobs(model, ids, attn)[0][0, 1:]

    warm = logprobs(sft)  # the warm-started policy, as SFT trained it
    base = logprobs(load_policy(tiny_4bit(), seed=0)[0])
    assert (warm - base).abs().mean() > 1e-3  # the warm start changes the model

    policy, _ = load_policy(tiny_4bit(), lora=True, seed=0, adapter=tmp_path / "sft", merge_adapter=True)
    assert list(policy.base_model.active_adapters) == [WARM_ADAPTER, "default"]
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == {
        n for n, _ in policy.named_parameters() if ".default." in n
    }
    torch.testing.assert_close(logprobs(policy), warm, atol=1e-5, rtol=0)

    class _Traj:  # one trajectory, every token a response token, for the reference pass
        prompt_ids, response_ids = ids[0, :1].tolist(), ids[0, 1:].tolist()
        loss_mask, search_end_idx = [1] * (ids.shape[1] - 1), []

    class _Score:
        step_rewards, final_reward = [], 0.0

    batch = build_batch([_Traj()], [_Score()], tokenizer.pad_token_id)
    _randomise_lora(policy, seed=5)  # RL moved the policy ...
    for n, p in policy.named_parameters():  # (randomising touched the warm adapter too: put it back)
        if f".{WARM_ADAPTER}." in n:
            p.data.copy_(dict(sft.named_parameters())[n.replace(f".{WARM_ADAPTER}.", ".default.")].data)
    ref = reference_logprobs(policy, batch)[0, 1:]
    torch.testing.assert_close(ref, warm, atol=1e-5, rtol=0)  # ... the reference is still the warm start
    assert (logprobs(policy) - warm).abs().max() > 1e-3

    add_critic_adapter(policy, LoraSpec(r=4, alpha=8, dropout=0.0))
    ValueModel(policy, adapter="critic")(ids, attn)  # a critic pass switches adapters and switches them back
    assert list(policy.base_model.active_adapters) == [WARM_ADAPTER, "default"]

    merged = PeftModel.from_pretrained(load_policy(tiny_4bit(), seed=0)[0], str(tmp_path / "sft"))
    lost = (logprobs(merged.merge_and_unload()) - warm).abs().mean()
    assert lost > 0.3 * (warm - base).abs().mean()  # merging into NF4 loses much of the warm start
