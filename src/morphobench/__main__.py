"""``python -m morphobench …`` = the ``morphobench`` console script (see morphobench.cli)."""

import sys

from morphobench.cli import main

sys.exit(main())
