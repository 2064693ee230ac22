"""The trainer's log-probs from hidden states, chunk by chunk, against the full-logits computation they replace;
the per-micro-batch trimming of padding; the move of a step's tensors to the model's device."""

from __future__ import annotations

import copy

import pytest
import torch

from gdpo.config import RolloutConfig
from gdpo.losses import token_logprobs
from gdpo.rollout import HFRollout, encode_prompt, forbidden_token, pack_rollouts

TEMPERATURE = 0.7


def full_logits_logprobs(model, ro, forbidden):
    """The trainer's computation before chunking (kept here as the reference): one forward, logits ``[n, T, V]``,
    a full-vocabulary fp32 log-softmax, the padding token at -inf, the entropy from logits with -1e9 there."""
    ids, mask = ro.input_ids, ro.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = ids.shape[1] - ro.prompt_width + 1
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=keep
    ).logits[:, :-1]
    logits = logits.float() / TEMPERATURE
    if forbidden is not None:
        logits[..., forbidden] = -torch.inf
    completion_mask = ro.completion_mask
    targets = ids[:, ro.prompt_width :].masked_fill(~completion_mask, 0)
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1).masked_fill(~completion_mask, 0.0)
    finite = torch.log_softmax(logits.masked_fill(torch.isinf(logits), -1e9), -1)
    entropy = -(finite.exp() * finite).sum(-1)
    return logp, entropy


@pytest.fixture(scope="module")
def rollouts(toy_policy, toy_task):
    model, tokenizer = toy_policy
    prompts = [encode_prompt(tokenizer, row["messages"]) for row in toy_task.train[:3]]
    prompts[1] = prompts[1] + prompts[2][:5]  # prompts of different lengths: left padding in the batch
    with torch.no_grad():
        return HFRollout(model, tokenizer, RolloutConfig(max_new_tokens=10)).generate(prompts, [1, 2, 3], 2)


