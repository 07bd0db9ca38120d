"""RunPod Hub entry (the Hub expects a handler.py beside its Dockerfile).

The image runs the same code through /start.sh: `python -m handlers.controlnet_pyworker`.
This file only makes that entry visible to the Hub's repository check.
"""

from handlers.controlnet_pyworker.__main__ import main

if __name__ == "__main__":
    main()
