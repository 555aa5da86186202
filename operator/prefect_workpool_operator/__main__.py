"""``python -m prefect_workpool_operator``: run the operator with our settings."""

from __future__ import annotations

import logging
import sys

import kopf

from prefect_workpool_operator.config import ensure_home, load_config, quiet_libraries


def main() -> None:
    ensure_home()  # before anything imports the kubernetes client
    if sys.argv[1:2] == ["why"]:  # `python -m prefect_workpool_operator why <ns>/<policy> <run>`: reads only
        from prefect_workpool_operator.cli.why import main as why

        sys.exit(why(sys.argv[2:]))
    if sys.argv[1:2] == ["uninstall"]:  # the chart's pre-delete hook: stop the operator, release the policies
        from prefect_workpool_operator.cli.uninstall import main as uninstall

        sys.exit(uninstall(sys.argv[2:]))
    config = load_config()
    kopf.configure(verbose=config.verbose, log_format=kopf.LogFormat[config.log_format.upper()])
    quiet_libraries()
    if not config.verbose:
        quiet_routine_logs()
    from prefect_workpool_operator.handlers import policy, startup  # noqa: F401  (importing registers their handlers)

    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        # No kopf peering: one active replica per shard comes from the shard's Lease (kube/lease.py).
        standalone=True,
        # Ours, not kopf's detect_own_id(): that calls getpass.getuser(), which fails for a uid
        # with no passwd entry (the image runs as 65532 without one) unless POD_ID is set.
        identity=config.identity,
        # No liveness_endpoint: handlers/probes.py serves /healthz and /readyz on it (handlers.startup).
    )


class _DropTimerSuccess(logging.Filter):
    """kopf logs "Timer 'reconcile' succeeded." at INFO on every tick of every policy."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).startswith("Timer ")
                    and str(record.msg).endswith(" succeeded."))


def quiet_routine_logs() -> None:
    """No INFO line when nothing changed: no per-tick lines (per-request ones: quiet_libraries)."""
    logging.getLogger("kopf.objects").addFilter(_DropTimerSuccess())


if __name__ == "__main__":
    main()
