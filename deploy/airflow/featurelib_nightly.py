"""The nightly featurelib job as an Airflow DAG: validate, plan, extract, train, report.

Copy this file into Airflow's DAGs folder (Airflow 3; tested with the version `make airflow-venv`
pins). The tasks run featurelib's command line where Airflow runs its tasks: `featurize` and a Python
with featurelib installed on the worker, or the featurelib image through a prefix such as
``docker run --rm -v /data:/data featurelib:0.1.0`` (deploy/docker/). What each task runs:

    validate   featurize validate S: the spec and its paths, before anything runs (exit 2: a mistake)
    plan       first run (--resume: a fresh output, or a failed first run completed) or --incremental,
               and how many inputs are new; with nothing new, the run stops here: extract, train and
               report are skipped
    extract    featurize run --spec S --incremental (or --resume) --engine E [engine flags]
    train      featurize train OUT --features F --model M --standardize --name nightly --overwrite
    report     featurize report OUT

Settings are the DAG's params, overridable when a run is triggered; their defaults come from
environment variables of the scheduler: FEATURELIB_SPEC, FEATURELIB_PREFIX (put before every
command), FEATURELIB_PYTHON (plan's Python), FEATURELIB_ENGINE, FEATURELIB_ENGINE_FLAGS,
FEATURELIB_FEATURES, FEATURELIB_MODEL. The output is the spec's ``output.path``; give the spec
absolute paths (commands run in a temporary folder).

Retries follow featurelib's exit codes (docs/CONTRACT.md): 2 (a mistake in the spec, arguments,
input or output, or the output locked by a live run) and 3 (failed by policy: too many rejects) fail
at once, since a retry would fail the same way; 130 / 143 (interrupted, stopped by SIGTERM), 1 and a
killed process are retried after ``retry_delay``, longer than the output lock's 120 s takeover time
for a run that died on another host. One run at a time (``max_active_runs=1``): the output's lock
would refuse a second one anyway (exit 2).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from datetime import datetime, timedelta, timezone

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 2.x
    from airflow import DAG
    from airflow.exceptions import AirflowException, AirflowFailException
    from airflow.operators.bash import BashOperator

DAG_ID = "featurelib_nightly"

#: Exit codes of featurelib's commands that a retry cannot fix (docs/CONTRACT.md).
NOT_RETRIED = {2: "a mistake in the spec, the arguments, the input or the output (or the output is locked by "
                  "a live run): fix it, then clear the task",
               3: "failed by policy (too many rejects, see failures.max_reject_fraction): look at the rejects "
                  "in the output's _FAILED.json, then clear the task"}

#: BashOperator's code for "skip this task and everything after it": plan's "nothing new".
NOTHING_NEW = 99

#: plan, run by featurelib's Python (argv[1]: the spec): what tonight's run adds to the committed
#: output (`featurize plan` describes a whole run, not an incremental one). Its last line, one JSON
#: object, is the task's XCom: the extract step's mode and the output path.
PLAN = r"""
import json, os, sys
from featurelib.exits import with_exit_codes

def plan():
    from featurelib.io import files as layout
    from featurelib.plan import resolve_paths
    from featurelib.spec import RunSpec
    spec = RunSpec.from_yaml(sys.argv[1])
    spec.require_paths()
    spec = resolve_paths(spec)
    out = spec.output.path
    if not os.path.isfile(os.path.join(out, layout.MANIFEST)):
        print(json.dumps({"mode": "--resume", "output": out}))
        return 0
    from featurelib.incremental import committed_manifest, plan_generation
    found = plan_generation(spec, committed_manifest(spec))
    print(f"generation {found.generation}: {found.listed} inputs listed, {found.new} new, "
          f"{len(found.missing)} no longer listed", file=sys.stderr)
    print(json.dumps({"mode": "--incremental", "output": out, "new": found.new}))
    return 0 if found.new else %d

sys.exit(with_exit_codes(plan))
""" % NOTHING_NEW

def exit_code_of(error: BaseException) -> int | None:
    """The exit code in BashOperator's failure message ("... non-zero exit code 2."), if any."""
    found = re.search(r"exit code (-?\d+)", str(error))
    return int(found.group(1)) if found else None


class FeaturelibOperator(BashOperator):
    """A BashOperator running a featurelib command: exit 2 and 3 fail without retry, others retry."""

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowFailException:
            raise
        except AirflowException as error:
            code = exit_code_of(error)
            if code in NOT_RETRIED:
                raise AirflowFailException(f"exit {code}: {NOT_RETRIED[code]}") from error
            raise


def _plan_of(ti) -> dict:
    """The plan task's JSON line."""
    return json.loads(ti.xcom_pull(task_ids="plan"))


def _default(name: str, value: str) -> str:
    return os.environ.get(name, value)


PARAMS = {
    "spec": _default("FEATURELIB_SPEC", "/etc/featurelib/nightly.yaml"),
    "prefix": _default("FEATURELIB_PREFIX", ""),
    "python": _default("FEATURELIB_PYTHON", "python3"),
    "engine": _default("FEATURELIB_ENGINE", "local"),
    "engine_flags": _default("FEATURELIB_ENGINE_FLAGS", ""),
    "features": _default("FEATURELIB_FEATURES", "hog"),
    "model": _default("FEATURELIB_MODEL", "logreg"),
}

FEATURIZE = "{{ params.prefix }} featurize"
PYTHON = "{{ params.prefix }} {{ params.python }}"
SPEC = "{{ quote(params.spec) }}"
OUTPUT = "{{ quote(plan_of(ti)['output']) }}"

with DAG(
    dag_id=DAG_ID,
    description="featurelib: extract the day's new images (incremental), retrain, report",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    params=PARAMS,
    user_defined_macros={"quote": shlex.quote, "plan_of": _plan_of},
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["featurelib"],
) as dag:
    validate = FeaturelibOperator(
        task_id="validate",
        bash_command=f"{FEATURIZE} validate {SPEC}",
    )
    plan = FeaturelibOperator(
        task_id="plan",
        bash_command=f'{PYTHON} -c "$FEATURELIB_PLAN" {SPEC}',
        env={"FEATURELIB_PLAN": PLAN}, append_env=True,
        skip_on_exit_code=NOTHING_NEW,
    )
    extract = FeaturelibOperator(
        task_id="extract",
        bash_command=(f"{FEATURIZE} run --spec {SPEC} {{{{ plan_of(ti)['mode'] }}}} "
                      "--engine {{ params.engine }} {{ params.engine_flags }}"),
        execution_timeout=timedelta(hours=12),
    )
    train = FeaturelibOperator(
        task_id="train",
        bash_command=(f"{FEATURIZE} train {OUTPUT} --features {{{{ quote(params.features) }}}} "
                      "--model {{ quote(params.model) }} --standardize --name nightly --overwrite"),
    )
    report = FeaturelibOperator(
        task_id="report",
        bash_command=f"{FEATURIZE} report {OUTPUT}",
    )
    validate >> plan >> extract >> train >> report
