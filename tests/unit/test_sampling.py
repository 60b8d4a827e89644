from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ModelConfig
from gateway.core.models import ServedModel
from gateway.core.sampling import resolve_sampling
from gateway.core.types import SamplingInput, SamplingParams
from gateway.engine.contract import ModelContract, build_request
from gateway.errors import ContextLengthExceeded, InvalidRequest, UnsupportedParameter
from gateway.text.tokenizer import Tokenizer
from tests.conftest import WEIGHTS, read_model_config


@pytest.fixture
def model(tokenizer: Tokenizer) -> ServedModel:
    config = ModelConfig(
        id="m", triton_model="smollm2", tokenizer_dir=Path(WEIGHTS), context_length=100, max_output_tokens=50
    )
    return ServedModel(config, tokenizer, None, 100, 0, None)  # type: ignore[arg-type]


def resolve(
    model: ServedModel,
    contract: ModelContract,
    *,
    prompt_tokens: int,
    default_max_tokens: int,
    prompt_param: str = "messages",
    **given: object,
) -> SamplingParams:
    return resolve_sampling(
        model,
        contract,
        SamplingInput(**given),  # type: ignore[arg-type]
        prompt_tokens=prompt_tokens,
        default_max_tokens=default_max_tokens,
        prompt_param=prompt_param,
    )


def test_defaults_fill_the_room_left_by_the_prompt(model: ServedModel, contract: ModelContract) -> None:
    s = resolve(model, contract, prompt_tokens=80, max_tokens=None, default_max_tokens=40)
    assert s.max_tokens == 20 and s.temperature == 1.0 and s.top_p == 1.0 and s.top_k == 0
    s = resolve(model, contract, prompt_tokens=10, max_tokens=None, default_max_tokens=40)
    assert s.max_tokens == 40


def test_top_k_past_the_vocabulary_is_the_vocabulary(
    model: ServedModel, contract: ModelContract, tokenizer: Tokenizer
) -> None:
    """A top_k past 2**31 failed to pack into its INT32 tensor: a 500 on REST, INTERNAL on gRPC (uint32)."""
    s = resolve(model, contract, prompt_tokens=1, max_tokens=1, default_max_tokens=8, temperature=0.5, top_k=2**40)
    assert s.top_k == tokenizer.vocab_size
    build_request(contract, "r", [1], s, None, None)  # packs
    assert resolve(model, contract, prompt_tokens=1, max_tokens=1, default_max_tokens=8, top_k=40).top_k == 40


def test_max_tokens_over_the_model_limit(model: ServedModel, contract: ModelContract) -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve(model, contract, prompt_tokens=1, max_tokens=51, default_max_tokens=8)
    assert err.value.param == "max_tokens"


def test_prompt_plus_max_tokens_over_context(model: ServedModel, contract: ModelContract) -> None:
    with pytest.raises(ContextLengthExceeded) as err:
        resolve(model, contract, prompt_tokens=90, max_tokens=20, default_max_tokens=8, prompt_param="prompt")
    assert err.value.param == "prompt"
    with pytest.raises(ContextLengthExceeded):
        resolve(model, contract, prompt_tokens=100, max_tokens=None, default_max_tokens=8)


def test_parameter_the_model_lacks_is_rejected_by_name(model: ServedModel) -> None:
    contract = ModelContract.from_config(read_model_config("synthetic"))  # no penalties, logprobs, guides
    with pytest.raises(UnsupportedParameter) as err:
        resolve(model, contract, prompt_tokens=1, max_tokens=4, default_max_tokens=8, presence_penalty=0.5)
    assert err.value.param == "presence_penalty"
    # the default value is not a request for the feature
    s = resolve(model, contract, prompt_tokens=1, max_tokens=4, default_max_tokens=8, presence_penalty=0.0)
    assert s.presence_penalty == 0.0


def test_min_tokens_above_max_tokens(model: ServedModel, contract: ModelContract) -> None:
    with pytest.raises(InvalidRequest) as err:
        resolve(model, contract, prompt_tokens=1, max_tokens=4, default_max_tokens=8, min_tokens=5)
    assert err.value.param == "min_tokens"


def test_greedy(model: ServedModel, contract: ModelContract) -> None:
    assert resolve(model, contract, prompt_tokens=1, max_tokens=4, default_max_tokens=8, temperature=0).greedy
    assert resolve(model, contract, prompt_tokens=1, max_tokens=4, default_max_tokens=8, top_k=1).greedy
    assert not resolve(model, contract, prompt_tokens=1, max_tokens=4, default_max_tokens=8).greedy


def test_features_the_model_lacks_are_rejected_by_name(model: ServedModel) -> None:
    contract = ModelContract.from_config(read_model_config("synthetic"))
    for given, param in [
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 2, "logprobs_param": "top_logprobs"}, "top_logprobs"),
        ({"logit_bias": ((1, 2.0),)}, "logit_bias"),
        ({"repetition_penalty": 1.3}, "repetition_penalty"),
    ]:
        with pytest.raises(UnsupportedParameter) as err:
            resolve(model, contract, prompt_tokens=1, max_tokens=4, default_max_tokens=8, **given)
        assert err.value.param == param


def test_new_sampling_fields_reach_the_params(model: ServedModel, contract: ModelContract) -> None:
    s = resolve(
        model,
        contract,
        prompt_tokens=1,
        max_tokens=4,
        default_max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        logit_bias=((5, -100.0),),
        repetition_penalty=1.1,
        stop_token_ids=(7,),
    )
    assert s.logprobs and s.top_logprobs == 3 and s.logit_bias == ((5, -100.0),)
    assert s.repetition_penalty == 1.1 and s.stop_token_ids == (7,)
    for given, param in [
        ({"logit_bias": ((10**6, 1.0),)}, "logit_bias"),
        ({"stop_token_ids": (-1,)}, "stop_token_ids"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            resolve(model, contract, prompt_tokens=1, max_tokens=4, default_max_tokens=8, **given)
        assert err.value.param == param
