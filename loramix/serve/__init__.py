"""`loramix serve`: a local page to mix LoRAs by eye, with a slider per LoRA and a live preview.

library.py finds the LoRA files under the folders served and resolves a client's names safely; mix.py turns
what the page sends into render jobs and what comes back into what the page shows; worker.py is the one
thread that owns the pipeline; app.py is the Starlette app and its JSON endpoints; server.py the socket, the web
thread and the orderly stop; static/ the page.
"""
