"""On-demand runs through the run-request queue: ``POST /api/runs`` records and queues, the queue
trigger prepares and submits, the poison-queue trigger fails what the host gave up on, and the
status call reconciles at most once per interval.

Queues are real Azurite queues; the Functions host, which would poll them, cannot run here, so
``shared.local.host.deliver_run_requests`` plays its queue listener (Base64 decoding, retries,
``maxDequeueCount`` and the poison queue from ``host.json``). The Azure ML executor is mocked in
the reconcile tests: there is no workspace to ask.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta

import azure.functions as func
import pytest
import sqlalchemy as sa
from azure.functions.queue import QueueMessage

from shared.clock import utcnow
from shared.db.schema import run_chunks, runs
from shared.executors.base import FAILED, RUNNING, JobStatus
from shared.local.host import _queue_options, deliver_predictions, deliver_run_requests
from shared.local.host import user_function as fn
from shared.queues import RunRequest, decode_wire_text, encode_message, run_queue_for
from shared.runs import records
from shared.runs.records import RunFilters
from shared.runs.service import ALREADY_FINISHED, ALREADY_SUBMITTED, MALFORMED, UNKNOWN_RUN
from shared.runs.windows import Window
from shared.settings import Settings
from tests import scenario
from tests.conftest import ROOT

BASE = "http://localhost:7071/api"


def post_run(body: dict) -> func.HttpResponse:
    req = func.HttpRequest("POST", f"{BASE}/runs", body=json.dumps(body).encode())
    return fn("start_run")(req)


def get_run(run_id: str) -> dict:
    req = func.HttpRequest(
        "GET", f"{BASE}/runs/{run_id}", body=b"", route_params={"run_id": run_id}
    )
    resp = fn("get_run")(req)
    assert resp.status_code == 200, resp.get_body()
    return json.loads(resp.get_body())


def window_body(sc) -> dict:
    return {"window_end": sc.window.end.isoformat() + "Z", "window_minutes": 60}


def queued(ctx, poison: bool = False) -> list[dict]:
    """The JSON payloads waiting in the run queue (or its poison queue), without taking them."""
    queue = run_queue_for(ctx.settings)
    client = queue.client(queue.poison_name if poison else queue.name)
    return [json.loads(decode_wire_text(m.content)) for m in client.peek_messages(max_messages=32)]


def chunk_blobs(ctx, run_id: str) -> dict[str, str]:
    container = ctx.settings.chunks_container
    return {n: ctx.store.etag(container, n) for n in ctx.store.list(container, f"runs/{run_id}/")}


def chunk_rows(ctx, run_id: str) -> int:
    with ctx.engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(run_chunks.c.run_id == run_id)
        ).scalar_one()


def send_raw(ctx, text: str) -> None:
    run_queue_for(ctx.settings).client().send_message(text)


def test_post_records_and_queues_without_preparing(ctx, monkeypatch):
    """The request returns 202 with the status URL (body and Location) before any chunk exists;
    preparing inside the request would hit the trap below."""
    sc = scenario.build(ctx, devices=2, sensors=2)

    def trap(*args, **kwargs):
        raise AssertionError("the HTTP request must not prepare the run")

    monkeypatch.setattr("shared.runs.prepare.prepare_run", trap)
    started = time.perf_counter()
    resp = post_run(window_body(sc))
    elapsed = time.perf_counter() - started
    body = json.loads(resp.get_body())
    assert resp.status_code == 202, body
    run_id = body["run_id"]
    assert body["created"] is True and body["status"] == records.PENDING
    assert body["status_url"] == f"{BASE}/runs/{run_id}" == resp.headers["Location"]
    assert chunk_blobs(ctx, run_id) == {} and chunk_rows(ctx, run_id) == 0
    assert [m["run_id"] for m in queued(ctx)] == [run_id]
    assert elapsed < 5, f"POST took {elapsed:.2f}s"

    # The same window again: the same run, nothing queued twice.
    again = post_run(window_body(sc))
    assert again.status_code == 200 and again.headers["Location"] == body["status_url"]
    assert json.loads(again.get_body())["run_id"] == run_id
    assert [m["run_id"] for m in queued(ctx)] == [run_id]
    assert get_run(run_id)["status"] == records.PENDING


def test_queue_message_prepares_submits_and_redelivery_changes_nothing(ctx, monkeypatch):
    sc = scenario.build(ctx, devices=2, sensors=2)
    run_id = json.loads(post_run(window_body(sc)).get_body())["run_id"]

    (outcome,) = deliver_run_requests(ctx)
    assert outcome[1] == "done"
    run = records.get_run(ctx.engine, run_id)
    assert run.status == records.SCORING and run.job_id == f"local:{run_id}"
    assert run.n_sensors == 4 and run.n_chunks == 1 and run.error is None
    blobs = chunk_blobs(ctx, run_id)
    assert len(blobs) == 1 and chunk_rows(ctx, run_id) == 1
    assert queued(ctx) == []

    # A redelivery (the host lost the first attempt's completion): nothing is prepared or
    # submitted again, so the chunk blob keeps its ETag and no executor is made.
    def no_executor(*args, **kwargs):
        raise AssertionError("a redelivered request must not submit again")

    monkeypatch.setattr("shared.runs.service.make_executor", no_executor)
    run_queue_for(ctx.settings).send(RunRequest(run_id))
    assert deliver_run_requests(ctx)[0][1] == "done"
    assert chunk_blobs(ctx, run_id) == blobs and chunk_rows(ctx, run_id) == 1
    handle = fn("prepare_run_request")
    from shared.runs.service import handle_run_request

    assert handle_run_request(ctx, json.dumps({"run_id": run_id}).encode()) == ALREADY_SUBMITTED

    deliver_predictions(ctx, run_id)
    assert get_run(run_id)["status"] == records.COMPLETED
    # A message for a finished run does nothing either.
    assert handle_run_request(ctx, json.dumps({"run_id": run_id}).encode()) == ALREADY_FINISHED
    handle(QueueMessage(id="m", body=json.dumps({"run_id": run_id}).encode(), dequeue_count=1))
    assert records.get_run(ctx.engine, run_id).status == records.COMPLETED


def test_failed_attempt_is_retried_and_its_reason_cleared_on_success(ctx, monkeypatch):
    from shared.runs import prepare

    sc = scenario.build(ctx, devices=1, sensors=2)
    real = prepare.prepare_run
    attempts = []

    def flaky(ctx_, run):
        attempts.append(run.run_id)
        if len(attempts) == 1:
            raise ConnectionError("SQL database is resuming")
        return real(ctx_, run)

    monkeypatch.setattr(prepare, "prepare_run", flaky)
    run_id = json.loads(post_run(window_body(sc)).get_body())["run_id"]
    outcomes = [o for _, o in deliver_run_requests(ctx, retry_after_seconds=0)]
    assert outcomes == ["retry", "done"]
    run = records.get_run(ctx.engine, run_id)
    assert run.status == records.SCORING and run.error is None and len(attempts) == 2


def test_poisoned_request_fails_the_run_with_the_reason(ctx, monkeypatch):
    sc = scenario.build(ctx, devices=1, sensors=2)

    def broken(ctx_, run):
        raise OSError("chunks container unreachable")

    monkeypatch.setattr("shared.runs.prepare.prepare_run", broken)
    run_id = json.loads(post_run(window_body(sc)).get_body())["run_id"]
    max_dequeue = int(_queue_options()["maxDequeueCount"])

    # One delivery: the message waits for its next one, the run stays pending with the attempt's
    # reason.
    outcomes = deliver_run_requests(ctx, retry_after_seconds=0, max_messages=1)
    assert [o for _, o in outcomes] == ["retry"]
    pending = get_run(run_id)
    assert pending["status"] == records.PENDING
    assert pending["error"] == "attempt 1 failed: OSError: chunks container unreachable"

    # The rest of the attempts: the host moves the message to the poison queue after the last,
    # and the poison trigger fails the run.
    outcomes = [o for _, o in deliver_run_requests(ctx, retry_after_seconds=0)]
    assert outcomes == ["retry"] * (max_dequeue - 2) + ["poisoned", "done"]
    run = get_run(run_id)
    assert run["status"] == records.FAILED
    assert run["error"] == (
        f"preparation failed on every delivery of its queue message (moved to "
        f"{ctx.settings.runs_queue}-poison); last error: attempt {max_dequeue} failed: "
        "OSError: chunks container unreachable"
    )
    assert queued(ctx) == [] and queued(ctx, poison=True) == []
    # The poison trigger leaves a finished run alone.
    from shared.runs.service import handle_poisoned_run_request

    assert handle_poisoned_run_request(ctx, json.dumps({"run_id": run_id})) == ALREADY_FINISHED


@pytest.mark.parametrize(
    "wire",
    [
        "not base64 at all {",
        encode_message({"run": "x"}),
        base64.b64encode(b"{broken json").decode(),
        base64.b64encode(b"\xff\xfe\x00").decode(),
        encode_message({"run_id": 42}),
        encode_message({"run_id": "x" * 65}),
        base64.b64encode(b"[1, 2]").decode(),
    ],
)
def test_malformed_messages_are_logged_and_dropped(ctx, wire, caplog):
    send_raw(ctx, wire)
    assert [o for _, o in deliver_run_requests(ctx, retry_after_seconds=0)] == ["done"]
    assert queued(ctx) == [] and queued(ctx, poison=True) == []
    assert any("malformed run request dropped" in r.getMessage() for r in caplog.records)
    # Straight into the poison trigger (a message that was malformed from the start) too.
    body = decode_wire_text(wire)
    fn("fail_poisoned_run_request")(QueueMessage(id="p", body=body, dequeue_count=1))
    fn("prepare_run_request")(QueueMessage(id="q", body=body, dequeue_count=1))


def test_unknown_run_and_empty_body_do_not_raise(ctx):
    from shared.runs.service import handle_poisoned_run_request, handle_run_request

    unknown = json.dumps({"run_id": "run-nope"}).encode()
    assert handle_run_request(ctx, unknown) == UNKNOWN_RUN
    assert handle_poisoned_run_request(ctx, unknown) == UNKNOWN_RUN
    assert handle_run_request(ctx, None) == MALFORMED
    assert handle_run_request(ctx, b"") == MALFORMED
    send_raw(ctx, encode_message({"run_id": "run-nope"}))
    assert [o for _, o in deliver_run_requests(ctx, retry_after_seconds=0)] == ["done"]


def test_queue_send_failure_is_a_503_and_fails_the_run(ctx, monkeypatch):
    sc = scenario.build(ctx, devices=1, sensors=1)

    def down(self, request):
        raise ConnectionError("queue service unreachable")

    monkeypatch.setattr("shared.queues.RunQueue.send", down)
    resp = post_run(window_body(sc))
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "60"
    assert "could not queue" in json.loads(resp.get_body())["error"]
    (run,) = records.list_runs(ctx.engine)
    assert run.status == records.FAILED and "queue service unreachable" in run.error


class CountingExecutor:
    """Stands in for the Azure ML executor (no workspace here): counts status calls."""

    name = "azureml"

    def __init__(self, state: str = RUNNING):
        self.state = state
        self.calls: list[str] = []

    def status(self, job_id: str) -> JobStatus:
        self.calls.append(job_id)
        return JobStatus(self.state, "mocked Azure ML job status")


def azureml_run(ctx) -> records.Run:
    end = scenario.END
    run, _ = records.create_run(
        ctx.engine, Window(end - timedelta(hours=1), end), "http", "azureml", RunFilters()
    )
    with ctx.engine.begin() as conn:
        records.update_run(
            conn,
            run.run_id,
            status=records.SUBMITTED,
            job_id="azureml:job-1",
            submitted_at=utcnow(),
        )
    return records.get_run(ctx.engine, run.run_id)


def age(ctx, run_id: str, seconds: float) -> None:
    """Move the run's last touch into the past, as the passing of time would."""
    with ctx.engine.begin() as conn:
        conn.execute(
            sa.update(runs)
            .where(runs.c.run_id == run_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def test_status_polls_reconcile_at_most_once_per_interval(ctx, monkeypatch):
    executor = CountingExecutor()
    monkeypatch.setattr("shared.executors.make_executor", lambda settings, name: executor)
    run = azureml_run(ctx)
    interval = ctx.settings.reconcile_interval_seconds
    assert interval == 60

    for _ in range(5):  # a client polling right after submission: no call yet
        assert get_run(run.run_id)["status"] == records.SUBMITTED
    assert executor.calls == []

    age(ctx, run.run_id, interval + 1)
    for _ in range(5):  # one call for the interval, however many polls
        assert get_run(run.run_id)["status"] == records.SCORING
    assert executor.calls == ["azureml:job-1"]

    age(ctx, run.run_id, interval + 1)
    executor.state = FAILED
    body = get_run(run.run_id)
    assert body["status"] == records.FAILED and "mocked Azure ML job status" in body["error"]
    assert len(executor.calls) == 2
    get_run(run.run_id)  # finished: never asked again
    assert len(executor.calls) == 2


def test_reconcile_claim_is_taken_once(ctx):
    from shared.runs.reconcile import claim_reconcile

    run = azureml_run(ctx)
    now = utcnow() + timedelta(seconds=ctx.settings.reconcile_interval_seconds + 1)
    assert claim_reconcile(ctx, run.run_id, now) is True
    assert claim_reconcile(ctx, run.run_id, now) is False  # a second instance, same moment
    assert claim_reconcile(ctx, run.run_id, now + timedelta(seconds=1)) is False
    later = now + timedelta(seconds=ctx.settings.reconcile_interval_seconds)
    assert claim_reconcile(ctx, run.run_id, later) is True


def test_polling_does_not_postpone_the_stall_timeout(ctx, monkeypatch):
    """The claim touches updated_at; stall detection measures progress from created, submitted
    and recorded times instead, so a polled run that never progresses still fails."""
    from shared.runs.reconcile import reconcile_run_if_due

    executor = CountingExecutor()
    monkeypatch.setattr("shared.executors.make_executor", lambda settings, name: executor)
    run = azureml_run(ctx)
    timeout = timedelta(minutes=ctx.settings.run_timeout_minutes)
    step = timedelta(seconds=ctx.settings.reconcile_interval_seconds + 1)
    now = run.submitted_at
    while now < run.submitted_at + timeout:
        now += step * 10
        run = reconcile_run_if_due(ctx, run, now)
    assert run.status == records.FAILED and run.error.startswith("stalled")


def test_storage_connection_gives_the_queue_endpoint():
    by_account = Settings.from_env(
        {"ScoringStorage__accountName": "stabc", "ScoringStorage__credential": "managedidentity"}
    ).storage
    assert by_account.endpoint == "https://stabc.blob.core.windows.net"
    assert by_account.queue_endpoint == "https://stabc.queue.core.windows.net"
    explicit = Settings.from_env(
        {
            "ScoringStorage__blobServiceUri": "https://b.example/",
            "ScoringStorage__queueServiceUri": "https://q.example/",
        }
    ).storage
    assert (explicit.endpoint, explicit.queue_endpoint) == (
        "https://b.example/",
        "https://q.example/",
    )
    from shared.queues import queue_service_client

    only_blob = Settings.from_env({"ScoringStorage__blobServiceUri": "https://b.example/"})
    with pytest.raises(ValueError, match="__queueServiceUri"):
        queue_service_client(only_blob.storage)
    assert Settings.from_env({}).runs_queue == "run-requests"


def test_queue_trigger_bindings_and_infrastructure_agree():
    from tests.helpers import functions_by_name

    bindings = {
        name: functions_by_name()[name].get_dict_repr()["bindings"][0]
        for name in ("prepare_run_request", "fail_poisoned_run_request")
    }
    assert bindings["prepare_run_request"]["queueName"] == "%RUNS_QUEUE%"
    assert bindings["fail_poisoned_run_request"]["queueName"] == "%RUNS_QUEUE%-poison"
    assert {b["connection"] for b in bindings.values()} == {"ScoringStorage"}
    host = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert host["messageEncoding"] == "base64" and host["maxDequeueCount"] >= 2
    main = (ROOT / "infra" / "main.bicep").read_text()
    assert "var runsQueue = 'run-requests'" in main
    assert "runsQueue\n      '${runsQueue}-poison'" in main
    app = (ROOT / "infra" / "app" / "function-app.bicep").read_text()
    assert "ScoringStorage__queueServiceUri: storage.properties.primaryEndpoints.queue" in app
    assert (
        "'Microsoft.Storage/storageAccounts/queueServices/queues@"
        in (ROOT / "infra" / "app" / "storage.bicep").read_text()
    )
    assert (
        "roles.storageQueueDataContributor" in (ROOT / "infra" / "app" / "rbac.bicep").read_text()
    )
