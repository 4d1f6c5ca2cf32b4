"""memdyn: memorization dynamics of causal language model families."""

from dynamics.errors import MemdynError

__all__ = ["MemdynError"]
__version__ = "0.1.0"
