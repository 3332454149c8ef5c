"""``python -m mobileclip2.reinforce`` / ``torchrun ... -m mobileclip2.reinforce``: same flags as
``mobileclip2 reinforce``; under torchrun each rank takes its share of the shards."""

from __future__ import annotations

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
