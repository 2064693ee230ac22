"""The embedded tiny model and the HF rollout backend."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gdpo.config import RolloutConfig, TinyModelConfig
from gdpo.rollout import (
    HFRollout,
    ReservedCacheLayer,
    VLLMRollout,
    _top_p_filter,
    encode_prompt,
    forbidden_token,
)
from gdpo.tiny import build_tiny_model


def test_tiny_model_is_a_normal_hf_folder(toy_model_dir, toy_task):
    tokenizer = AutoTokenizer.from_pretrained(toy_model_dir)
    model = AutoModelForCausalLM.from_pretrained(toy_model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 1_000_000 <= sum(p.numel() for p in model.parameters()) <= 5_000_000
    text = tokenizer.apply_chat_template(
        toy_task.train[0]["messages"], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nAdd 7 and 1.<|im_end|>\n<|im_start|>assistant\n"
    ids = encode_prompt(tokenizer, toy_task.train[0]["messages"])
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer("<answer>12</answer>")["input_ids"]) == "<answer>12</answer>"
    assert (toy_model_dir / "warm_start.json").exists()


def test_build_is_cached_by_settings(tmp_path):
    corpus = ["Add 1 and 2.", "<answer>3</answer>"] * 20
    cfg = TinyModelConfig(
        hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, vocab_size=300
    )
    first = build_tiny_model(cfg, corpus, tmp_path)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert build_tiny_model(cfg, corpus, tmp_path) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    other = build_tiny_model(cfg, corpus + ["more text"], tmp_path)
    assert other != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    with pytest.raises(ValueError, match="non-empty text corpus"):
        build_tiny_model(cfg, [], tmp_path)


def _prompts(tokenizer, task, n):
    return [encode_prompt(tokenizer, row["messages"]) for row in task.train[:n]]


def test_rollouts_do_not_depend_on_batch_layout(toy_policy, toy_task):
    model, tokenizer = toy_policy
    backend = HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=16))
    prompts = _prompts(tokenizer, toy_task, 6)
    whole = backend.generate(prompts, list(range(100, 106)), 4)
    part = backend.generate(prompts[3:], list(range(103, 106)), 4)
    assert whole.completions[12:] == part.completions
    again = backend.generate(prompts, list(range(100, 106)), 4)
    assert again.completions == whole.completions
    other = backend.generate(prompts, list(range(200, 206)), 4)
    assert other.completions != whole.completions


def test_rollout_tensors_are_consistent(toy_policy, toy_task):
    model, tokenizer = toy_policy
    backend = HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=16))
    ro = backend.generate(_prompts(tokenizer, toy_task, 4), [1, 2, 3, 4], 4)
    n = 16
    assert ro.input_ids.shape[0] == n and ro.completion_mask.shape[0] == n
    assert ro.num_tokens.tolist() == ro.completion_mask.sum(-1).tolist()
    completion = ro.input_ids[:, ro.prompt_width :]
    for row in range(n):
        k = int(ro.num_tokens[row])
        ends_with_eos = completion[row, k - 1].item() == tokenizer.eos_token_id
        assert ends_with_eos != bool(ro.truncated[row])
        assert tokenizer.pad_token_id not in completion[row, :k].tolist()
        assert tokenizer.decode(completion[row, :k], skip_special_tokens=True) == ro.completions[row]
    # Training-side log-probs (a forward over the whole sequence) match the sampler's.
    positions = (ro.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=positions).logits
    logits = logits[:, ro.prompt_width - 1 : -1].float()
    logits[..., tokenizer.pad_token_id] = -torch.inf
    targets = completion.masked_fill(~ro.completion_mask, 0)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    diff = ((logp - ro.sample_logprobs).abs() * ro.completion_mask).max().item()
    assert diff < 1e-4


def test_shared_prompt_forward_matches_the_full_forward(toy_policy, toy_task):
    from gdpo.trainer import completion_logprobs

    model, tokenizer = toy_policy
    prompts = _prompts(tokenizer, toy_task, 3)
    prompts[1] = prompts[1] + prompts[2][:5]  # prompts of different lengths: left padding in the batch
    ro = HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=12)).generate(prompts, [1, 2, 3], 4)
    forbidden = forbidden_token(tokenizer)

    def logprobs_and_grads(rows, share):
        model.zero_grad(set_to_none=True)
        logp, _ = completion_logprobs(model, ro, rows, 0.7, forbidden, False, share_prompt=share)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return logp.detach(), grads

    full, full_grads = logprobs_and_grads(slice(None), share=False)
    shared, shared_grads = logprobs_and_grads(slice(None), share=True)
    assert (full != 0).sum() > 20  # real completions were scored
    assert torch.allclose(shared, full, atol=1e-5, rtol=0)
    for a, b in zip(shared_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # The entropy logged without a graph equals the differentiable one.
    _, logged = completion_logprobs(model, ro, slice(None), 0.7, forbidden, True, entropy_grad=False)
    _, with_grad = completion_logprobs(model, ro, slice(None), 0.7, forbidden, True, entropy_grad=True)
    assert not logged.requires_grad and with_grad.requires_grad
    assert torch.allclose(logged, with_grad.detach(), atol=1e-5, rtol=0)
    assert logged[ro.completion_mask].min() > 0  # 0 on padding
    # A micro-batch that cuts through groups (rows 2..8 hold parts of prompts 0, 1 and 2).
    part, _ = logprobs_and_grads(slice(2, 9), share=True)
    assert torch.allclose(part, full[2:9, : part.shape[1]], atol=1e-5, rtol=0)


def test_warm_start_loss_is_the_causal_lm_loss(toy_policy, toy_task):
    from gdpo.tiny import completion_loss, pad_batch, sft_example

    model, tokenizer = toy_policy
    examples = [sft_example(tokenizer, messages, text) for messages, text in toy_task.demonstrations[:5]]
    input_ids, attention_mask, labels = pad_batch(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        ours = completion_loss(model, input_ids, attention_mask, labels)
        reference = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_truncation_and_greedy(toy_policy, toy_task):
    model, tokenizer = toy_policy
    short = HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=2))
    ro = short.generate(_prompts(tokenizer, toy_task, 2), [5, 6], 3)
    assert ro.completion_mask.shape[1] <= 2
    assert all(
        bool(t) == (int(n) == 2 and ro.input_ids[i, -1] != tokenizer.eos_token_id)
        for i, (t, n) in enumerate(zip(ro.truncated, ro.num_tokens))
    )
    greedy = HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=12))
    a = greedy.generate(_prompts(tokenizer, toy_task, 2), [1, 2], 3, greedy=True)
    assert a.completions[0] == a.completions[1] == a.completions[2]  # greedy ignores the seeds


def test_stop_strings_end_a_completion(toy_policy, toy_task):
    model, tokenizer = toy_policy
    backend = HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=16, stop=["<answer>"]))
    ro = backend.generate(_prompts(tokenizer, toy_task, 4), [1, 2, 3, 4], 4)
    started = [c for c in ro.completions if c.startswith("<answer>")]
    assert started, "the warm-started model should often open with <answer>"
    assert all(c == "<answer>" for c in started)


def test_a_stop_string_inside_the_last_token_stops_the_row(toy_policy):
    _, tokenizer = toy_policy
    backend = HFRollout(None, tokenizer, RolloutConfig(stop=["x"]))
    # a token whose text has a first character that does not end it (e.g. "<a" for stop "<")
    token, text = next(
        (i, t)
        for i in range(len(tokenizer))
        if i not in tokenizer.all_special_ids and len(t := tokenizer.decode([i])) >= 2 and t[0] not in t[1:]
    )
    backend.cfg.stop = [text[0]]
    hit = backend._hit_stop(
        [torch.tensor([token, token])], [torch.tensor([True, True])], torch.tensor([False, True])
    )
    assert hit.tolist() == [True, False]  # the finished row is not looked at


def test_top_p_filter_keeps_the_smallest_prefix():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert _top_p_filter(probs, 0.7).tolist()[0] == pytest.approx([0.625, 0.375, 0.0, 0.0])
    assert _top_p_filter(probs, 0.5).tolist()[0] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert _top_p_filter(probs, 1.0) is probs


def test_sampling_matches_the_distribution():
    """argmax(p / Exp(1)) is an exact sample from p: check frequencies over many independent streams."""
    from types import SimpleNamespace

    backend = HFRollout.__new__(HFRollout)
    backend.cfg = RolloutConfig(temperature=1.0)
    backend.tokenizer = SimpleNamespace(pad_token_id=3, eos_token_id=2)
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1, 1e-9])).repeat(4000, 1)
    gens = [torch.Generator().manual_seed(i) for i in range(4000)]
    tokens, logp = backend._sample(logits, gens, greedy=False)
    freq = torch.bincount(tokens, minlength=4).float() / 4000
    assert freq[:3].tolist() == pytest.approx([0.6, 0.3, 0.1], abs=0.03)
    assert freq[3] == 0  # the pad token is never sampled
    assert logp[tokens == 0][0].item() == pytest.approx(math.log(0.6), abs=1e-6)


def test_greedy_rollouts_match_transformers_generate(toy_policy, toy_task):
    """Our batched, left-padded sampling loop with a KV cache equals HF generate(do_sample=False) per prompt."""
    model, tokenizer = toy_policy
    prompts = [encode_prompt(tokenizer, row["messages"]) for row in toy_task.train[:5]]
    ro = HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=12)).generate(
        prompts, list(range(5)), 1, greedy=True
    )
    for i, ids in enumerate(prompts):
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        assert ro.completions[i] == tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def test_reserved_cache_layer_returns_what_the_dynamic_layer_returns():
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    dynamic = DynamicLayer()
    first = (torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8))
    dynamic.update(*first)
    reserved = ReservedCacheLayer(dynamic, capacity=7)
    assert reserved.capacity == 7 and reserved.get_seq_length() == 4
    buffer = reserved._keys.data_ptr()
    for length in (1, 2):  # one decode step, then two positions at once: 4 + 1 + 2 = 7 = capacity
        new = (torch.randn(3, 2, length, 8), torch.randn(3, 2, length, 8))
        want, got = dynamic.update(*new), reserved.update(*new)
        for w, g in zip(want, got):
            assert g.shape == w.shape and torch.equal(g, w)
    assert reserved.get_seq_length() == 7 and reserved._keys.data_ptr() == buffer  # written in place
    with pytest.raises(RuntimeError, match="reserved for 7 positions, asked to hold 8"):
        reserved.update(torch.randn(3, 2, 1, 8), torch.randn(3, 2, 1, 8))
    with pytest.raises(ValueError, match="capacity 6 is below the 7 positions"):
        ReservedCacheLayer(dynamic, capacity=6)


def test_reserved_cache_layer_doubles_its_room_up_to_the_capacity():
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(0)
    dynamic = DynamicLayer()
    dynamic.update(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4))
    reserved = ReservedCacheLayer(dynamic, capacity=20)
    sizes = [reserved.allocated]
    for _ in range(17):  # one position at a time up to the capacity
        new = (torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4))
        want, got = dynamic.update(*new), reserved.update(*new)
        for w, g in zip(want, got):
            assert g.shape == w.shape and torch.equal(g, w)
        sizes.append(reserved.allocated)
    # 2 x 3 positions to start, doubled when full, the last step capped at the capacity: three copies in all.
    assert sorted(set(sizes)) == [6, 12, 20] and reserved.get_seq_length() == 20


@pytest.mark.parametrize(
    "operation",
    [
        lambda layer: layer.batch_select_indices(torch.tensor([2, 0])),
        lambda layer: layer.batch_repeat_interleave(2),
        lambda layer: layer.reorder_cache(torch.tensor([1, 1, 0])),
        lambda layer: layer.crop(-2),
        lambda layer: layer.crop(0),
        lambda layer: layer.reset(),
        lambda layer: (layer.offload(), layer.prefetch()),
    ],
    ids=["select", "repeat", "reorder", "crop", "crop0", "reset", "offload"],
)
def test_reserved_cache_layer_operations_match_the_dynamic_layer(operation):
    """After any cache-layer operation, the next update returns what DynamicLayer's would."""
    from transformers.cache_utils import DynamicLayer

    torch.manual_seed(1)
    dynamic = DynamicLayer()
    dynamic.update(torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8))
    reserved = ReservedCacheLayer(dynamic, capacity=8)
    operation(dynamic)
    operation(reserved)
    assert reserved.get_seq_length() == dynamic.get_seq_length()
    batch = dynamic.keys.shape[0] if dynamic.keys is not None else 3
    new = (torch.randn(batch, 2, 1, 8), torch.randn(batch, 2, 1, 8))
    for want, got in zip(dynamic.update(*new), reserved.update(*new)):
        assert got.shape == want.shape and torch.equal(got, want)
    assert reserved.get_max_length() == 8