def _values_and_grads(model, compute):
    """(log-probs, entropies, parameter gradients of a loss that weighs every token differently)."""
    model.zero_grad(set_to_none=True)
    logp, entropy = compute()
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    ((logp * weights).sum() + (entropy * weights.flip(-1)).sum()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return logp.detach(), entropy.detach(), grads


@pytest.fixture(scope="module")
def model64(toy_policy):
    """The tiny model in float64 (the log-softmax stays fp32, as in training): the matrix products then add in
    any order without float32 rounding, so a difference above 1e-6 is a difference of computation."""
    return copy.deepcopy(toy_policy[0]).to(torch.float64)


@pytest.mark.parametrize("share", [False, True], ids=["full-forward", "shared-prompt"])
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_logprobs_entropies_and_gradients_equal_the_full_logits(
    toy_policy, model64, rollouts, chunk, share
):
    from gdpo.trainer import completion_logprobs

    forbidden = forbidden_token(toy_policy[1])
    assert forbidden is not None
    ro, mask = rollouts, rollouts.completion_mask
    assert mask.sum() > 15 and not mask.all()  # real completions of several lengths

    def reference():
        logp, entropy = full_logits_logprobs(model64, ro, forbidden)
        return logp, entropy * mask  # the trainer's entropy is 0 on padding; only masked values are used

    def chunked():
        return completion_logprobs(
            model64, ro, slice(None), TEMPERATURE, forbidden, True, share_prompt=share, chunk_tokens=chunk
        )

    ref_logp, ref_entropy, ref_grads = _values_and_grads(model64, reference)
    logp, entropy, grads = _values_and_grads(model64, chunked)
    assert logp.shape == ref_logp.shape == mask.shape
    assert (logp - ref_logp).abs().max().item() <= 1e-6
    assert (entropy - ref_entropy).abs().max().item() <= 1e-6
    assert entropy[mask].min() > 0
    for a, b in zip(
        grads, ref_grads
    ):  # the log-softmax is fp32 in both: within 1e-6 of each gradient's scale
        assert (a - b).abs().max().item() <= 1e-6 * max(1.0, b.abs().max().item())


def test_chunked_logprobs_in_float32(toy_policy, rollouts):
    """In float32 a chunk's matrix product adds in another order than the whole batch's: measured differences
    up to 5.3e-6 on log-probs (chunks of 1 and 7), none with one chunk for the whole batch."""
    from gdpo.trainer import completion_logprobs

    model, tokenizer = toy_policy
    forbidden = forbidden_token(tokenizer)
    with torch.no_grad():
        ref_logp, ref_entropy = full_logits_logprobs(model, rollouts, forbidden)
        for chunk in (1, 7, 10_000):
            logp, entropy = completion_logprobs(
                model, rollouts, slice(None), TEMPERATURE, forbidden, True, chunk_tokens=chunk
            )
            assert (logp - ref_logp).abs().max().item() <= 1e-5
            assert (entropy - ref_entropy * rollouts.completion_mask).abs().max().item() <= 1e-5


def test_token_logprobs_by_hand():
    """Two tokens, vocabulary of 3, an identity head: log-softmax of logits / T with token 2 forbidden."""
    hidden = torch.tensor([[1.0, 0.0, 5.0], [0.0, 2.0, 0.0]])
    targets = torch.tensor([0, 1])
    logp, entropy = token_logprobs(
        hidden, lambda h: h, targets, temperature=2.0, forbidden=2, chunk_tokens=1, with_entropy=True
    )
    # Row 0: logits (0.5, 0, forbidden): log p(0) = 0.5 - log(e^0.5 + 1). Row 1: (0, 1, -): 1 - log(1 + e).
    e = torch.e
    p0 = e**0.5 / (e**0.5 + 1)
    p1 = e / (1 + e)
    assert logp.tolist() == pytest.approx(
        [0.5 - torch.log(torch.tensor(e**0.5 + 1)).item(), 1 - torch.log(torch.tensor(1 + e)).item()],
        abs=1e-6,
    )
    expected_entropy = [
        -(p0 * torch.log(torch.tensor(p0)) + (1 - p0) * torch.log(torch.tensor(1 - p0))).item(),
        -(p1 * torch.log(torch.tensor(p1)) + (1 - p1) * torch.log(torch.tensor(1 - p1))).item(),
    ]
    assert entropy.tolist() == pytest.approx(expected_entropy, abs=1e-6)
    with pytest.raises(ValueError, match="optim.logprob_chunk_tokens must be >= 1"):
        token_logprobs(
            hidden, lambda h: h, targets, temperature=1.0, forbidden=None, chunk_tokens=0, with_entropy=False
        )


def test_the_logits_of_a_chunk_are_recomputed_in_the_backward_pass():
    """Under a gradient, no chunk's logits stay alive between the forward and the backward: the head runs
    once per chunk forward and once more per chunk in backward."""
    calls = []
    weight = torch.randn(4, 6, requires_grad=True)

    def head(h):
        calls.append(h.shape[0])
        return h @ weight.T

    hidden = torch.randn(10, 6, requires_grad=True)
    logp, _ = token_logprobs(
        hidden,
        head,
        torch.arange(10) % 4,
        temperature=1.0,
        forbidden=None,
        chunk_tokens=4,
        with_entropy=False,
    )
    assert calls == [4, 4, 2]
    logp.sum().backward()
    assert calls == [4, 4, 2, 2, 4, 4]  # recomputed in backward, last chunk first
    with torch.no_grad():
        token_logprobs(
            hidden,
            head,
            torch.arange(10) % 4,
            temperature=1.0,
            forbidden=None,
            chunk_tokens=4,
            with_entropy=False,
        )
    assert calls[6:] == [4, 4, 2]  # no graph: computed once


def test_micro_batch_cuts_the_padding_its_rows_share(toy_policy):
    _, tokenizer = toy_policy
    pad = tokenizer.pad_token_id
    ro = pack_rollouts(
        tokenizer,
        [[5, 6, 7], [8], [9, 10]],
        [[11], [12, 13, 14, 15], [16, 17]],
        [[-0.1], [-0.2, -0.3, -0.4, -0.5], [-0.6, -0.7]],
        [False, True, False],
    )
    assert ro.prompt_width == 3 and ro.input_ids.shape == (3, 7)
    mb = ro.micro_batch(slice(1, 3))  # prompts of 1 and 2 tokens, completions of 4 and 2
    assert mb.prompt_width == 2
    assert mb.input_ids.tolist() == [[pad, 8, 12, 13, 14, 15], [9, 10, 16, 17, pad, pad]]
    assert mb.attention_mask.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]
    assert mb.completion_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert mb.sample_logprobs.flatten().tolist() == pytest.approx([-0.2, -0.3, -0.4, -0.5, -0.6, -0.7, 0, 0])
    assert mb.truncated.tolist() == [True, False] and mb.num_tokens.tolist() == [4, 2]
    assert mb.completions == ro.completions[1:3]
    mb = ro.micro_batch(slice(0, 1))
    assert mb.input_ids.tolist() == [[5, 6, 7, 11]] and mb.prompt_width == 3


