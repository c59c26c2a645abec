"""The UI layer: the only code besides ``app.py`` that imports Gradio.

- ``handlers.py``: the event handlers ``app.py`` wires. Each asks
  :mod:`axon_core.page` for plain values and turns them into Gradio updates
  (``gr.update``, ``gr.skip()``, ``gr.Info``), reading ``gr.Request`` and
  ``gr.Progress`` on the way in.
- ``zerogpu.py``: the run's one ``@spaces.GPU`` call on a ZeroGPU Space.
- ``gradio_state.py``: a workaround for what Gradio 6.31 keeps per browser session.
"""
