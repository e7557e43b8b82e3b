"""``reconad export``: a fitted run as a self-contained folder of ONNX graphs that runs without PyTorch.

Modules, top to bottom: :mod:`.linalg` (small solves with operations ONNX has), :mod:`.heads` (torch
modules that mirror each model's ``predict``: features → patch scores → maps and image scores),
:mod:`.graphs` (torch → ONNX: the feature graph once, a head per model, merged and checked), :mod:`.writer`
(the folder, its manifest and the runtime). ``predict.py`` is the runtime script the folder ships (numpy,
Pillow and ONNX Runtime only).
"""
