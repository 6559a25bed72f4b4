"""``python -m dsg_ros`` is the ``dsg-ros`` console script (the demo starts its processes this way)."""

import sys

from dsg_ros.cli import main

sys.exit(main())
