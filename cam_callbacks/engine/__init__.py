"""The batched engine: one ``ExplainOptions``, shared passes per chunk, scorers, smoothing, layer fusion.

Torch only; used by ``cam_callbacks.explain``, ``cam_callbacks.faithfulness`` and the callback.
"""
