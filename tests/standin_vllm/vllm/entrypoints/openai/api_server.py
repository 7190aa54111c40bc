"""A stand-in for `python -m vllm.entrypoints.openai.api_server` (tests/test_processes.py).

Put tests/standin_vllm first on PYTHONPATH and point FRET_VLLM_PYTHON at an interpreter that has
fret: fret then starts this instead of vLLM. Like vLLM it takes --port and --served-model-name,
starts a child process (vLLM's engine core), answers the OpenAI protocol (pipeline.testing's stub)
and stops on SIGTERM. It appends "<server pid> <child pid>" to $STANDIN_PIDS when it starts, so a
test can check that nothing is left. $STANDIN_DELAY_S: seconds before it listens (a slow start);
$STANDIN_FAULT: "hang" (generation never answers) or "500" (every generation fails).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="standin")
    args, _ = parser.parse_known_args()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # the "engine core"
    with open(os.environ["STANDIN_PIDS"], "a") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(float(os.environ.get("STANDIN_DELAY_S", "0")))
    from pipeline.testing.stub_llm import Fault, StubLLM

    def distinct(prompt: str) -> str:
        return json.dumps({"task": "find the passage", "query": f"query {abs(hash(prompt)) % 10**8}"})

    stub = StubLLM(model=args.served_model_name, port=args.port, generate_fn=distinct, record=False)
    fault = os.environ.get("STANDIN_FAULT")
    if fault == "hang":
        stub.add_faults(Fault("hang", seconds=3600, path="chat/completions", repeat=True))
    elif fault == "500":
        stub.add_faults(Fault("status", status=500, repeat=True))
    stub.start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
