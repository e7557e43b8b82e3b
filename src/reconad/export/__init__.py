"""``reconad export``: a fitted run as a self-contained folder of ONNX graphs that runs without PyTorch.

Each model gives its own traceable head (``model.export_head()``: features → patch scores, beside its
``predict``). Modules, top to bottom: :mod:`.heads` (a model's head with the library's scoring on top: maps
and image scores), :mod:`.graphs` (torch → ONNX: the feature graph once, a head per model, merged and
checked), :mod:`.writer` (the folder, its manifest and the runtime), :mod:`.verify` (metrics through the
graphs). ``predict.py`` is the runtime script the folder ships (numpy, Pillow and ONNX Runtime only).
"""
