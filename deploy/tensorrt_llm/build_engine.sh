#!/usr/bin/env bash
# Build a TensorRT-LLM engine from a Hugging Face checkpoint and write a Triton model repository
# around it: OUTPUT_REPO/tensorrt_llm/{config.pbtxt, 1/, engine/, tokenizer/,
# xgrammar_tokenizer_info.json}.
#
# Runs on a GPU node inside NVIDIA's Triton TensorRT-LLM container
# (nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3), with this repository mounted: the
# engine must be built by the TensorRT-LLM version that will serve it, on the same GPU model.
#
# usage: deploy/tensorrt_llm/build_engine.sh HF_MODEL_DIR OUTPUT_REPO
#   HF_MODEL_DIR  a Hugging Face checkpoint: config.json, *.safetensors, tokenizer files
#   OUTPUT_REPO   the model repository to write (mounted at SERVE_ROOT when Triton runs)
#
# environment, with defaults:
#   MODEL_FAMILY=llama       TensorRT-LLM example whose convert_checkpoint.py reads this model
#                            (llama also covers Mistral; others: qwen, gemma, phi, ...)
#   DTYPE=auto               auto | float16 | bfloat16 (auto: the checkpoint's own)
#   TP_SIZE=1 PP_SIZE=1      tensor / pipeline parallel GPUs (serve with TP_SIZE*PP_SIZE ranks)
#   MAX_BATCH_SIZE=64        requests in flight in the engine (and Triton's max_batch_size)
#   MAX_INPUT_LEN=4096       longest prompt
#   MAX_SEQ_LEN=8192         prompt + output
#   MAX_NUM_TOKENS=8192      tokens per engine step (prefill chunks and decode tokens together)
#   KV_CACHE_FRACTION=0.9    of the GPU memory left after the weights
#   ENABLE_KV_CACHE_REUSE=true
#   GUIDED_DECODING=true     write xgrammar_tokenizer_info.json (xgrammar_info.py) and turn the
#                            backend's xgrammar guided decoding on: the gateway's response_format
#                            json_object / json_schema and forced tool calls. Costs nothing per
#                            request that sends no guide.
#   GATHER_GENERATION_LOGITS=false
#                            true: build with --gather_generation_logits, which the gateway's
#                            top_logprobs needs (logprobs alone do not: output_log_probs comes from
#                            any engine). Cost: each request asking for it gets a pinned host buffer
#                            of max_tokens x vocab x 4 bytes (1,000 tokens of a 128k vocabulary:
#                            ~0.5 GB), and every streamed token carries vocab x 4 bytes of logits
#                            from GPU to host, through Triton's gRPC and into the gateway, which
#                            takes the log-softmax on its CPU. false: the config leaves the
#                            generation_logits output out and the gateway refuses top_logprobs.
#   SERVE_ROOT=/models       where OUTPUT_REPO is mounted for tritonserver (paths in the config)
#   TRTLLM_EXAMPLES          TensorRT-LLM's examples/ directory (searched for, else cloned)
#   CONVERT_ARGS, BUILD_ARGS extra arguments for convert_checkpoint.py / trtllm-build
#   WORK_DIR                 scratch for the converted checkpoint (default: a temp dir, removed)
set -euo pipefail

