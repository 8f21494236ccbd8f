"""Run the telemetry service: `python -m services.telemetry`."""

import gc

from services.telemetry.app import make_app
from shared.service import run
from shared.settings import get_settings

# The cyclic garbage collector runs a young-generation pass after this many
# net allocations of container objects (Python's default is 700). Every
# event leaves a few of them alive until its batch is acked: the nats-py
# message, its headers and the decoded fields. At the default, each batch of
# 10,000 was scanned again and again as it aged into the older generations.
# At 50,000 the service took 21 instead of 25 µs of CPU per event in
# load_tests/bench_telemetry.py on two cores. The service makes few
# reference cycles, so little garbage waits for the later passes.
GC_YOUNG_THRESHOLD = 50_000
# How many young passes run before a middle-generation pass, and middle
# passes before a full one (Python's defaults are 10 and 10).
GC_OLDER_THRESHOLDS = (20, 100)

if __name__ == "__main__":
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)
    run("telemetry", get_settings(), make_app)
