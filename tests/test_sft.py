"""The TRL SFT warm start on real demonstrations: loss on the model's own turns goes down, the adapter reloads."""

import torch
from peft import PeftModel

from stepsearch_lib.demonstrations import build_demonstrations, completion_loss, pad_rows
from stepsearch_lib.models import LoraSpec, add_lora, build_tiny_model
from stepsearch_lib.retrieval import load_retriever
from stepsearch_lib.sft import protocol_rates, sft_train


def test_warm_start_learns_the_turns_and_saves_a_reloadable_adapter(
    tmp_path, tokenizer, stepsearch_records, index_dirs
):
    rows = build_demonstrations(
        stepsearch_records[:8], load_retriever(index_dirs / "bm25"), tokenizer, n=8, doc_words=20
    )
    assert all(sum(r["completion_mask"]) < len(r["input_ids"]) for r in rows)
    model = add_lora(build_tiny_model(tokenizer), LoraSpec(r=8, alpha=16, dropout=0.0))
    ids, attn, mask = pad_rows(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        before = completion_loss(model, ids, attn, mask).item()
    info = sft_train(model, tokenizer, rows, tmp_path / "sft", lr=5e-3, epochs=3, batch_size=4)
    model.eval()
    with torch.no_grad():
        after = completion_loss(model, ids, attn, mask).item()
        assert after < before - 0.1, (before, after)  # 10.80 -> 10.60 in 6 LoRA steps on a random model
        reloaded = PeftModel.from_pretrained(build_tiny_model(tokenizer), str(tmp_path / "sft"))
        trained = {n: p for n, p in model.named_parameters() if "lora_" in n}
        again = {n: p for n, p in reloaded.named_parameters() if "lora_" in n}
        assert trained.keys() == again.keys() and all(torch.equal(trained[n], again[n]) for n in trained)
        assert abs(completion_loss(reloaded, ids, attn, mask).item() - after) < 1e-2
    assert info["steps"] == 6 and (tmp_path / "sft" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "sft" / "trainer").exists()


def test_protocol_rates():
    from stepsearch_lib.rollout import Trajectory

    def T(answer, searches):
        return Trajectory("q", [], answer=answer, search_end_idx=list(range(searches)))

    assert protocol_rates([T("a", 1), T(None, 2), T(None, 0)]) == {"format_ok": 1 / 3, "searched": 2 / 3}


def test_warm_starts_differing_only_in_sft_settings_share_the_untrained_check():
    from stepsearch_lib.config import get_config
    from stepsearch_lib.sft import base_check_path, warm_start_dir

    gold = get_config("cpu", {"train.sft_queries": "gold"})
    question = get_config("cpu", {"train.sft_queries": "question", "train.sft_lr": 1e-3})
    assert warm_start_dir(gold) != warm_start_dir(question)
    assert base_check_path(gold) == base_check_path(question)
    for changed in ({"rollout.max_turns": 2}, {"retrieval.topk": 5}, {"train.sft_eval_questions": 7}):
        assert base_check_path(get_config("cpu", changed)) != base_check_path(gold), changed
    assert base_check_path(get_config("cpu", seed=1)) != base_check_path(gold)
