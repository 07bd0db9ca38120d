"""`gpuworker`: the operator's command-line tool for the worker images.

Groups: `runpod` (endpoint jobs), `swarm` (SwarmUI workers), `vast` (vast.ai instances),
`models` (fill a volume from a model manifest). Entry point: `scripts.gpuworker.cli:main`.
"""
