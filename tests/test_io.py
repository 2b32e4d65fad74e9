"""Atomic writes, and the sweep of temporary files that killed runs leave: only a dead process's, only this host's."""

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import nmtq.io
from nmtq.io import (
    _TEMPORARY,
    atomic_path,
    sweep_temporary_files,
    temporary_name,
    temporary_prefix,
    write_text_atomic,
)

HOST = nmtq.io._host()


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip("the exited process's id was reused at once")


def marked(name: str, pid: int, host: str = HOST, random: str = "k3x_9q2a", suffix: str = ".tmp") -> str:
    """The name nmtq gives a temporary stand-in for ``name``, as made by process ``pid`` of ``host``."""
    return f".{name}.nmtq-tmp-{host}-{pid}-{random}{suffix}"


def test_only_the_temporaries_of_dead_processes_of_this_host_are_swept(tmp_path, dead_pid):
    dead_file = tmp_path / marked("model.safetensors", dead_pid)
    dead_folder = tmp_path / marked("export", dead_pid, suffix="")
    mine = tmp_path / marked("vocab.json", os.getpid())
    other_host = tmp_path / marked("trainer_state.json", dead_pid, host="elsewhere_4026531836")
    parked = tmp_path / (marked("export", dead_pid) + ".old")  # an earlier export: maybe the only copy
    unmarked = [tmp_path / "model.safetensors", tmp_path / ".model.safetensors.tmp", tmp_path / "notes.nmtq-tmp-x-1-y"]
    for path in (dead_file, mine, other_host, *unmarked):
        path.write_text("x")
    for folder in (dead_folder, parked):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "model.bin").write_text("x")
    assert sweep_temporary_files(tmp_path) == sorted([dead_file, dead_folder])
    assert sorted(tmp_path.iterdir()) == sorted([mine, other_host, parked, *unmarked])
    assert sweep_temporary_files(tmp_path) == []


def test_a_process_of_another_user_counts_as_alive(tmp_path, dead_pid, monkeypatch):
    entry = tmp_path / marked("model.safetensors", dead_pid)
    entry.write_text("x")

    def refused(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")  # what os.kill says of another user's process

    monkeypatch.setattr(os, "kill", refused)
    assert sweep_temporary_files(tmp_path) == [] and entry.exists()
    monkeypatch.undo()
    assert sweep_temporary_files(tmp_path) == [entry]


def test_process_id_1_is_never_swept(tmp_path):
    init = tmp_path / marked("model.safetensors", 1)
    init.write_text("x")
    assert sweep_temporary_files(tmp_path) == [] and init.exists()


def test_a_recursive_sweep_reaches_checkpoints_and_a_plain_one_does_not(tmp_path, dead_pid):
    nested = tmp_path / "checkpoint-2" / marked("quantizer-masks.safetensors", dead_pid)
    nested.parent.mkdir()
    nested.write_text("x")
    assert sweep_temporary_files(tmp_path) == [] and nested.exists()
    assert sweep_temporary_files(tmp_path, recursive=True) == [nested] and not nested.exists()


def test_links_are_removed_not_followed(tmp_path, dead_pid):
    target = tmp_path / "kept"
    (target / "inside").mkdir(parents=True)
    link = tmp_path / marked("export", dead_pid, suffix="")
    link.symlink_to(target, target_is_directory=True)
    assert sweep_temporary_files(tmp_path, recursive=True) == [link]
    assert not os.path.lexists(link) and (target / "inside").is_dir()


def test_a_missing_directory_sweeps_nothing(tmp_path):
    assert sweep_temporary_files(tmp_path / "missing") == []
    assert sweep_temporary_files(tmp_path / "missing", recursive=True) == []


def test_an_entry_removed_meanwhile_is_no_error(tmp_path, dead_pid, monkeypatch):
    file, folder = tmp_path / marked("a", dead_pid), tmp_path / marked("b", dead_pid, suffix="")
    file.write_text("x")
    (folder / "sub").mkdir(parents=True)
    alive = nmtq.io._alive

    def another_sweep_gets_there_first(pid: int) -> bool:
        for path in (file, folder / "sub"):
            if path.exists():
                os.unlink(path) if path.is_file() else os.rmdir(path)
        return alive(pid)

    monkeypatch.setattr(nmtq.io, "_alive", another_sweep_gets_there_first)
    assert sweep_temporary_files(tmp_path) == [file, folder] and list(tmp_path.iterdir()) == []


def test_a_run_killed_inside_atomic_path_leaves_a_temporary_the_next_run_sweeps(tmp_path):
    target = tmp_path / "metrics.json"
    script = ("import sys, time\nfrom nmtq.io import atomic_path\n"
              f"with atomic_path({str(target)!r}) as tmp:\n"
              "    tmp.write_text('{\"half')\n    print(tmp.name, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    left = tmp_path / name
    assert left.is_file() and not target.exists()
    assert name.startswith(f".metrics.json.nmtq-tmp-{HOST}-{proc.pid}-") and name.endswith(".tmp")
    assert sweep_temporary_files(tmp_path) == [left] and list(tmp_path.iterdir()) == []


def test_atomic_path_writes_through_a_marked_temporary_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "model.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and _TEMPORARY.fullmatch(tmp.name)
        assert tmp.name.startswith(f".model.bin.nmtq-tmp-{HOST}-{os.getpid()}-")
        assert sweep_temporary_files(target.parent) == []  # our own, while we write it
        tmp.write_bytes(b"ok")
    assert target.read_bytes() == b"ok" and list(target.parent.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"ok" and list(target.parent.iterdir()) == [target]
    write_text_atomic(target, "again")
    assert target.read_text() == "again"


def test_names_made_for_mkstemp_mkdtemp_and_by_hand_are_all_recognised(tmp_path):
    folder = Path(tempfile.mkdtemp(dir=tmp_path, prefix=temporary_prefix(tmp_path / "export"), suffix=".tmp"))
    with tempfile.TemporaryDirectory(dir=tmp_path, prefix=temporary_prefix("tokenizer")) as tokenizer_dir:
        names = [folder.name, Path(tokenizer_dir).name, temporary_name("vocab.json"), temporary_name("vocab.json")]
        assert all(_TEMPORARY.fullmatch(name) for name in names) and names[2] != names[3]
        assert all(_TEMPORARY.fullmatch(name)["pid"] == str(os.getpid()) for name in names)
        assert folder.name.startswith(".export.nmtq-tmp-") and names[1].startswith(".tokenizer.nmtq-tmp-")


def test_a_host_name_with_dashes_and_dots_still_parses(monkeypatch):
    monkeypatch.setattr(nmtq.io.socket, "gethostname", lambda: "gpu-node-7.cluster.example")
    nmtq.io._host.cache_clear()
    try:
        name = temporary_name("model-00001-of-00002.safetensors")
        match = _TEMPORARY.fullmatch(name)
        assert match["host"].startswith("gpu_node_7_cluster_example") and match["pid"] == str(os.getpid())
    finally:
        monkeypatch.undo()
        nmtq.io._host.cache_clear()
    assert nmtq.io._host() == HOST

