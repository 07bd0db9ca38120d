import sys

from scripts.gpuworker.cli import main

sys.exit(main())
