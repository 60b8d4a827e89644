"""Whisper's text contract: the decoder prefix the gateway sends, and the transcript it gets back.

The Triton model takes a ``TEXT_PREFIX`` with Whisper's special tokens written out and returns the
decoded continuation as text (``TRANSCRIPTS``)::

    prefix:  <|startofprev|> earlier text<|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    output:  <|en|><|transcribe|><|0.00|> Hello world.<|2.40|><|2.40|> Next one.<|5.00|>

No language token in the prefix lets the model detect the language (it then starts its output with
one); no ``<|notimestamps|>`` asks for timestamps, relative to the window's start. A model may also
answer plain text without any special token: that is one segment spanning the window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import InvalidRequest

SOT = "<|startoftranscript|>"
SOT_PREV = "<|startofprev|>"
NO_TIMESTAMPS = "<|notimestamps|>"
END_OF_TEXT = "<|endoftext|>"
TASKS = ("transcribe", "translate")

PROMPT_MAX_CHARS = 200
"""The tail of a prompt (or of the previous window's text) that goes into the prefix. Whisper gives
its prompt at most 223 of its 448 decoder positions; 200 characters stay inside that budget for
every script, even where a character is a token or more."""

# Whisper's 99 languages (multilingual checkpoints up to large-v2), code -> English name as
# Whisper and OpenAI's verbose_json spell it
LANGUAGES: dict[str, str] = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
}

# what else a client may call a language: English names, and the ISO code Whisper spells otherwise
_ALIASES: dict[str, str] = {name: code for code, name in LANGUAGES.items()} | {
    "jv": "jw",
    "burmese": "my",
    "castilian": "es",
    "flemish": "nl",
    "haitian": "ht",
    "letzeburgesch": "lb",
    "mandarin": "zh",
    "moldavian": "ro",
    "moldovan": "ro",
    "panjabi": "pa",
    "pushto": "ps",
    "sinhalese": "si",
    "valencian": "ca",
}

_SPECIAL = re.compile(r"<\|([^|<>]*)\|>")
_TIMESTAMP = re.compile(r"\d+(?:\.\d+)?")


def normalize_language(language: str | None) -> str | None:
    """The Whisper code for ``language`` (an ISO-639-1 code, or an English name), None for none.

    Raises :class:`InvalidRequest` (``param="language"``) for a language Whisper does not know.
    """
    if language is None or not language.strip():
        return None
    key = language.strip().lower().replace("_", "-")
    if key in LANGUAGES:
        return key
    code = _ALIASES.get(key)
    if code is None:
        raise InvalidRequest(
            f"unsupported language {language!r}: expected an ISO-639-1 code Whisper knows, "
            f"one of {', '.join(sorted(LANGUAGES))}",
            param="language",
        )
    return code


def language_name(code: str | None) -> str | None:
    """``"en"`` -> ``"english"``, as OpenAI's verbose_json names it; None when unknown."""
    return None if code is None else LANGUAGES.get(code)


def clean_prompt(prompt: str, max_chars: int = PROMPT_MAX_CHARS) -> str:
    """The prompt as it may go into a prefix: no special tokens a client could smuggle in, its last
    ``max_chars`` characters (from a word boundary when there is one), whitespace collapsed."""
    text = " ".join(_SPECIAL.sub(" ", prompt).replace("<|", "<").replace("|>", ">").split())
    if len(text) > max_chars:
        tail = text[-max_chars:]
        if not text[-max_chars - 1].isspace() and " " in tail:
            tail = tail.split(" ", 1)[1]
        text = tail.strip()
    return text


def text_prefix(
    language: str | None,
    prompt: str | None,
    timestamps: bool,
    task: str = "transcribe",
    *,
    max_prompt_chars: int = PROMPT_MAX_CHARS,
) -> str:
    """The decoder prefix for one window.

    ``language`` is validated (see :func:`normalize_language`); None lets the model detect it.
    ``prompt`` (the client's, or the previous window's text) goes in as ``<|startofprev|>``
    context, cleaned by :func:`clean_prompt`. ``task`` is ``transcribe`` or ``translate``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    code = normalize_language(language)
    parts: list[str] = []
    context = clean_prompt(prompt, max_prompt_chars) if prompt else ""
    if context:
        parts += [SOT_PREV, " ", context]
    parts.append(SOT)
    if code is not None:
        parts.append(f"<|{code}|>")
    parts.append(f"<|{task}|>")
    if not timestamps:
        parts.append(NO_TIMESTAMPS)
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of speech and its text; times in seconds from the start of the audio.

    ``text`` keeps Whisper's leading space (``" Hello world."``) and has no trailing whitespace.
    ``seek`` is the window's start in Whisper's 10 ms frames, as OpenAI's verbose_json gives it.
    ``avg_logprob`` and ``no_speech_prob`` are not measured (the model returns text only): they
    stay at their defaults, 0.0, for OpenAI's verbose_json shape.
    """

    id: int
    start: float
    end: float
    text: str
    seek: int = 0
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True, slots=True)
class Parsed:
    """One window's transcript.

    ``segments`` are the complete ones. ``incomplete`` is a trailing segment the model opened with
    a timestamp but did not close (the window ended mid-speech); its ``end`` is the window's end,
    and its ``text`` is empty when the model opened it and said nothing more. Its ``start`` (the
    end of the last complete segment, as Whisper pairs timestamps) is where the next window starts
    when the driver drops it to hear it again whole.
    """

    language: str | None
    segments: tuple[Segment, ...]
    incomplete: Segment | None = None
    timestamped: bool = False


