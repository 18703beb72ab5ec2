"""The KV-cache decoder: exact against re-prefilling and against transformers' generate, token in / token out,
and the sampler is the policy PPO scores."""

import copy
from dataclasses import replace

import pytest
import torch

from stepsearch_lib.batching import build_batch
from stepsearch_lib.config import ModelConfig, PPOConfig, RewardConfig, RolloutConfig
from stepsearch_lib.decoding import Sampling, sample
from stepsearch_lib.models import token_logprobs
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.rollout import rollout

# probabilities 0.5, 0.3, 0.15, 0.05: top-p keeps the smallest set of tokens whose mass reaches p
TOP_P = [(0.5, {0}), (0.8, {0, 1}), (0.81, {0, 1, 2}), (0.95, {0, 1, 2}), (0.96, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})]


@pytest.mark.parametrize("top_p,allowed", TOP_P)
def test_top_p_keeps_the_smallest_set_reaching_p_and_no_top_k(top_p, allowed):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    drawn = sample(logits, Sampling(top_p=top_p), torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == allowed
    assert sample(logits[:1], Sampling(greedy=True)).item() == 0


@pytest.fixture(scope="module")
def bm25(index_dirs):
    return load_retriever(index_dirs / "bm25")


@pytest.mark.parametrize("batch_size", [1, 4])
def test_kv_reuse_is_exact(protocol_model, tokenizer, stepsearch_records, bm25, batch_size):
    """Greedy episodes are token for token the same with one cache across turns, with every turn re-prefilled,
    and with transformers' generate per turn."""
    questions = [r["question"] for r in stepsearch_records[:4]]
    settings = RolloutConfig(max_turns=3, max_new_tokens=48, batch_size=batch_size, doc_words=20)
    runs = {
        engine: rollout(protocol_model, tokenizer, questions, bm25, replace(settings, engine=engine), greedy=True)
        for engine in ("kv", "reprefill", "hf")
    }
    for engine in ("reprefill", "hf"):
        assert [t.response_ids for t in runs[engine]] == [t.response_ids for t in runs["kv"]], engine
    assert sum(t.num_searches for t in runs["kv"]) >= 4  # the episodes really went through several turns
    assert sum(t.answer is not None for t in runs["kv"]) >= 3


def test_token_in_token_out(protocol_model, tokenizer, stepsearch_records, bm25):
    """The trainable response is what was sampled: no decode -> re-encode; forced tokens sit between turns."""
    trajs = rollout(
        protocol_model,
        tokenizer,
        [r["question"] for r in stepsearch_records[:4]],
        bm25,
        RolloutConfig(max_turns=2, max_new_tokens=48, batch_size=4, doc_words=20),
        seed=3,
    )
    for t in trajs:
        assert len(t.sampled_logprobs) == len(t.response_ids) == len(t.loss_mask)
        assert all(lp == 0.0 for lp, m in zip(t.sampled_logprobs, t.loss_mask) if not m)
        assert all(lp < 0.0 or lp == 0.0 for lp in t.sampled_logprobs)
        for idx in t.search_end_idx:
            assert "</search>" in tokenizer.decode(t.response_ids[max(0, idx - 8) : idx + 1])
    assert tokenizer.eos_token_id not in [x for t in trajs for x, m in zip(t.response_ids, t.loss_mask) if m]


def test_the_sampler_is_the_policy_ppo_scores(protocol_model, tokenizer, stepsearch_records, bm25):
    """Sampled at temperature 1 / top-p 0.95 with a fresh LoRA: the log-probability of every sampled token as the
    decoder computed it equals the update's full forward (float32), and the first minibatch's ratio is 1."""
    from stepsearch_lib.critic import ValueModel
    from stepsearch_lib.models import LoraSpec, add_lora, build_tiny_model
    from stepsearch_lib.rewards import gold_of, score_trajectory
    from stepsearch_lib.steppo import steppo_update

    actor = add_lora(copy.deepcopy(protocol_model), LoraSpec(r=8, alpha=16, dropout=0.0))
    with torch.no_grad():
        for n, p in actor.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    records = stepsearch_records[:4]
    trajs = rollout(
        actor,
        tokenizer,
        [r["question"] for r in records],
        bm25,
        RolloutConfig(max_turns=2, max_new_tokens=48, batch_size=4, doc_words=20),
        seed=5,
    )
    scored = [
        score_trajectory(t.response_text(tokenizer), t.queries, t.step_docs, reward_cfg=RewardConfig(), **gold_of(r))
        for t, r in zip(trajs, records)
    ]
    batch = build_batch(trajs, scored, tokenizer.pad_token_id)
    actor.eval()
    with torch.no_grad():
        scored_lp = token_logprobs(actor, batch.input_ids, batch.attention_mask, batch.action_mask)[0]
    m = batch.action_mask.bool()
    assert m.sum() > 50 and (batch.old_logprobs[m] - scored_lp[m]).abs().max() < 1e-5
    critic = ValueModel(build_tiny_model(tokenizer, hidden_size=32, layers=1, seed=3))
    opt_a = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=1e-3)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=1e-3)
    metrics = steppo_update(actor, critic, opt_a, opt_c, batch, PPOConfig(minibatch_size=2))
    assert metrics["losses/ratio_dev_first"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 16])
def test_kv_reuse_is_exact_on_the_real_model(model_cache, tokenizer, musique_dev, bm25, batch_size):
    """SmolLM2-135M-Instruct, zero-shot (it writes long turns), greedy: the same tokens either way."""
    from stepsearch_lib.models import load_policy

    model, tok = load_policy(ModelConfig(cache_dir=str(model_cache)))
    questions = [r.question for r in musique_dev[:16]][: max(batch_size, 2)]
    settings = RolloutConfig(max_turns=2, max_new_tokens=64, batch_size=batch_size, doc_words=30)
    kv = rollout(model, tok, questions, bm25, replace(settings, engine="kv"), greedy=True)
    again = rollout(model, tok, questions, bm25, replace(settings, engine="reprefill"), greedy=True)
    assert [t.response_ids for t in kv] == [t.response_ids for t in again]


def test_the_committed_benchmark_summary_has_the_keys_the_report_reads():
    import json

    from bench.fast_rl import RESULTS

    summary = json.loads((RESULTS / "summary.json").read_text())
    assert {
        "rollout_speedup_b16",
        "rollout_roofline_fraction_b16",
        "update_speedup",
        "rl_step_s_8q",
        "steppo_over_ppo",
        "torch_threads",
        "cpu_model",
        "peak_rss_mb",
    } <= set(summary)
    assert summary["torch_threads"] >= 2  # both cores of the benchmark machine
