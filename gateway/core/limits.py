"""OpenAI's value ranges, shared by every API's request validation."""

TEMPERATURE_RANGE = (0.0, 2.0)
PENALTY_RANGE = (-2.0, 2.0)
MAX_CHOICES = 16
MAX_STOP_STRINGS = 4
