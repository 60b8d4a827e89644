"""OpenAI's value ranges, shared by every API's request validation."""

TEMPERATURE_RANGE = (0.0, 2.0)
PENALTY_RANGE = (-2.0, 2.0)
MAX_CHOICES = 16
MAX_STOP_STRINGS = 4
LOGIT_BIAS_RANGE = (-100.0, 100.0)
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs
MAX_COMPLETION_LOGPROBS = 5  # completions' logprobs
MAX_TOOLS = 128
MAX_EMBEDDING_INPUTS = 2048  # per embeddings request, as OpenAI and Scaleway allow
MAX_DOCUMENTS = 1000  # per rerank or score request (Cohere's limit)
