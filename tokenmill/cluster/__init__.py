"""Scale-out on Ray Serve (`tokenmill serve --ray`; `pip install 'tokenmill[ray]'`).

Engine replicas are a Ray Serve deployment, each running the whole tokenmill server app
in-process (the same protocols, pages and /metrics as `tokenmill serve`); one ingress
deployment (`@serve.ingress` on a FastAPI app) hands every HTTP request to a replica through
a DeploymentHandle chosen by our request router (least outstanding, with prefix affinity).

Nothing here is imported by `tokenmill serve` without `--ray`.
"""