die() { echo "build_engine: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

[[ $# -eq 2 ]] || die "usage: $0 HF_MODEL_DIR OUTPUT_REPO (see the header for the environment)"
HF_MODEL_DIR=$(realpath "$1")
OUTPUT_REPO=$(realpath -m "$2")
[[ -f "$HF_MODEL_DIR/config.json" ]] || die "$HF_MODEL_DIR has no config.json: not a Hugging Face checkpoint"

MODEL_FAMILY=${MODEL_FAMILY:-llama}
DTYPE=${DTYPE:-auto}
TP_SIZE=${TP_SIZE:-1}
PP_SIZE=${PP_SIZE:-1}
MAX_BATCH_SIZE=${MAX_BATCH_SIZE:-64}
MAX_INPUT_LEN=${MAX_INPUT_LEN:-4096}
MAX_SEQ_LEN=${MAX_SEQ_LEN:-8192}
MAX_NUM_TOKENS=${MAX_NUM_TOKENS:-8192}
KV_CACHE_FRACTION=${KV_CACHE_FRACTION:-0.9}
ENABLE_KV_CACHE_REUSE=${ENABLE_KV_CACHE_REUSE:-true}
GUIDED_DECODING=${GUIDED_DECODING:-true}
GATHER_GENERATION_LOGITS=${GATHER_GENERATION_LOGITS:-false}
for flag in GUIDED_DECODING GATHER_GENERATION_LOGITS; do
    [[ ${!flag} == true || ${!flag} == false ]] || die "$flag must be true or false, not '${!flag}'"
done
if [[ "$GUIDED_DECODING" == true && ! -f "$HF_MODEL_DIR/tokenizer.json" ]]; then
    die "GUIDED_DECODING=true needs $HF_MODEL_DIR/tokenizer.json (or set GUIDED_DECODING=false)"
fi
SERVE_ROOT=${SERVE_ROOT:-/models}
read -r -a CONVERT_EXTRA <<< "${CONVERT_ARGS:-}"
read -r -a BUILD_EXTRA <<< "${BUILD_ARGS:-}"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODEL_DIR="$OUTPUT_REPO/tensorrt_llm"
ENGINE_DIR="$MODEL_DIR/engine"
TOKENIZER_DIR="$MODEL_DIR/tokenizer"
TOKENIZER_INFO_NAME=xgrammar_tokenizer_info.json

if [[ -z "${WORK_DIR:-}" ]]; then
    WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/trtllm-build.XXXXXX")
    trap 'rm -rf "$WORK_DIR"' EXIT
fi
mkdir -p "$WORK_DIR"

command -v trtllm-build >/dev/null || die "trtllm-build not found: run this inside the Triton TRT-LLM container"
nvidia-smi -L >/dev/null 2>&1 || die "no GPU visible (nvidia-smi -L failed): the engine is built for the GPU it runs on"
TRTLLM_VERSION=$(python3 -c 'import tensorrt_llm; print(tensorrt_llm.__version__)' 2>/dev/null | tail -n 1) \
    || die "python3 cannot import tensorrt_llm"
say "TensorRT-LLM $TRTLLM_VERSION, model family '$MODEL_FAMILY', $(nvidia-smi -L | head -n 1)"

# convert_checkpoint.py of the model family: examples/models/core/<family>/ since TensorRT-LLM 0.17
# (contrib/ for community models), examples/<family>/ before.
find_converter() {
    local root=$1 layout
    for layout in "models/core/$MODEL_FAMILY" "models/contrib/$MODEL_FAMILY" "$MODEL_FAMILY"; do
        if [[ -f "$root/$layout/convert_checkpoint.py" ]]; then
            echo "$root/$layout/convert_checkpoint.py"
            return 0
        fi
    done
    return 1
}

CONVERTER=""
for root in ${TRTLLM_EXAMPLES:+"$TRTLLM_EXAMPLES"} /app/tensorrt_llm/examples /app/examples \
    /opt/tensorrt_llm/examples "$PWD/TensorRT-LLM/examples" "$PWD/tensorrt_llm/examples"; do
    if CONVERTER=$(find_converter "$root"); then
        break
    fi
done
if [[ -z "$CONVERTER" ]]; then
    # the examples are not in the container: fetch the ones of the installed version
    say "no examples/ found; cloning TensorRT-LLM v$TRTLLM_VERSION (sources only, no LFS)"
    GIT_LFS_SKIP_SMUDGE=1 git clone --quiet --depth 1 --branch "v$TRTLLM_VERSION" \
        https://github.com/NVIDIA/TensorRT-LLM.git "$WORK_DIR/TensorRT-LLM" \
        || die "clone failed: set TRTLLM_EXAMPLES to a TensorRT-LLM checkout's examples/ of v$TRTLLM_VERSION"
    CONVERTER=$(find_converter "$WORK_DIR/TensorRT-LLM/examples") \
        || die "TensorRT-LLM v$TRTLLM_VERSION has no convert_checkpoint.py for '$MODEL_FAMILY'"
fi
say "converter: $CONVERTER"

say "converting $HF_MODEL_DIR (dtype $DTYPE, tp $TP_SIZE, pp $PP_SIZE)"
python3 "$CONVERTER" \
    --model_dir "$HF_MODEL_DIR" \
    --output_dir "$WORK_DIR/checkpoint" \
    --dtype "$DTYPE" \
    --tp_size "$TP_SIZE" \
    --pp_size "$PP_SIZE" \
    "${CONVERT_EXTRA[@]}"

# Paged KV cache: what inflight batching allocates from. Paged context FMHA: prefill reads and
# writes KV blocks, which enable_kv_cache_reuse (prefix reuse) and enable_chunked_context need.
# --kv_cache_type replaced --paged_kv_cache in TensorRT-LLM 0.12.
if trtllm-build --help 2>/dev/null | grep -q -- '--kv_cache_type'; then
    KV_CACHE_ARGS=(--kv_cache_type paged)
else
    KV_CACHE_ARGS=(--paged_kv_cache enable)
fi
# Only the engine can hand out a step's full-vocabulary logits, and only if built to (see
# GATHER_GENERATION_LOGITS in the header for what it costs).
LOGITS_ARGS=()
FILL_LOGITS=(--no-generation-logits)
if [[ "$GATHER_GENERATION_LOGITS" == true ]]; then
    LOGITS_ARGS=(--gather_generation_logits)
    FILL_LOGITS=()
fi
say "building the engine into $ENGINE_DIR"
rm -rf "$ENGINE_DIR"
trtllm-build \
    --checkpoint_dir "$WORK_DIR/checkpoint" \
    --output_dir "$ENGINE_DIR" \
    --gemm_plugin auto \
    --gpt_attention_plugin auto \
    --remove_input_padding enable \
    --context_fmha enable \
    --use_paged_context_fmha enable \
    "${KV_CACHE_ARGS[@]}" \
    --max_batch_size "$MAX_BATCH_SIZE" \
    --max_input_len "$MAX_INPUT_LEN" \
    --max_seq_len "$MAX_SEQ_LEN" \
    --max_num_tokens "$MAX_NUM_TOKENS" \
    --max_beam_width 1 \
    --workers "$((TP_SIZE * PP_SIZE))" \
    "${LOGITS_ARGS[@]}" \
    "${BUILD_EXTRA[@]}"

# The gateway tokenizes with these files (tokenizer.json + tokenizer_config.json, which holds the
# chat template); the backend only records the path.
say "copying the tokenizer into $TOKENIZER_DIR"
mkdir -p "$TOKENIZER_DIR"
for name in tokenizer.json tokenizer_config.json special_tokens_map.json tokenizer.model \
    generation_config.json config.json; do
    if [[ -f "$HF_MODEL_DIR/$name" ]]; then
        cp "$HF_MODEL_DIR/$name" "$TOKENIZER_DIR/"
    fi
done
[[ -f "$TOKENIZER_DIR/tokenizer.json" ]] || say "warning: no tokenizer.json: the gateway needs a fast (Rust) tokenizer file"

# Guided decoding: the C++ backend builds xgrammar's tokenizer from this JSON (the vocabulary, the
# serialized tokenizer.json and the eos id), not from tokenizer_dir.
FILL_GUIDED=()
if [[ "$GUIDED_DECODING" == true ]]; then
    python3 -c 'import tokenizers' 2>/dev/null \
        || { say "installing tokenizers for xgrammar_info.py"; python3 -m pip install --quiet tokenizers; }
    say "writing $MODEL_DIR/$TOKENIZER_INFO_NAME (guided decoding)"
    python3 "$HERE/xgrammar_info.py" "$TOKENIZER_DIR" --output "$MODEL_DIR/$TOKENIZER_INFO_NAME"
    FILL_GUIDED=(--guided-decoding-tokenizer-info "$SERVE_ROOT/tensorrt_llm/$TOKENIZER_INFO_NAME")
else
    rm -f "$MODEL_DIR/$TOKENIZER_INFO_NAME"
fi

# TensorRT-LLM <= 0.19 reads seed and min_tokens as random_seed and min_length
FILL_EXTRA=()
IFS=. read -r MAJOR MINOR _ <<< "$TRTLLM_VERSION"
if [[ "$MAJOR" == 0 && "${MINOR%%[!0-9]*}" -lt 20 ]]; then
    FILL_EXTRA=(--legacy-names)
fi
python3 -c 'import tritonclient.grpc.model_config_pb2' 2>/dev/null \
    || { say "installing tritonclient[grpc] for fill_config.py"; python3 -m pip install --quiet 'tritonclient[grpc]'; }
python3 "$HERE/fill_config.py" \
    --output-repo "$OUTPUT_REPO" \
    --engine-dir "$SERVE_ROOT/tensorrt_llm/engine" \
    --tokenizer-dir "$SERVE_ROOT/tensorrt_llm/tokenizer" \
    --max-batch-size "$MAX_BATCH_SIZE" \
    --kv-cache-free-gpu-mem-fraction "$KV_CACHE_FRACTION" \
    --enable-kv-cache-reuse "$ENABLE_KV_CACHE_REUSE" \
    "${FILL_GUIDED[@]}" \
    "${FILL_LOGITS[@]}" \
    "${FILL_EXTRA[@]}" \
    --force

WORLD=$((TP_SIZE * PP_SIZE))
say "guided decoding: $GUIDED_DECODING; top_logprobs (--gather_generation_logits): $GATHER_GENERATION_LOGITS"
say "done. Serve it with OUTPUT_REPO mounted at $SERVE_ROOT:"
if [[ $WORLD -eq 1 ]]; then
    echo "  tritonserver --model-repository=$SERVE_ROOT --model-control-mode=explicit --load-model=tensorrt_llm" >&2
else
    # one MPI rank per GPU; TensorRT-LLM's launcher starts them (ranks > 0 load tensorrt_llm only)
    echo "  python3 TensorRT-LLM/triton_backend/scripts/launch_triton_server.py --world_size $WORLD \\" >&2
    echo "      --model_repo $SERVE_ROOT" >&2
fi
