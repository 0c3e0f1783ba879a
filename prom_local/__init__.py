"""prom-local: a Prometheus-style LLM judge on your own hardware, through llama.cpp."""

from .engine import EngineConfig, SamplingParams
from .errors import ContextOverflow, InputError, ModelLoadError, ModelNotFound, PromLocalError
from .grading import Grade, extract_score
from .judge import Judge, render_prompt
from .prompts import PromptProfile, get_profile, register_profile
from .records import Record, read_records
from .rubrics import Rubric

__version__ = "0.1.0"

__all__ = [
    "ContextOverflow", "EngineConfig", "Grade", "InputError", "Judge", "ModelLoadError", "ModelNotFound",
    "PromLocalError", "PromptProfile", "Record", "Rubric", "SamplingParams", "extract_score",
    "get_profile", "read_records", "register_profile", "render_prompt",
]
