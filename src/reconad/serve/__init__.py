"""``reconad serve``: a fitted run behind an HTTP API (``/v1/predict``, ``/v1/model``, ``/healthz``) and an
inspection page (``/``), built on FastAPI and run by uvicorn.

:mod:`.predictor` loads a run and scores uploaded bytes on ``reconad predict``'s path; :mod:`.app` is the
web app (auth, upload limits, JSON errors, the page); :mod:`.server` starts uvicorn for the CLI.
"""
