"""A model's tokenizer and chat template, loaded from its Hugging Face tokenizer files.

``tokenizer.json`` is read with the Rust ``tokenizers`` library; the chat template comes from
``tokenizer_config.json`` (or ``chat_template.jinja``) and is rendered with a sandboxed Jinja
environment. No ``transformers`` at serve time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers.decoders import DecodeStream

from gateway.errors import InvalidRequest
from gateway.text.pieces import PieceEncoder
from gateway.text.tool_prompt import template_supports_tools

# Prompts up to this many characters are templated and tokenized inline (tens of µs); larger ones on
# a thread, so one huge request cannot stall every stream of the process (tokenizers drops the GIL).
INLINE_CHARS = 32_768
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")
_STOP_CACHE_SIZE = 1024


def content_chars(messages: list[dict[str, Any]]) -> int:
    """The characters of a chat's contents: what bounds its tokenization cost and its token count."""
    return sum(len(m["content"]) for m in messages)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _special(value: Any) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} as older tokenizer_config files write it
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._tok = _RustTokenizer.from_file(str(directory / "tokenizer.json"))
        config_path = directory / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = config.get("chat_template")
        jinja_file = directory / "chat_template.jinja"
        if jinja_file.is_file():
            template = jinja_file.read_text()
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.bos_token = _special(config.get("bos_token"))
        self.eos_token = _special(config.get("eos_token"))
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        pad = _special(config.get("pad_token"))
        self.pad_token_id = self._tok.token_to_id(pad) if pad else self.eos_token_id
        self.model_max_length = int(config.get("model_max_length") or 0) or None
        # the most characters one token can stand for: a prompt of n characters is >= n / this tokens
        self.max_token_chars = max((len(piece) for piece in self._tok.get_vocab(with_added_tokens=True)), default=1)
        self._stop_cache: dict[tuple[str, ...], tuple[tuple[int, ...], ...]] = {}
        self._pieces: dict[int, tuple[str, bytes]] = {}
        self._frame: tuple[int, int] | None = None
        self._byte_level = _has_byte_level(self._tok)
        self._prompts = PieceEncoder(self._tok)
        self._vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.supports_tools = template_supports_tools(template or "")  # the template renders `tools` itself
        self._template = None
        self._globals: dict[str, Any] = {}
        if template:
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = _raise_exception
            env.filters["tojson"] = _tojson  # as Hugging Face renders templates: keys kept in order, no HTML escaping
            self._template = env.from_string(template)
            # its globals flattened once: Template.render copies the environment's ChainMap into a new dict
            # per call, a share of a short prompt's render (new_context with shared=True takes ours as is)
            self._globals = dict(self._template.globals)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text are parsed as such."""
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        return ids

    def encode_text(self, text: str, add_special_tokens: bool) -> list[int]:
        """Token ids of ``text``, with the special tokens the tokenizer's post-processor adds if asked."""
        ids: list[int] = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def _encode_text_unlocked(self, text: str, add_special_tokens: bool) -> list[int]:
        ids: list[int] = self._tok.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids
        return ids

    async def encode_text_async(self, text: str, add_special_tokens: bool) -> list[int]:
        """:meth:`encode_text` on a worker thread (for large texts; it drops the GIL there)."""
        return await asyncio.get_running_loop().run_in_executor(
            _POOL, self._encode_text_unlocked, text, add_special_tokens
        )

    def token_str(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id) or ""

    def encode_inputs(self, texts: Sequence[str | tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """Token ids and token type ids of each text, or (query, document) pair, with the model's special
        tokens added as an encoder takes them ([CLS] a [SEP] b [SEP] for BERT). Drops the GIL."""
        encoded = self._tok.encode_batch_fast(list(texts), add_special_tokens=True)
        return [(e.ids, e.type_ids) for e in encoded]

    async def encode_inputs_async(self, texts: Sequence[str | tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """:meth:`encode_inputs`, on a worker thread when the texts are large."""
        chars = sum(len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in texts)
        if chars <= INLINE_CHARS:
            return self.encode_inputs(texts)
        return await asyncio.get_running_loop().run_in_executor(_POOL, self.encode_inputs, texts)

    def special_frame(self) -> tuple[int, int]:
        """How many special tokens :meth:`encode_inputs` puts before and after a single text."""
        if self._frame is None:
            self._frame = self._find_frame()
        return self._frame

    def _find_frame(self) -> tuple[int, int]:
        framed = self._tok.encode("a", add_special_tokens=True).ids
        body = self._tok.encode("a", add_special_tokens=False).ids
        for at in range(len(framed) - len(body) + 1):
            if framed[at : at + len(body)] == body:
                return at, len(framed) - at - len(body)
        return 0, 0

    def min_tokens(self, chars: int) -> int:
        """A lower bound on the tokens of a text of ``chars`` characters, known without tokenizing it."""
        return chars // self.max_token_chars

    def encode_unlocked(self, text: str) -> list[int]:
        """:meth:`encode` for a worker thread: the library's batch entry point drops the GIL while it works
        (``encode`` itself holds it throughout, which would stall the event loop all the same). Pieces of
        the text seen before are not tokenized again (:mod:`.pieces`)."""
        return self._prompts.encode(text, drop_gil=True)

    async def encode_async(self, text: str) -> list[int]:
        """:meth:`encode`, on a worker thread when the text is large."""
        if len(text) <= INLINE_CHARS:
            return self.encode(text)
        return await asyncio.get_running_loop().run_in_executor(_POOL, self.encode_unlocked, text)

    async def encode_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, prefill: str = ""
    ) -> list[int]:
        """The prompt ids of ``messages`` (and ``tools``, for templates that render them), followed by
        ``prefill`` (the start of the answer), off the event loop when they are large. Pieces of the prompt
        seen before (system prompts, tools, earlier turns) are not tokenized again (:mod:`.pieces`)."""
        if content_chars(messages) <= INLINE_CHARS and len(messages) <= 256:
            return self._prompts.encode(self.apply_chat_template(messages, tools) + prefill)
        return await asyncio.get_running_loop().run_in_executor(
            _POOL, lambda: self.encode_unlocked(self.apply_chat_template(messages, tools) + prefill)
        )

    def piece(self, token_id: int) -> tuple[str, bytes]:
        """A token as text and as its UTF-8 bytes (logprobs' ``token`` and ``bytes``); cached.

        A token that is part of a multi-byte character has no text of its own: its text is then
        ``bytes:\\xe2\\x80``, as OpenAI writes it.
        """
        cached = self._pieces.get(token_id)
        if cached is not None:
            return cached
        raw = self._raw_bytes(token_id)
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        if len(self._pieces) < _PIECE_CACHE_SIZE:
            self._pieces[token_id] = (text, raw)
        return text, raw

    def _raw_bytes(self, token_id: int) -> bytes:
        token = self._tok.id_to_token(token_id)
        if token is None:
            return b""
        if self._byte_level:
            if all(ch in _UNICODE_TO_BYTE for ch in token):
                return bytes(_UNICODE_TO_BYTE[ch] for ch in token)
            return token.encode()  # an added token (e.g. <|im_end|>) is its own text
        if token.startswith("<0x") and token.endswith(">") and len(token) == 6:  # SentencePiece byte fallback
            return bytes([int(token[3:5], 16)])
        return token.replace("\u2581", " ").encode()

    def stop_sequences(self, stops: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
        """Token sequences whose text is a stop string as a model would write it: alone, and after a
        space (byte-level BPE folds the space into the word's token). Sent to the model so it stops
        by itself; each decodes to text containing its stop string, so the gateway's text-level match
        never comes later than the model's."""
        cached = self._stop_cache.get(stops)
        if cached is not None:
            return cached
        seqs: list[tuple[int, ...]] = []
        for stop in stops:
            for text in (stop,) if stop[:1].isspace() else (stop, " " + stop):
                ids = tuple(self.encode(text))
                if ids and ids not in seqs and self.decode(ids) == text:
                    seqs.append(ids)
        if len(self._stop_cache) >= _STOP_CACHE_SIZE:
            self._stop_cache.clear()
        result = self._stop_cache[stops] = tuple(seqs)
        return result

    def decode(self, ids: Sequence[int]) -> str:
        text: str = self._tok.decode(list(ids), skip_special_tokens=True)
        return text

    def decode_stream(self) -> _StreamDecoder:
        return _StreamDecoder(self._tok)

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt text for ``messages`` with the generation prompt added.

        When the template writes the BOS token itself, the text already starts with it; nothing
        adds a second one (``encode`` adds no special tokens).
        """
        if self._template is None:
            raise InvalidRequest("this model has no chat template; use /v1/completions", param="messages")
        template = self._template
        context = template.new_context(
            {
                **self._globals,
                "messages": messages,
                "tools": tools,
                "add_generation_prompt": True,
                "bos_token": self.bos_token or "",
                "eos_token": self.eos_token or "",
            },
            shared=True,
        )
        try:
            text: str = template.environment.concat(template.root_render_func(context))
        except TemplateError as exc:
            raise InvalidRequest(
                f"messages could not be rendered by the chat template: {exc}", param="messages"
            ) from exc
        return text


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet: each byte is written as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_UNICODE_TO_BYTE = _bytes_to_unicode()
_PIECE_CACHE_SIZE = 1 << 18


def _has_byte_level(tok: _RustTokenizer) -> bool:
    return "ByteLevel" in type(tok.decoder).__name__ if tok.decoder is not None else False


class _StreamDecoder:
    """Incremental detokenization: text pieces as soon as they are whole UTF-8, spaces kept."""

    __slots__ = ("_stream", "_tok")

    def __init__(self, tok: _RustTokenizer) -> None:
        self._tok = tok
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str | None:
        piece: str | None = self._stream.step(self._tok, token_id)
        return piece
