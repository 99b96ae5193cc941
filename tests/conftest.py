import os
import sys

# The oracles and the tiny-model helpers live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
# Nothing in the tests may reach the Hub; a call that tries fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
