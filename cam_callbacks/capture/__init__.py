"""Reading the model without changing it: state guards, the target layer's output, its tail, input gradients.

- ``state``: context managers that put the model and the RNGs back as found.
- ``hooks``: ``LayerCapture``, the forward hook on the target layer.
- ``layers``: finding the target layer and the CAM classifier head.
- ``layouts``: transformer tokens <-> feature maps (``TokenGrid``).
- ``guided``: gradients at the input, plain or guided.
- ``tail`` (and ``tail_fx``): the network after the target layer.
"""
