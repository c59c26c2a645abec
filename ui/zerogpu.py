"""ZeroGPU's path: one run computed inside one ``@spaces.GPU`` call.

On a ZeroGPU Space the call runs in a forked worker holding the GPU and every
TokenStep it yields is pickled back to the server process, where the view
draws frames (:func:`axon_core.page.run.gpu_live`). Off ZeroGPU ``spaces.GPU``
returns the function unchanged, and the engine computes runs instead.

Worked example::

    gpu_steps = gpu_steps_for(services)     # once, at import (ZeroGPU registers it then)
    steps = list(gpu_steps("gpt2-small-res-jb", "blocks.8.hook_resid_pre", "Hi", GenerationSettings()))
"""

from __future__ import annotations

import spaces

from axon_core.generation import GenerationSettings
from axon_core.page.run import compute_steps


def gpu_steps_for(services):
    """The GPU call for this process's ``services`` (its duration: ``settings.gpu_seconds``)."""

    @spaces.GPU(duration=services.settings.gpu_seconds)
    def gpu_steps(release: str, sae_id: str, prompt: str, settings: GenerationSettings, steer: tuple = (),
                  extra_ids: tuple = (), watch: tuple = ()):
        yield from compute_steps(services, release, sae_id, prompt, settings, steer, extra_ids, watch)

    return gpu_steps
