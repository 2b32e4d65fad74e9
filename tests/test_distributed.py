"""Distributed launches: DDP is the one engine (FSDP and the like are refused at start), and a two-machine launch
distils and resumes a quantized student."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_distill import distill_argv

from nmtq.args import parse_train_args
from nmtq.distributed import check_distributed_engine
from nmtq.errors import NmtqError
from nmtq.models import load_model

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
ENGINE_FIELDS = dict(fsdp=None, fsdp_config=None, deepspeed=None, parallelism_config=None)  # TrainingArguments' own
# accelerate's launch config for FSDP2 on two CPU processes: what a user would get from `accelerate config`
FSDP2 = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
num_machines: 1
machine_rank: 0
num_processes: 2
mixed_precision: 'no'
rdzv_backend: static
same_network: true
main_training_function: main
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_cpu_ram_efficient_loading: true
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
"""


def refusal(**kwargs) -> str:
    with pytest.raises(NmtqError) as caught:
        check_distributed_engine(**kwargs)
    message = str(caught.value)
    assert "\n" not in message and "DDP" in message and "cpu.yaml" in message  # one line that says what to run
    return message


@pytest.mark.parametrize("variable, engine", [("ACCELERATE_USE_FSDP", "FSDP"),
                                              ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                                              ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")])
@pytest.mark.parametrize("value", ["true", "True", "1", "yes"])
def test_an_engine_asked_for_by_accelerate_launch_is_refused(variable, engine, value):
    assert f"with {engine} ({variable}={value})" in refusal(environ={variable: value})


@pytest.mark.parametrize("environ", [{}, {"ACCELERATE_USE_FSDP": "false"}, {"ACCELERATE_USE_DEEPSPEED": "0"},
                                     {"ACCELERATE_USE_FSDP": ""}, {"ACCELERATE_USE_CPU": "True"},
                                     {"ACCELERATE_USE_PARALLELISM_CONFIG": "true",  # replicas only: that is DDP
                                      "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": "2",
                                      "PARALLELISM_CONFIG_DP_SHARD_SIZE": "1", "PARALLELISM_CONFIG_TP_SIZE": "1"}])
def test_one_process_and_ddp_pass(environ):
    assert check_distributed_engine(SimpleNamespace(**ENGINE_FIELDS), environ=environ) is None


@pytest.mark.parametrize("size", ["DP_SHARD_SIZE", "TP_SIZE"])
def test_a_parallelism_config_that_splits_weights_is_refused(size):
    environ = {"ACCELERATE_USE_PARALLELISM_CONFIG": "true", f"PARALLELISM_CONFIG_{size}": "2"}
    assert f"{size.lower()} 2" in refusal(environ=environ)
    assert check_distributed_engine(environ={f"PARALLELISM_CONFIG_{size}": "2"}) is None  # not in use


def test_the_environment_is_read_by_default(monkeypatch):
    for variable in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_MEGATRON_LM",
                     "ACCELERATE_USE_PARALLELISM_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    assert check_distributed_engine() is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert "ACCELERATE_USE_FSDP=true" in refusal()
    assert "ACCELERATE_USE_FSDP=true" in refusal(training_args=SimpleNamespace(**ENGINE_FIELDS))


@pytest.mark.parametrize("fields, shown", [
    ({"fsdp": "full_shard auto_wrap"}, "--fsdp full_shard auto_wrap:"),
    ({"fsdp": True}, "--fsdp true:"),  # what TrainingArguments leaves after reading --fsdp
    ({"fsdp_config": {"version": 2}}, "--fsdp_config {'version': 2}:"),
    ({"fsdp_config": "fsdp.json"}, "--fsdp_config fsdp.json:"),
    ({"deepspeed": "ds_zero3.json"}, "--deepspeed ds_zero3.json:"),
    ({"deepspeed": {"zero_optimization": {"stage": 3}}}, "--deepspeed {'zero_optimization'"),
    ({"parallelism_config": SimpleNamespace(dp_shard_size=2, tp_size=1)}, "parallelism_config with dp_shard_size 2"),
    ({"parallelism_config": SimpleNamespace(dp_shard_size=1, tp_size=4)}, "parallelism_config with tp_size 4"),
])
def test_an_engine_asked_for_by_training_arguments_is_refused(fields, shown):
    assert refusal(training_args=SimpleNamespace(**{**ENGINE_FIELDS, **fields}), environ={}).startswith(shown)


@pytest.mark.parametrize("fields", [{"fsdp": ""}, {"fsdp": False}, {"fsdp_config": {}}, {"deepspeed": ""},
                                    {"parallelism_config": SimpleNamespace(dp_shard_size=1, tp_size=1)}])
def test_engine_fields_left_off_pass(fields):
    assert check_distributed_engine(SimpleNamespace(**{**ENGINE_FIELDS, **fields}), environ={}) is None


def test_real_training_arguments(tmp_path):
    *_, plain = parse_train_args(["--output_dir", str(tmp_path), "--report_to", "none"])
    assert check_distributed_engine(plain, environ={}) is None
    with pytest.raises(NmtqError, match="--fsdp true: .*DDP"):  # refused while the arguments are parsed
        parse_train_args(["--output_dir", str(tmp_path), "--report_to", "none", "--fsdp"])


def test_the_check_imports_nothing_heavy():
    # it runs before anything is loaded: it must work with torch, transformers and accelerate unimportable
    code = ("import sys\nfor name in ('torch', 'transformers', 'accelerate'):\n    sys.modules[name] = None\n"
            "from nmtq.distributed import check_distributed_engine\n"
            "print(check_distributed_engine(environ={}))\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == \
        "None\n"


# ------------------------------------------------------------------------------------------- launches, end to end
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_fsdp2(tmp_path: Path, *command: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``command`` under `accelerate launch` with an FSDP2 config of two processes; the run and nmtq's error lines."""
    config = tmp_path / "fsdp2.yaml"
    config.write_text(FSDP2, encoding="utf-8")
    result = subprocess.run([*LAUNCH, "--config_file", str(config), "--main_process_port", str(free_port()),
                             *command], capture_output=True, text=True, timeout=300)
    return result, [line for line in result.stderr.splitlines() if line.startswith("nmtq distill: error:")]


def worker_statuses(result: subprocess.CompletedProcess) -> set[int]:
    """The exit statuses of the workers in torchrun's failure report, less those of workers it stopped by a signal
    once another had failed (negative)."""
    statuses = {int(s) for s in re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", result.stderr, re.MULTILINE)}
    return {s for s in statuses if s >= 0}


def assert_refused_at_start(result: subprocess.CompletedProcess, errors: list[str]) -> None:
    # accelerate launch (torchrun) exits 1 with its ChildFailedError report whenever a worker fails; the workers'
    # own status, 2 (nmtq's user error), is in that report
    assert result.returncode != 0 and worker_statuses(result) == {2}, result.stderr[-3000:]
    # each process says the same one line (accelerate's own warnings and report are not nmtq's)
    assert len(set(errors)) == 1 and 1 <= len(errors) <= 2, result.stderr[-3000:]
    assert "DDP" in errors[0] and "FSDP" in errors[0] and "cpu.yaml" in errors[0]
    assert "meta tensor" not in result.stderr  # no model was loaded
    assert result.stderr.count("Traceback (most recent call last)") == 1  # accelerate's own ChildFailedError only


def test_an_fsdp2_launch_sets_what_the_check_reads(tmp_path):
    """The environment of a real FSDP2 launch, read by the check the way `nmtq distill` reads it."""
    script = tmp_path / "check.py"
    script.write_text("import sys\nfrom nmtq.distributed import check_distributed_engine\n"
                      "from nmtq.errors import NmtqError\ntry:\n    check_distributed_engine()\n"
                      "except NmtqError as err:\n    sys.exit(f'nmtq distill: error: {err}')\n"
                      "print('not refused')\n", encoding="utf-8")
    result, errors = launch_fsdp2(tmp_path, str(script))
    assert "not refused" not in result.stdout
    assert worker_statuses(result) == {1}, result.stderr[-3000:]  # sys.exit(message); nmtq.cli.main's is 2
    assert len(set(errors)) == 1 and "ACCELERATE_USE_FSDP=true" in errors[0] and "DDP" in errors[0]


def test_nmtq_distill_under_an_fsdp2_launch_is_refused_before_anything_is_written(corpus, small_teacher, tmp_path):
    out = tmp_path / "never"
    result, errors = launch_fsdp2(tmp_path, "-m", "nmtq", *distill_argv(corpus, small_teacher, out, "--method", "qd",
                                                                         "--max_steps", "2", "--save_strategy", "no"))
    assert_refused_at_start(result, errors)
    assert not out.exists()


def launch_two_machines(argv: list[str], logs: Path, timeout: float = 180) -> list[str]:
    """``nmtq`` with ``argv`` on two "machines" of one process each (machine ranks 0 and 1, both on 127.0.0.1),
    launched at once as a cluster's nodes would be; returns their stderr. Both are killed on a failure or timeout."""
    port, procs = free_port(), []
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for rank in (0, 1):
            # recipes/accelerate/cpu.yaml gives MULTI_GPU (torchrun + gloo on a CPU); the flags make it two machines
            command = [*LAUNCH, "--config_file", str(ROOT / "recipes" / "accelerate" / "cpu.yaml"),
                       "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                       "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "-m", "nmtq", *argv]
            with open(logs / f"machine{rank}.out", "w") as stdout, open(logs / f"machine{rank}.err", "w") as stderr:
                procs.append(subprocess.Popen(command, stdout=stdout, stderr=stderr, start_new_session=True))
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its worker: the whole session
                proc.wait()
    errs = [(logs / f"machine{rank}.err").read_text() for rank in (0, 1)]
    for rank, (proc, err) in enumerate(zip(procs, errs)):
        assert proc.returncode == 0, f"machine {rank} exited {proc.returncode}:\n{err[-3000:]}"
    return errs


def trainer_state(out: Path, step: int) -> dict:
    return json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())


def assert_quantized(out: Path, bits: int, bucket_size: int) -> None:
    """Every weight that quantization.json lists holds at most 2**bits distinct values per bucket (buckets are
    runs of bucket_size values of the flattened weight)."""
    quantization = json.loads((out / "quantization.json").read_text())
    assert quantization["config"]["bits"] == bits and quantization["config"]["bucket_size"] == bucket_size
    weights = dict(load_model(out).named_parameters())
    assert "model.shared.weight" in quantization["bits"]
    for name in quantization["bits"]:
        buckets = weights[name].detach().flatten().split(bucket_size)  # the last may be short
        assert max(len(torch.unique(b)) for b in buckets) <= 2**bits, name


def test_two_machines_distil_a_quantized_student_and_resume(corpus, small_teacher, tmp_path):
    out, bits, bucket_size = tmp_path / "qd", 4, 64  # buckets of 64 so that 2**4 levels is a real limit
    argv = distill_argv(corpus, small_teacher, out, "--method", "qd", "--bits", str(bits), "--bucket_size",
                        str(bucket_size), "--save_steps", "1")
    launch_two_machines([*argv, "--max_steps", "2"], tmp_path / "logs-first")
    # 12 pairs, 4 a process a step: two processes take 2 steps an epoch (one would take 3, and be at 2/3)
    assert trainer_state(out, 2)["global_step"] == 2 and trainer_state(out, 2)["epoch"] == 1.0
    assert_quantized(out, bits, bucket_size)

    saved = (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns
    launch_two_machines([*argv, "--max_steps", "3", "--resume_from_checkpoint", "last"], tmp_path / "logs-resumed")
    assert (out / "checkpoint-2" / "trainer_state.json").stat().st_mtime_ns == saved  # resumed, not restarted
    assert trainer_state(out, 3)["global_step"] == 3 and trainer_state(out, 3)["epoch"] == 1.5
    assert [e["step"] for e in trainer_state(out, 3)["log_history"] if "loss" in e] == [1, 2, 3]
    assert_quantized(out, bits, bucket_size)
