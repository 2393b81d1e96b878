"""Batch job `face-grouping-job` runs `python3 run_grouping_service.py`: the grouping worker."""

import sys

from facefleet.worker.privacy.worker import main

if __name__ == "__main__":
    sys.exit(main())
