"""``python -m prefect_workpool_operator``: run the operator with our settings."""

from __future__ import annotations

import kopf

from .config import load_config, quiet_libraries


def main() -> None:
    config = load_config()
    kopf.configure(verbose=config.verbose, log_format=kopf.LogFormat[config.log_format.upper()])
    quiet_libraries()
    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        standalone=config.peering is None,
        peering_name=config.peering,
        liveness_endpoint=config.liveness_endpoint,
    )


if __name__ == "__main__":
    main()
