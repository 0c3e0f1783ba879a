"""prom-local: a Prometheus-style LLM judge on your own hardware, through llama.cpp."""

from .engine import EngineConfig, SamplingParams
from .errors import ContextOverflow, InputError, ModelLoadError, ModelNotFound, PromLocalError
from .judging.grades import Grade, RelativeGrade
from .judging.verdict_text import extract_score, extract_winner
from .judging.judge import Judge, render_prompt
from .judging.prompts import PromptProfile, get_profile, load_profile, register_profile
from .judging.records import Record, RelativeRecord
from .inputs import read_records
from .judging.rubrics import Rubric

__version__ = "0.1.0"

__all__ = [
    "ContextOverflow", "EngineConfig", "Grade", "InputError", "Judge", "ModelLoadError", "ModelNotFound",
    "PromLocalError", "PromptProfile", "Record", "RelativeGrade", "RelativeRecord", "Rubric", "SamplingParams",
    "extract_score", "extract_winner", "get_profile", "load_profile", "read_records", "register_profile",
    "render_prompt",
]
