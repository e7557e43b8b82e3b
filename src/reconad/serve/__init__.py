"""``reconad serve``: a fitted run behind an HTTP API (``/v1/predict``, ``/v1/feedback``, ``/v1/model``,
``/v1/record``, ``/healthz``) and an inspection page (``/``), built on FastAPI and run by uvicorn.

:mod:`.predictor` loads a run and scores uploaded bytes on ``reconad predict``'s path; :mod:`.line` keeps the
record of decisions and the labelled images; :mod:`.app` is the web app (auth, upload limits, JSON errors,
the page); :mod:`.server` starts uvicorn for the CLI, in its own process or, with ``--workers N > 1``, by
handing over to :mod:`.workers` (uvicorn's supervisor).
"""
