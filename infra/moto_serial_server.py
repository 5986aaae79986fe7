"""moto's server, handling one request at a time.

`moto_server` serves requests on parallel threads, and moto's DynamoDB and
SQS backends do not lock: two concurrent conditional writes can both pass
their condition, and two concurrent `ADD`s can lose one. DynamoDB itself
applies each item write atomically, so the conformance suite's "exactly
once under concurrent duplicates" checks would test moto's races, not our
code. Serving requests one by one gives the atomicity DynamoDB promises
while the clients still send them concurrently.

    python3 infra/moto_serial_server.py HOST PORT
"""

import os
import sys

from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    # moto builds queue URLs and the like from this.
    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, app, threaded=False)


if __name__ == "__main__":
    main()
