"""``python -m hybridpool.sweep <sweep dir>``: the same as ``hybridpool-sweep-status``."""

import sys

from hybridpool.sweep.summary import status_main

sys.exit(status_main())
