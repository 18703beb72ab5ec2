"""Named profiles and fidelity presets: flat ``{"section.field": value}`` overrides of the config defaults.

`config.get_config` applies them in this order: the dataclass defaults, then the fidelity preset
named by ``reward.fidelity`` (from the caller's overrides, else the profile, else ``released``),
then the profile, then the caller's overrides. A preset therefore only sets defaults: every
field it names can still be set on its own.

>>> sorted(FIDELITY_PRESETS)
['paper', 'released']
>>> {k: v for k, v in FIDELITY_PRESETS["paper"].items() if FIDELITY_PRESETS["released"][k] != v}
... # doctest: +NORMALIZE_WHITESPACE
{'reward.redundancy_match': 'any_rank', 'ppo.stats_tokens': 'generated', 'rollout.doc_render': 'ours',
 'rollout.template': 'think'}
"""

from __future__ import annotations

from typing import Any

FIDELITY_PRESETS: dict[str, dict[str, Any]] = {
    # What the released StepSearch code computes (Zillwang/StepSearch @ 43215ba; ../shared/reference/README.md):
    # the recipe that produced the paper's numbers, and the default of every profile.
    "released": {
        "reward.search_key_mode": "released",  # each query overwrites only its best-matching sub-question's slot
        "reward.f1_decimals": 4,  # query_f1_score rounds every F1 (answer and key) to 4 decimals
        "reward.released_step_quirk": True,  # the caller's in-place add: effective step scale 1 + 0.6 = 1.6
        "reward.ig_normalize": True,  # both sides SQuAD-normalised before TF-IDF
        "reward.ig_fit": "doc_and_golds",  # one TF-IDF per retrieved doc, fitted on [doc] + every gold doc
        "reward.redundancy_match": "same_rank",  # the splitter's trailing `Doc k` label: repeats count at one rank only
        "ppo.stats_tokens": "response",  # whitening and value loss over every response token, documents included
        "ppo.actor_warmup_frac": 0.285,  # linear learning-rate warm-up, share of the run's updates
        "ppo.critic_warmup_frac": 0.05,
        "rollout.turn_logic": "released",  # max_turns search rounds (warned on the last) + one answering round
        "rollout.doc_render": "released",  # `Doc i<## Title: T ##> text` lines in `<information> ... </information>`
        "rollout.max_obs_tokens": 800,  # max_obs_length: each forced observation cut to 800 tokens
        "rollout.template": "plan",  # the released training prompt asks for <plan> / <observation>
    },
    # The paper's stated intent where the released code has a quirk; everything else as released.
    "paper": {
        "reward.search_key_mode": "released",
        "reward.f1_decimals": 4,
        "reward.released_step_quirk": True,
        "reward.ig_normalize": True,
        "reward.ig_fit": "doc_and_golds",
        "reward.redundancy_match": "any_rank",  # a document retrieved again is redundant at any rank
        "ppo.stats_tokens": "generated",  # statistics over the tokens the policy generated
        "ppo.actor_warmup_frac": 0.285,
        "ppo.critic_warmup_frac": 0.05,
        "rollout.turn_logic": "released",
        "rollout.doc_render": "ours",  # `Doc i(Title: T) text`, the block without inner spaces
        "rollout.max_obs_tokens": 800,
        "rollout.template": "think",  # the paper's figures use <think>
    },
}
"""`reward.fidelity` presets; each sets the same fields, so a preset fully determines them."""


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "model.policy": "tiny-random",
        "model.compute_dtype": "float32",  # the same numbers on every CI machine
        "data.corpus_limit": 1000,
        "data.construct_writers": ("rules", "local_llm"),
        "data.max_train_questions": 24,
        "data.max_eval_questions": 8,
        "rollout.max_turns": 2,
        "rollout.max_new_tokens": 24,
        "rollout.batch_size": 4,
        "rollout.doc_words": 40,
        "ppo.actor_lr": 1e-4,
        "ppo.critic_lr": 1e-3,
        "ppo.minibatch_size": 2,
        # 1-2 updates: the released warm-up (verl's schedule gives update 0 a learning rate of 0) would leave
        # nothing to test
        "ppo.actor_warmup_frac": 0.0,
        "ppo.critic_warmup_frac": 0.0,
        "train.steps": 2,
        "train.questions_per_step": 4,
        "train.save_every": 1,
        "train.sft_examples": 8,
        "train.sft_eval_questions": 4,
        "eval.bootstrap_samples": 100,
        "eval.questions_per_dataset": 4,
    },
    "cpu": {
        "data.construct_files": (
            ("musique", "musique/musique_ans_train_subset.jsonl"),
            ("2wiki", "2wikimultihopqa/train_subset_with_qa_pairs.jsonl"),
            ("hotpotqa", "hotpotqa/hotpot_train_distractor_subset.jsonl"),
        ),
        "data.construct_writers": ("rules", "local_llm"),
        "data.construct_llm_max_hops": 300,
        "rollout.doc_words": 60,
        "rollout.max_new_tokens": 128,
        "train.checkpoint_above_tokens": 4096,  # minibatch 2 x ~1,500 tokens fits in memory without recompute
        "ppo.minibatch_size": 2,
        "ppo.actor_lr": 1e-5,
        "ppo.critic_lr": 2e-4,  # 20x the actor: the zero-initialised value head must learn within a short run
        "ppo.critic_warmup_updates": 2,
        "train.steps": 8,
        "train.questions_per_step": 4,
        "train.init_adapter": "sft",
        "data.max_eval_questions": 100,
        "eval.questions_per_dataset": 20,
        "eval.methods": ("naive", "rag"),
    },
    "gpu": {
        # the full official files that `make data PROFILE=gpu` puts in the project's data/ folder
        "data.data_root": "data",
        "data.train_file": "musique/musique_ans_v1.0_train.jsonl",
        "data.dev_file": "musique/musique_ans_v1.0_dev.jsonl",
        "data.construct_files": (("musique", "musique/musique_ans_v1.0_train.jsonl"),),
        "data.eval_files": (
            ("hotpotqa", "hotpotqa/hotpot_dev_distractor_v1.json"),
            ("2wiki", "2wikimultihopqa/dev.json"),
            ("musique", "musique/musique_ans_v1.0_dev.jsonl"),
            ("bamboogle", "bamboogle/test.jsonl"),
        ),
        "data.corpus_file": "corpus/wiki-18.jsonl",
        "model.policy": "Qwen/Qwen2.5-3B-Instruct",
        "model.encoder": "intfloat/e5-base-v2",
        "model.load_in_4bit": True,
        "model.dtype": "bfloat16",
        "rollout.batch_size": 32,
        "rollout.max_new_tokens": 512,
        "ppo.actor_lr": 1e-5,
        "ppo.critic_lr": 1e-4,
        "ppo.minibatch_size": 8,
        "train.steps": 200,
        "train.questions_per_step": 32,
    },
}
"""Named profiles as flat overrides of the defaults."""


CHOICES = {
    "rollout.template": ("plan", "think"),
    "train.sft_queries": ("gold", "question"),
    "rollout.turn_logic": ("released", "strict"),
    "rollout.doc_render": ("released", "search_r1", "ours"),
    "rollout.engine": ("kv", "reprefill", "hf"),
    "model.compute_dtype": ("auto", "bfloat16", "float32"),
    "reward.search_key_mode": ("released", "max"),
    "reward.ig_fit": ("doc_and_golds", "pair"),
    "reward.redundancy_match": ("same_rank", "any_rank"),
    "ppo.stats_tokens": ("response", "generated"),
}
"""Allowed values of the string fields that select a behaviour."""