def test_generation_writes_the_cache_in_place_with_unchanged_samples(toy_policy, toy_task, monkeypatch):
    """The reserved cache changes no sample or log-prob (bit for bit), and no step reallocates it."""
    import gdpo.rollout

    model, tokenizer = toy_policy
    prompts = _prompts(tokenizer, toy_task, 3)
    prompts[1] = prompts[1] + prompts[2][:5]  # left padding in the batch
    cfg = RolloutConfig(max_new_tokens=24)
    buffers = []  # per forward: the data pointers of every layer's key buffer
    forward = model.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        cache = out.past_key_values
        buffers.append([getattr(layer, "_keys", layer.keys).data_ptr() for layer in cache.layers])
        assert kwargs.get("past_key_values") is None or all(
            isinstance(layer, ReservedCacheLayer) for layer in cache.layers
        )
        return out

    monkeypatch.setattr(model, "forward", spy)
    reserved = HFRollout(model, tokenizer, cfg).generate(prompts, [5, 6, 7], 4)
    decode_steps = buffers[1:]
    assert len(decode_steps) == max(reserved.num_tokens.tolist()) - 1  # the last token needs no forward
    # Room reserved ahead, doubled when full: a copy only every so often, not at every token.
    assert len({tuple(step) for step in decode_steps}) <= 2 < len(decode_steps)
    monkeypatch.setattr(model, "forward", forward)
    monkeypatch.setattr(gdpo.rollout, "reserve_cache", lambda cache, extra: None)
    concatenated = HFRollout(model, tokenizer, cfg).generate(prompts, [5, 6, 7], 4)
    assert reserved.completions == concatenated.completions
    assert torch.equal(reserved.input_ids, concatenated.input_ids)
    assert torch.equal(reserved.sample_logprobs, concatenated.sample_logprobs)


def test_negative_vllm_kv_cache_size_names_the_field():
    cfg = RolloutConfig(vllm_kv_cache_gib=-1.0)
    with pytest.raises(ValueError, match=r"rollout.vllm_kv_cache_gib must be >= 0 .*got -1.0"):
        VLLMRollout("unused", None, cfg, dtype="float32", seed=0, device=torch.device("cpu"))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"steps": 0}, r"warm_start.steps must be >= 1 \(got 0\); warm_start.enabled=false skips it"),
        ({"batch_size": -2}, r"warm_start.batch_size must be >= 1 \(got -2\)"),
        ({"lr": 0.0}, r"warm_start.lr must be > 0 \(got 0.0\)"),
    ],
)
def test_unusable_warm_start_settings_name_the_field(setting, message, tmp_path, toy_model_dir):
    from gdpo.config import WarmStartConfig
    from gdpo.tiny import warm_start

    with pytest.raises(ValueError, match=message):
        warm_start(
            toy_model_dir, [([{"role": "user", "content": "a"}], "b")], WarmStartConfig(**setting), tmp_path
        )
