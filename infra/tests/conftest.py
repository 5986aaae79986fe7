"""The infra tests import infra/ modules (the emulator, the moto wrapper, emulated_stack)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
