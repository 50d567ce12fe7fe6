"""The load benchmark's Python peer: what a team would write by hand.

A FastAPI webhook receiver that does what ingest does for the guest-WiFi
source, the way the usual examples do it: check the hex HMAC-SHA256 of the
body in `X-Purple-Signature` on the exact bytes, produce the body to Kafka
(`acks=all`, idempotent, `linger.ms` 5, key = the venue), and answer 200
only after the delivery report. No envelope (it writes the body as is), no
rate limits, no metrics: a floor for the work, not a rival product.

Started by `cargo run --release -p pipeline-benches --bin load` under
uvicorn with two workers; settings from the environment: PEER_BROKERS,
PEER_TOPIC, PEER_SECRET.
"""

import asyncio
import hashlib
import hmac
import json
import os
import threading

from confluent_kafka import Producer
from fastapi import FastAPI, Request, Response

BROKERS = os.environ["PEER_BROKERS"]
TOPIC = os.environ["PEER_TOPIC"]
SECRET = os.environ["PEER_SECRET"].encode()

app = FastAPI()
producer = Producer(
    {
        "bootstrap.servers": BROKERS,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
    }
)


def _poll_forever() -> None:
    # Delivery reports are served on this thread; each resolves its
    # request's future on the event loop.
    while True:
        producer.poll(0.1)


threading.Thread(target=_poll_forever, daemon=True).start()


@app.get("/healthz")
async def healthz() -> Response:
    return Response(status_code=200)


@app.post("/webhooks/purple")
async def receive(request: Request) -> Response:
    body = await request.body()
    given = request.headers.get("x-purple-signature", "")
    expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given, expected):
        return Response(status_code=401)
    try:
        venue = json.loads(body)["venue"]["id"]
    except (ValueError, KeyError, TypeError):
        return Response(status_code=400)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def report(err, _msg) -> None:
        loop.call_soon_threadsafe(done.set_result, err)

    try:
        producer.produce(TOPIC, value=body, key=str(venue), on_delivery=report)
    except BufferError:
        return Response(status_code=503, headers={"retry-after": "1"})
    err = await done
    if err is not None:
        return Response(status_code=503, headers={"retry-after": "1"})
    return Response(status_code=200)
