"""The REST server, one room per concern.

- `app`: the route table, written once, and the assembly (recorder → drain → door →
  admission → routes);
- `endpoints_mlflow`: MLflow's `/invocations` and `/ping`;
- `endpoints_v2`: the Open Inference Protocol (V2);
- `scoring`: what both protocols do once a request's features are checked;
- `endpoints_server`: health, metadata, versions, OpenAPI, the page, metrics, drift;
- `follower`: the model being served, following a registry alias;
- `shadow`: a sample of the rows sent, off the request path, to `shadow_process`: a process
  of its own that scores them with a second model and keeps the log and the comparison;
- `canary`: a sticky share of the requests answered by a second model;
- `recorder`, `door`, `admission`: pure ASGI pieces (timing and observers; the bearer token;
  scoring requests at once, the bounded wait, 503 beyond it, the request deadline);
- `lifecycle`, `draining`: liveness, readiness and the drain on SIGTERM;
- `connections`: uvicorn's HTTP protocol with header and body deadlines and a connection cap;
- `access_log`, `metrics`: the recorder's observers;
- `documents`: the OpenAPI document and the page, from package resources and the schema;
- `http`: media types, bodies within their limit, errors as JSON;
- `heap`: the loaded model kept out of the garbage collector's way;
- `run`: uvicorn, and worker processes of our own.

Decoding and validation are `winequality.io` and the feature schema; serving holds no copy.
"""

from winequality.serving.admission import AdmissionLimits
from winequality.serving.app import create_app
from winequality.serving.canary import CanarySettings
from winequality.serving.connections import ConnectionLimits
from winequality.serving.run import ServerSettings, check_port, serve
from winequality.serving.shadow import ShadowSettings

__all__ = [
    "AdmissionLimits",
    "CanarySettings",
    "ConnectionLimits",
    "ServerSettings",
    "ShadowSettings",
    "check_port",
    "create_app",
    "serve",
]
