"""MedicalGPT's `template.py`, kept so that `from template import get_template` goes on working: the chat formats
live in the package now (medgpt.chat); this module re-exports them."""

from medgpt.chat import *  # noqa: F403
from medgpt.chat import __all__  # noqa: F401
