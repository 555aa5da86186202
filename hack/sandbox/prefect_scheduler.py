"""Insert a deployment's scheduled runs the way Prefect's scheduler service does: by SQL, no event.

The scheduler service cannot run in this sandbox (SQLAlchemy 2.1.9 breaks its ORM bulk
insert: "Can't evaluate bulk DML statement"), so tests and benchmarks that need runs the
scheduler would have inserted call its own run generator and write the rows through
SQLAlchemy's core tables, on the server's database, from the server's venv.
"""

from __future__ import annotations

import subprocess

from .prefect_server import PrefectServer, ensure_prefect_venv

def insert_like_the_scheduler(server: PrefectServer, deployment_id: str, runs: int) -> int:
    """The scheduler service's insert, without an event: its own run generator
    (``models.deployments._generate_scheduled_flow_runs``), then the rows and their Scheduled
    states written as ``_insert_scheduled_flow_runs`` does, on the server's database from its
    venv. Through SQLAlchemy's core tables: the ORM bulk path that the service (and
    ``schedule_runs``) use fails under this sandbox's SQLAlchemy 2.1.9 ("Can't evaluate bulk DML
    statement"), which is why the scheduler service itself cannot run here."""
    script = """
import asyncio, datetime, sys, uuid
from prefect.server.database import provide_database_interface
from prefect.server.models.deployments import _generate_scheduled_flow_runs
from prefect.types._datetime import now
from prefect._internal.uuid7 import uuid7

async def main():
    db = provide_database_interface()
    async with db.session_context(begin_transaction=True) as session:
        n = int(sys.argv[2])
        runs = await _generate_scheduled_flow_runs(
            db=db, session=session, deployment_id=uuid.UUID(sys.argv[1]), start_time=now("UTC"),
            end_time=now("UTC") + datetime.timedelta(days=1), min_time=datetime.timedelta(0), min_runs=n, max_runs=n)
        runs_table, states_table = db.FlowRun.__table__, db.FlowRunState.__table__
        await session.execute(runs_table.insert(),
                              [{k: v for k, v in r.items() if k in runs_table.c} for r in runs])
        states = [{k: v for k, v in {**r["state"], "id": uuid7(), "flow_run_id": r["id"]}.items()
                   if k in states_table.c} for r in runs]
        await session.execute(states_table.insert(), states)
        await session.execute(db.queries.set_state_id_on_inserted_flow_runs_statement(
            inserted_flow_run_ids=[r["id"] for r in runs], insert_flow_run_states=states))
    print(len(runs))

asyncio.run(main())
"""
    python = ensure_prefect_venv(server.venv_dir).parent / "python"
    done = subprocess.run([str(python), "-c", script, deployment_id, str(runs)], env=server._env(),  # noqa: SLF001 (the server's own database)
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])
