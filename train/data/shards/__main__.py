"""``python -m train.data.shards write SRC OUT [--per-shard N]``: see :func:`main`."""

import sys

from train.data.shards import main

sys.exit(main())
