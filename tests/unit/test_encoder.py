"""gateway/embedded/encoder.py on the prepared all-MiniLM-L6-v2 and on the toy cross-encoder;
minilm_prepare's output; model_repository/minilm's declared contract and the parameters it reads
(gateway/embedded/model_params.py, shared by every Python-backend model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tokenizers import Tokenizer
from tritonclient.grpc import model_config_pb2

from gateway.embedded.encoder import Encoder, Rows
from gateway.embedded.minilm_prepare import MAX_LENGTH, is_prepared, prepare_minilm
from gateway.embedded.model_params import ModelParams, ParameterError
from gateway.embedded.prepared import COMPLETE_MARKER
from tests.toy_cross_encoder import build_cross_encoder

REPO = Path(__file__).resolve().parents[2]
MINILM = REPO / "model_repository" / "minilm"
PAIR = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = "The stock market fell sharply today."
SENTENCES = [
    "Hi.",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Embeddings of padded rows must not change.",
    "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen.",
]


@pytest.fixture(scope="module")
def weights() -> Path:
    return prepare_minilm(MINILM / "weights", lambda _: None)  # idempotent: `make` prepares it too


@pytest.fixture(scope="module")
def tokenizer(weights: Path) -> Tokenizer:
    return Tokenizer.from_file(str(weights / "tokenizer.json"))


@pytest.fixture(scope="module")
def encoder(weights: Path, tokenizer: Tokenizer) -> Encoder:
    return Encoder(weights / "model.onnx", vocab_size=tokenizer.get_vocab_size(), max_length=MAX_LENGTH)


def rows(tokenizer: Tokenizer, text: str | tuple[str, str]) -> Rows:
    e = tokenizer.encode(*text) if isinstance(text, tuple) else tokenizer.encode(text)
    return np.array([e.ids]), np.array([e.attention_mask]), np.array([e.type_ids])


def padded(tokenizer: Tokenizer, texts: list[str], extra: int = 0) -> Rows:
    """One block ``[n, longest + extra]``, zero-padded on the right."""
    encodings = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings) + extra
    arrays = [np.zeros((len(texts), width), dtype=np.int64) for _ in range(3)]
    for i, e in enumerate(encodings):
        for array, values in zip(arrays, (e.ids, e.attention_mask, e.type_ids), strict=True):
            array[i, : len(values)] = values
    return arrays[0], arrays[1], arrays[2]


# --- the prepared weights ---------------------------------------------------------------------


def test_prepared_weights_hold_the_model_and_an_untruncated_tokenizer(weights: Path) -> None:
    assert is_prepared(weights)
    assert sorted(p.name for p in weights.iterdir()) == sorted(
        [COMPLETE_MARKER, "model.onnx", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    )
    tokenizer = Tokenizer.from_file(str(weights / "tokenizer.json"))
    assert tokenizer.truncation is None and tokenizer.padding is None
    long_text = " ".join(["word"] * 300)
    assert len(tokenizer.encode(long_text).ids) == 302  # [CLS] ... [SEP], nothing cut, nothing padded
    assert len(tokenizer.encode("Hi").ids) == 3
    config = json.loads((weights / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == MAX_LENGTH == 256
    assert config["do_lower_case"] is True


def test_prepare_is_idempotent_and_atomic(weights: Path, tmp_path: Path) -> None:
    said: list[str] = []
    assert prepare_minilm(weights, said.append) == weights
    assert said == [f"embedding model ready in {weights}"]  # nothing redone
    target = tmp_path / "weights"
    target.mkdir()
    (target / "leftover").write_text("from an interrupted run")  # no marker: rebuilt from scratch
    prepare_minilm(target, lambda _: None)
    assert is_prepared(target) and not (target / "leftover").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["weights"]  # no temporary directory left behind
    assert (target / "tokenizer.json").read_bytes() == (weights / "tokenizer.json").read_bytes()


# --- embeddings ---------------------------------------------------------------------------------


def test_sbert_pair_is_similar_and_an_unrelated_sentence_is_not(encoder: Encoder, tokenizer: Tokenizer) -> None:
    out = encoder.run([rows(tokenizer, t) for t in (*PAIR, UNRELATED)])
    assert out.shape == (3, 384) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    related, unrelated = float(out[0] @ out[1]), float(out[0] @ out[2])
    assert 0.70 <= related <= 0.80, related
    assert unrelated < related - 0.4, unrelated


def test_padding_and_batching_do_not_change_embeddings(encoder: Encoder, tokenizer: Tokenizer) -> None:
    alone = np.concatenate([encoder.run([rows(tokenizer, s)]) for s in SENTENCES])
    ragged = encoder.run([rows(tokenizer, s) for s in SENTENCES])  # five blocks of five lengths
    one_block = encoder.run([padded(tokenizer, SENTENCES, extra=7)])  # client-side padding too
    assert len({rows(tokenizer, s)[0].shape[1] for s in SENTENCES}) == len(SENTENCES)
    np.testing.assert_allclose(ragged, alone, atol=1e-5)
    np.testing.assert_allclose(one_block, alone, atol=1e-5)
    checked = [encoder.check(rows(tokenizer, s)) for s in SENTENCES]  # as the Triton model does: once each
    assert all(block.ids.dtype == np.int64 and block.ids.ndim == 2 for block in checked)
    np.testing.assert_array_equal(encoder.run_checked(checked), ragged)


def test_a_batch_over_the_token_budget_runs_in_chunks_with_the_same_results(
    weights: Path, encoder: Encoder, tokenizer: Tokenizer
) -> None:
    small = Encoder(weights / "model.onnx", max_batch_tokens=40)  # a few rows per call, shortest first
    batch = [rows(tokenizer, s) for s in reversed(SENTENCES)] + [padded(tokenizer, SENTENCES[:2])]
    np.testing.assert_allclose(small.run(batch), encoder.run(batch), atol=1e-5)


def test_cls_pooling_and_no_normalisation(weights: Path, encoder: Encoder, tokenizer: Tokenizer) -> None:
    batch = [rows(tokenizer, s) for s in PAIR]
    raw = Encoder(weights / "model.onnx", normalize=False).run(batch)
    cls = Encoder(weights / "model.onnx", pooling="cls").run(batch)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / norms, encoder.run(batch), atol=1e-5)
    assert np.allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(cls, encoder.run(batch), atol=1e-2)


# --- the toy cross-encoder ----------------------------------------------------------------------


def test_toy_cross_encoder_scores_pairs(weights: Path, tokenizer: Tokenizer, tmp_path: Path) -> None:
    toy = build_cross_encoder(tmp_path / "toy", weights)
    assert {p.name for p in toy.iterdir()} >= {"model.onnx", "tokenizer.json", "tokenizer_config.json"}
    scorer = Encoder(toy / "model.onnx", task="score", vocab_size=tokenizer.get_vocab_size())
    query = "What is a man eating?"
    pairs = [rows(tokenizer, (query, doc)) for doc in (*PAIR, UNRELATED)]
    logits = scorer.run(pairs)
    assert logits.shape == (3, 1) and logits.dtype == np.float32
    assert len({round(float(x), 5) for x in logits[:, 0]}) == 3
    np.testing.assert_allclose(scorer.run(pairs[1:2]), logits[1:2], atol=1e-6)  # batching changes nothing
    again = Encoder(build_cross_encoder(tmp_path / "again", weights) / "model.onnx", task="score").run(pairs)
    other = Encoder(build_cross_encoder(tmp_path / "other", weights, seed=1) / "model.onnx", task="score").run(pairs)
    np.testing.assert_array_equal(again, logits)  # one seed, one model
    assert not np.allclose(other, logits)


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ids, mask, types: (ids, mask[:, :-1], types[:, :-1]), "input shapes differ"),
        (lambda ids, mask, types: (ids, mask, types[None]), "must be \\[batch, tokens\\]"),
        (lambda ids, mask, types: (ids.astype(np.float32), mask, types), "must hold integers"),
        (lambda ids, mask, types: (ids[:, :0], mask[:, :0], types[:, :0]), "no tokens"),
        (lambda ids, mask, types: (ids + 40000, mask, types), "input_ids out of range"),
        (lambda ids, mask, types: (ids, mask * 2, types), "attention_mask must hold 0 or 1"),
        (lambda ids, mask, types: (ids, mask * 0, types), "has no token"),
        (lambda ids, mask, types: (ids, mask, types + 2), "token_type_ids out of range"),
        (lambda ids, mask, types: (ids,) * 2, "expected input_ids"),
    ],
)
def test_bad_rows_are_refused_clearly(encoder: Encoder, tokenizer: Tokenizer, change: object, message: str) -> None:
    bad = change(*rows(tokenizer, PAIR[0]))  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        encoder.check(bad)
    with pytest.raises(ValueError, match=message):  # run refuses the batch before any work
        encoder.run([rows(tokenizer, PAIR[1]), bad])


def test_too_long_rows_and_empty_batches_are_refused(encoder: Encoder) -> None:
    ids = np.full((1, MAX_LENGTH + 1), 1000, dtype=np.int64)
    with pytest.raises(ValueError, match=f"257 tokens; at most {MAX_LENGTH}"):
        encoder.check((ids, np.ones_like(ids), np.zeros_like(ids)))
    with pytest.raises(ValueError, match="nothing to run"):
        encoder.run([])
    with pytest.raises(ValueError, match="nothing to run"):
        encoder.run_checked([])


def test_bad_settings_are_refused(weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task"):
        Encoder(weights / "model.onnx", task="rerank")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooling"):
        Encoder(weights / "model.onnx", pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score output"):  # [B, T, 384] is no logit
        Encoder(weights / "model.onnx", task="score")
    with pytest.raises(FileNotFoundError):
        Encoder(tmp_path / "model.onnx")


# --- the Triton model's declared contract -------------------------------------------------------


def test_minilm_config_declares_the_embedding_contract() -> None:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((MINILM / "config.pbtxt").read_text(), config)
    assert config.name == "minilm" and config.backend == "python"
    assert config.max_batch_size == 256
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [(i.name, i.data_type, list(i.dims), i.allow_ragged_batch, i.optional) for i in config.input] == [
        (name, model_config_pb2.TYPE_INT64, [-1], True, False)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("embeddings", model_config_pb2.TYPE_FP32, [384])
    ]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["task"] == "embed" and params["weights_dir"] == "weights"
    assert params["pooling"] == "mean" and params["normalize"] == "true"
    assert int(params["threads"]) >= 0 and int(params["max_batch_tokens"]) >= MAX_LENGTH


def model_args(directory: Path, **params: str) -> dict[str, str]:
    """What Triton hands a Python-backend model's initialize: the config as JSON, the model's directory."""
    config = {"name": "m", "parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {"model_config": json.dumps(config), "model_repository": str(directory)}


def test_model_parameters_are_read_with_defaults_and_refused_clearly(tmp_path: Path) -> None:
    params = ModelParams(model_args(tmp_path, threads=" 4 ", normalize="False", task="SCORE", blank=" "))
    assert params.config["name"] == "m"
    assert params.integer("threads", 0, 0) == 4 and params.integer("unset", 8192, 1) == 8192
    assert params.flag("normalize", True) is False and params.flag("unset", True) is True
    assert params.choice("task", ("embed", "score")) == "score" and params.choice("unset", ("mean", "cls")) == "mean"
    assert params.text("blank", "int8") == "int8" and params.text("unset") == ""
    bad = ModelParams(model_args(tmp_path, threads="four", beams="0", normalize="maybe", task="rerank"))
    with pytest.raises(ParameterError, match="parameter threads must be an integer, not 'four'"):
        bad.integer("threads", 0, 0)
    with pytest.raises(ParameterError, match="parameter beams must be at least 1, not 0"):
        bad.integer("beams", 1, 1)
    with pytest.raises(ParameterError, match="parameter normalize must be true or false, not 'maybe'"):
        bad.flag("normalize", True)
    with pytest.raises(ParameterError, match="parameter task must be one of embed, score, not 'rerank'"):
        bad.choice("task", ("embed", "score"))


def test_weights_dir_is_relative_to_the_model_and_must_be_prepared(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.onnx").write_bytes(b"")
    assert ModelParams(model_args(tmp_path)).weights_dir("model.onnx") == tmp_path / "weights"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert ModelParams(model_args(tmp_path / "x", weights_dir=str(elsewhere))).weights_dir() == elsewhere
    with pytest.raises(ParameterError, match=r"no prepared model in .*weights \(no tokenizer.json\): run"):
        ModelParams(model_args(tmp_path)).weights_dir("model.onnx", "tokenizer.json")
