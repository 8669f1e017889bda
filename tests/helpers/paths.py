"""Places in the checkout, found from this file so that a test's own depth in tests/ does not matter."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "alignkit" / "demo" / "data"
CONFIGS = ROOT / "configs"
