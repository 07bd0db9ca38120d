"""SwarmUI API client shared by the swarm worker and the operator tools.

    from common.swarmui import SwarmUIClient, T2IParams, I2VParams
    async with SwarmUIClient("https://host/t/<token>") as c:
        result = await c.generate(T2IParams(prompt="a cat", model="sdxl", steps=20))
        data = await c.read_output(result.outputs[0])

`SyncSwarmUIClient` offers the same calls, blocking, for command-line tools.
"""

from common.swarmui.client import (
    MODEL_SUBTYPES,
    GenerationResult,
    ModelListing,
    SwarmUIClient,
    SwarmUIError,
    SwarmUIUnavailable,
    decode_data_url,
    is_data_url,
    output_filename,
    view_path,
)
from common.swarmui.params import I2VParams, T2IParams, params_for
from common.swarmui.sync import SyncSwarmUIClient

__all__ = [
    "MODEL_SUBTYPES",
    "GenerationResult",
    "I2VParams",
    "ModelListing",
    "SwarmUIClient",
    "SwarmUIError",
    "SwarmUIUnavailable",
    "SyncSwarmUIClient",
    "T2IParams",
    "decode_data_url",
    "is_data_url",
    "output_filename",
    "params_for",
    "view_path",
]
