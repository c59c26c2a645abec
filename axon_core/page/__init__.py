"""What the page computes, without Gradio: each handler's work as plain values.

``app.py`` lays out the page and wires its events to ``ui/handlers.py``, which
calls these and turns what they return (dataclasses, DataFrames, strings)
into Gradio updates. In the order a visit goes:

| module | what it does |
|---|---|
| ``settings.py`` | the environment's settings, clamped (concurrency, run time cap, ZeroGPU) |
| ``services.py`` | the process-wide catalogue, SAE cache, label service and engine, in one object |
| ``links.py`` | a link → the page's inputs; the page → a share link; the embed view's way back |
| ``picker.py`` | the model / release / SAE / layer choices; loading a pick; prefetching its labels |
| ``request.py`` | inputs → a clamped run request with notices; the other layers' SAEs it reads |
| ``run.py`` | start a run (engine, or ZeroGPU) and view it: a frame per update |
| ``compare.py`` | a steered run beside the plain one |
| ``sessions.py`` | one generating run per browser session |
| ``status.py`` | the status line and the features table |
| ``view.py`` | the token slider, a click on a token, the edge picker |
| ``inspector.py`` | one feature's inspector; a steering entry for it |
| ``causal.py`` | the causal check at the token shown, and what it found |
| ``downloads.py`` | the run's JSON or graph page, written on demand |

No module here imports Gradio (tests/test_imports.py checks it); every one
takes the :class:`~axon_core.page.services.Services` as its first argument
where it needs the process's resources.
"""
