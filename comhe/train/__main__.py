"""``python -m comhe.train cfg.yaml [key=value ...]``: one run (``cli.py``)."""
import sys

from .cli import main

sys.exit(main())
