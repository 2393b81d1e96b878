"""The detection job's command: `python3 run_detection_service.py`."""

import sys

from facefleet.worker.detection.service import main

if __name__ == "__main__":
    sys.exit(main())
