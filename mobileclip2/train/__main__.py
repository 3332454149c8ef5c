"""``python -m mobileclip2.train``: checks the environment, registers the models, runs the loop.

Registering here (not only through the startup hook) keeps the entry working with
MOBILECLIP2_AUTOLOAD=0 or ``python -S``.
"""

import sys

from ..errors import MobileCLIP2Error
from . import check_webdataset

try:
    check_webdataset()
except MobileCLIP2Error as error:
    print(f"mobileclip2.train: error: {error}", file=sys.stderr)
    sys.exit(2)

from ..plugin import register  # noqa: E402

register()

from .main import main  # noqa: E402

sys.exit(main())