def parse_transcript(text: str, offset: float, window_seconds: float, *, first_id: int = 0) -> Parsed:
    """Read the model's ``TRANSCRIPTS`` for the window that starts ``offset`` seconds into the
    audio and lasts ``window_seconds``. Segments are numbered from ``first_id``; empty ones are
    dropped. Special tokens other than language and timestamps are ignored; anything before a
    ``<|startoftranscript|>`` (an echoed prefix) and after ``<|endoftext|>`` is too. Without any
    timestamp the text is one segment spanning the window, given Whisper's leading space so that
    windows join into words.
    """
    if SOT in text:
        text = text.rsplit(SOT, 1)[1]
    text = text.split(END_OF_TEXT, 1)[0]
    seek = round(offset * 100)
    window_end = _absolute(offset, window_seconds, window_seconds)

    language: str | None = None
    timestamped = False
    segments: list[Segment] = []
    start: float | None = None  # relative start of the open segment
    last_end: float | None = None
    pieces: list[str] = []

    def close(end: float) -> None:
        body = "".join(pieces).rstrip()
        pieces.clear()
        if body.strip() and start is not None:
            begin = _absolute(offset, start, window_seconds)
            stop = max(begin, _absolute(offset, end, window_seconds))
            segments.append(Segment(first_id + len(segments), begin, stop, body, seek))

    position = 0
    for match in _SPECIAL.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        token = match.group(1)
        if _TIMESTAMP.fullmatch(token):
            timestamped = True
            value = float(token)
            if start is None:
                if "".join(pieces).strip():  # text before any timestamp: from the last end (or 0)
                    start = last_end if last_end is not None else 0.0
                    close(value)
                    start, last_end = None, value
                else:
                    pieces.clear()
                    start = value
            elif "".join(pieces).strip():
                close(value)
                start, last_end = None, value
            else:  # a second opening timestamp with nothing between: the later one counts
                pieces.clear()
                start = value
        elif token in LANGUAGES and language is None and not segments and start is None:
            language = token
    pieces.append(text[position:])

    rest = "".join(pieces).rstrip()
    incomplete: Segment | None = None
    if not timestamped:
        if rest.strip():  # Whisper's leading space, which a plain-text model may leave out
            segments.append(Segment(first_id, round(offset, 3), window_end, " " + rest.strip(), seek))
    elif rest.strip() or start is not None:
        begin = _absolute(offset, start if start is not None else (last_end or 0.0), window_seconds)
        incomplete = Segment(first_id + len(segments), begin, window_end, rest if rest.strip() else "", seek)
    return Parsed(language, tuple(segments), incomplete, timestamped)


def join_text(segments: tuple[Segment, ...] | list[Segment]) -> str:
    """The whole transcript: the segments' texts one after another, without the leading space."""
    return "".join(segment.text for segment in segments).lstrip()


@dataclass(frozen=True, slots=True)
class Transcription:
    """A finished transcription, as the response formats render it.

    ``language`` is Whisper's code (the client's, or the one the model detected; None if neither);
    ``duration`` the audio's length in seconds; ``temperature`` the sampling temperature asked for.
    """

    text: str
    segments: tuple[Segment, ...]
    language: str | None
    duration: float
    task: str = "transcribe"
    temperature: float = 0.0


def _absolute(offset: float, relative: float, window_seconds: float) -> float:
    return round(offset + min(max(relative, 0.0), window_seconds), 3)