class OnHost(torch.Tensor):
    """A tensor left where the rollouts were built (the host) while the model lives on an accelerator: as with
    a CPU tensor fed to a CUDA model, any operation that mixes it with the model's tensors fails, and
    ``.to(device)`` is the move to the model's device (a plain tensor). 0-d tensors mix freely, as CPU scalars
    do with CUDA tensors."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and isinstance(args[0], OnHost):
            return args[0].as_subclass(torch.Tensor).clone()
        leaves = _tensors([args, kwargs])
        if any(isinstance(t, OnHost) for t in leaves) and any(
            not isinstance(t, OnHost) and t.dim() > 0 for t in leaves
        ):
            raise RuntimeError(
                f"{func.__name__}: expected all tensors to be on the same device (host and model)"
            )
        return super().__torch_function__(func, types, args, kwargs)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class PlainEngine:
    """What ``policy_update`` uses of a DeepSpeed engine, over a plain module and SGD: gradients accumulate over
    ``accumulation`` micro-batches, then one update."""

    def __init__(self, model, accumulation=1, lr=0.1):
        self.module, self.device = model, torch.device("cpu")
        self.basic_optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        self.accumulation, self.micro_steps, self.calls = accumulation, 0, []

    def __call__(self, **inputs):
        self.calls.append({k: type(v).__name__ for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return self.module(**inputs)

    def get_lr(self):
        return [self.basic_optimizer.param_groups[0]["lr"]]

    def backward(self, loss, scale_wrt_gas=False):
        loss.backward()

    def is_gradient_accumulation_boundary(self):
        return (self.micro_steps + 1) % self.accumulation == 0

    def step(self):
        if self.is_gradient_accumulation_boundary():
            self.basic_optimizer.step()
            self.basic_optimizer.zero_grad(set_to_none=True)
        self.micro_steps += 1

    def get_global_grad_norm(self):
        return None


def _update_inputs(toy_policy, *overrides):
    from gdpo.config import TrainConfig, load_config
    from gdpo.trainer import plan_layout

    from .conftest import REPO

    model, tokenizer = toy_policy
    cfg = load_config(
        TrainConfig,
        REPO / "experiments/toy/configs/tiny.yaml",
        ["data.prompts_per_step=2", "rollout.num_rollouts=2", "optim.micro_batch_size=2", *overrides],
    )
    ro = pack_rollouts(
        tokenizer,
        [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9]],
        [[11, 12], [13], [14, 15, 16], [17, tokenizer.eos_token_id]],
        [[-1.0, -1.0], [-1.0], [-1.0, -1.0, -1.0], [-1.0, -1.0]],
        [False, False, True, False],
    )
    return copy.deepcopy(model), tokenizer, cfg, plan_layout(cfg, 1), ro


def test_a_steps_tensors_move_to_the_models_device_once(toy_policy):
    """Fails on the code that passed the rollouts to the model where they were built."""
    from dataclasses import fields

    from gdpo.trainer import policy_update

    model, tokenizer, cfg, layout, ro = _update_inputs(
        toy_policy,
        "algorithm.kl_coef=0.1",
        "optim.mini_batches=2",
        "rollout.mask_truncated=true",
        "optim.share_prompt_forward=false",  # the old code then fails in the model, not in a helper
    )
    on_host = type(ro)(
        **{
            f.name: getattr(ro, f.name).as_subclass(OnHost)
            if isinstance(getattr(ro, f.name), torch.Tensor)
            else getattr(ro, f.name)
            for f in fields(ro)
        }
    )
    with pytest.raises(RuntimeError, match="same device"):  # the fake really refuses a mix
        model(input_ids=on_host.input_ids)
    engine = PlainEngine(model)
    ref = PlainEngine(copy.deepcopy(model).requires_grad_(False))
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5]).as_subclass(OnHost)
    stats, _ = policy_update(engine, ref, on_host, advantages, cfg, layout, forbidden_token(tokenizer))
    assert math_isfinite(stats["loss"]) and stats["kl"] > 0  # two mini-batches: the second one moved away
    assert engine.calls and ref.calls
    assert {name for call in engine.calls + ref.calls for name in call.values()} == {"Tensor"}


def math_isfinite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


@pytest.mark.parametrize("tokens", [10, 2])
def test_a_set_number_of_chunks_calls_the_head_as_often_forward_and_backward(tokens):
    """ZeRO-3 on several ranks: the head must run as many times on every rank, also with fewer tokens than
    chunks (dummy rows); the log-probs and gradients are those of the plain chunking."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 6, generator=gen, requires_grad=True)
    calls = []

    def head(h):
        calls.append(h.shape[0])
        return h @ weight.T

    hidden = torch.randn(tokens, 6, generator=gen, requires_grad=True)
    targets = torch.arange(tokens) % 4
    options = {"temperature": 0.8, "forbidden": 3, "chunk_tokens": 4, "with_entropy": True}
    logp, entropy = token_logprobs(hidden, head, targets, num_chunks=5, **options)
    assert len(calls) == 5 and sum(calls) == max(tokens, 5) and logp.shape == entropy.shape == (tokens,)
    (logp.sum() + entropy.sum()).backward()
    assert len(calls) == 10  # every chunk recomputed, the dummy-only ones too
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain_logp, plain_entropy = token_logprobs(hidden, lambda h: h @ weight.T, targets, **options)
    (plain_logp.sum() + plain_entropy.sum()).backward()
    close = lambda a, b: (a - b).abs().max().item() <= 1e-6  # noqa: E731
    assert close(logp, plain_logp) and close(entropy, plain_entropy)
    assert close(grads[0], hidden.grad) and close(grads[1], weight.grad)
    with pytest.raises(ValueError, match="2 chunks cannot hold 10 tokens of at most 4 each"):
        token_logprobs(torch.zeros(10, 6), head, torch.zeros(10, dtype=torch.long), num_chunks=2, **options)
