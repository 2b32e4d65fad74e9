"""Pushing a folder to the Hub, without ever touching the network: a dry run lists exactly the files, every check
runs before anything is created, one commit carries the whole folder, and the token is never shown."""

import logging
import socket
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, constants
from safetensors.torch import save_file

import nmtq.hub
from nmtq.cli import main
from nmtq.hub import check_push_to_hub
from nmtq.push import push_folder

SENTINEL = "hf_SENTINELtokenNEVERshown0123456789"
HF_API_METHODS = ("create_repo", "create_commit", "upload_folder", "upload_file", "whoami", "preupload_lfs_files",
                  "repo_info")


@pytest.fixture(autouse=True)
def no_hub_credentials_or_network(monkeypatch, tmp_path_factory):
    """No token from this machine, no offline mode, no socket, no HfApi call: a test opts back in to what it needs."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path_factory.mktemp("home") / "token"))

    def refuse(*args, **kwargs):
        raise AssertionError("the network was reached")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(nmtq.hub, "reachable", refuse)
    for method in HF_API_METHODS:
        monkeypatch.setattr(HfApi, method, refuse)


TEXT_FILES = {"config.json": '{"model_type": "marian"}', "README.md": "---\nlicense: apache-2.0\n---\n# card\n",
              "tokenizer_config.json": "{}", "dequantized/config.json": "{}"}


@pytest.fixture
def folder(tmp_path):
    """A small export-like folder: config, safetensors weights, model card, tokenizer file and a subfolder."""
    root = tmp_path / "export"
    (root / "dequantized").mkdir(parents=True)
    for name, text in TEXT_FILES.items():
        (root / name).write_text(text, encoding="utf-8")
    save_file({"w": torch.zeros(4, 4)}, str(root / "model.safetensors"))
    (root / ".git").mkdir()  # never uploaded by huggingface_hub, so never listed
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def expected_files(root):
    """Sorted (path, bytes): the texts' lengths, and the header plus 16 float32 zeros of the weights."""
    with open(root / "model.safetensors", "rb") as f:
        weights = 8 + int.from_bytes(f.read(8), "little") + 16 * 4
    sizes = {name: len(text.encode()) for name, text in TEXT_FILES.items()} | {"model.safetensors": weights}
    return tuple(sorted(sizes.items()))


@pytest.fixture
def fake_hub(monkeypatch):
    """A reachable Hub whose HfApi records its calls; ``fail`` names a method to make raise."""
    calls: list[tuple[str, dict]] = []
    hub = SimpleNamespace(calls=calls, fail=None, reached=[])
    monkeypatch.setattr(nmtq.hub, "reachable", lambda url, timeout=5.0: hub.reached.append(url) or True)

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if hub.fail == "create_repo":
            raise RuntimeError("connection reset")
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        calls.append(("create_commit", {"repo_id": repo_id, "operations": list(operations), **kwargs}))
        if hub.fail == "create_commit":
            raise RuntimeError("connection reset")
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc123")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return hub


def test_dry_run_lists_exactly_the_files_and_touches_nothing(folder, capsys):
    report = push_folder(folder, "alice/tiny", dry_run=True)
    assert report.files == expected_files(folder)
    assert report.commit_url is None and report.notes == ()
    assert main(["push", str(folder), "--repo-id", "alice/tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for path, size in expected_files(folder):
        assert f"{size:>15,}  {path}\n" in out
    assert ".git" not in out and "nothing was uploaded" in out


def test_unreachable_hub_fails_fast_and_uploads_nothing(folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    asked = []
    monkeypatch.setattr(nmtq.hub, "reachable", lambda url, timeout=5.0: asked.append(url) or False)
    with pytest.raises(ValueError, match="unreachable.*nothing was uploaded"):
        push_folder(folder, "alice/tiny")  # HfApi's methods raise AssertionError if called
    assert asked == [constants.ENDPOINT]


def test_offline_mode_is_refused_before_any_connection(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE.*nothing was uploaded"):
        push_folder(folder, "alice/tiny")


@pytest.mark.parametrize("private", [True, False])
def test_push_creates_the_repo_then_makes_one_commit_of_every_file(folder, fake_hub, monkeypatch, private):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    report = push_folder(folder, "alice/tiny", private=private, commit_message="first")
    (create, repo), (commit, kwargs) = fake_hub.calls  # upload_folder and the rest would raise
    assert create == "create_repo" and commit == "create_commit"
    assert repo == {"repo_id": "alice/tiny", "token": SENTINEL, "private": True if private else None,
                    "repo_type": "model", "exist_ok": True}
    assert [(op.path_in_repo, op.path_or_fileobj) for op in kwargs["operations"]] == [
        (path, str(folder / path)) for path, _ in expected_files(folder)]
    assert (kwargs["repo_id"], kwargs["token"], kwargs["repo_type"], kwargs["commit_message"]) == (
        "alice/tiny", SENTINEL, "model", "first")
    assert fake_hub.reached == [constants.ENDPOINT]
    assert (report.repo_url, report.commit_url) == ("https://huggingface.co/alice/tiny",
                                                    "https://huggingface.co/alice/tiny/commit/abc123")


def test_an_explicit_token_comes_before_hf_token_and_the_stored_login(folder, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_environment")
    push_folder(folder, "tiny", token=SENTINEL)
    assert [kwargs["token"] for _, kwargs in fake_hub.calls] == [SENTINEL, SENTINEL]
    monkeypatch.delenv("HF_TOKEN")
    with open(constants.HF_TOKEN_PATH, "w") as f:
        f.write("hf_stored_login")
    fake_hub.calls.clear()
    push_folder(folder, "tiny")
    assert [kwargs["token"] for _, kwargs in fake_hub.calls] == ["hf_stored_login"] * 2


@pytest.mark.parametrize("fail", [None, "create_repo", "create_commit"])
def test_the_token_is_never_printed_or_logged(folder, fake_hub, monkeypatch, capsys, caplog, fail):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    fake_hub.fail = fail
    caplog.set_level(logging.DEBUG)
    status = main(["push", str(folder), "--repo-id", "alice/tiny", "--private"])
    out, err = capsys.readouterr()
    assert status == (0 if fail is None else 2)
    assert [kwargs["token"] for _, kwargs in fake_hub.calls] == [SENTINEL] * len(fake_hub.calls)
    assert SENTINEL not in out + err + caplog.text
    if fail is None:
        assert "https://huggingface.co/alice/tiny/commit/abc123" in out
    else:
        assert "connection reset" in err


def test_failures_say_what_was_left_on_the_hub(folder, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    fake_hub.fail = "create_repo"
    with pytest.raises(ValueError, match="nothing was created or uploaded"):
        push_folder(folder, "alice/tiny")
    assert [name for name, _ in fake_hub.calls] == ["create_repo"]
    fake_hub.fail = "create_commit"
    with pytest.raises(ValueError, match="holds none of these files; run the push again"):
        push_folder(folder, "alice/tiny")


def test_a_missing_token_says_how_to_log_in(folder, fake_hub):
    with pytest.raises(ValueError, match="no Hugging Face token.*hf auth login.*HF_TOKEN"):
        push_folder(folder, "alice/tiny")
    assert fake_hub.calls == []


@pytest.mark.parametrize("pickle", ["pytorch_model.bin", "training_args.bin", "optimizer.pt", "dequantized/x.pkl"])
def test_pickle_files_are_refused(folder, pickle):
    (folder / pickle).write_bytes(b"\x80\x04.")
    with pytest.raises(ValueError, match=f"pickle files \\({pickle}\\).*safetensors only"):
        push_folder(folder, "alice/tiny", dry_run=True)


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_a_folder_without_config_or_safetensors_weights_is_refused(folder, missing):
    (folder / missing).unlink()
    with pytest.raises(ValueError, match=f"lacks {missing}, so it is not a model folder.*nmtq export"):
        push_folder(folder, "alice/tiny", dry_run=True)


def test_a_missing_model_card_is_a_note(folder):
    (folder / "README.md").unlink()
    assert "no README.md" in push_folder(folder, "alice/tiny", dry_run=True).notes[0]


@pytest.mark.parametrize("repo_id", ["alice/de en", "a/b/c", "alice/x--y", "alice/model.git", "-x", "", "x" * 97])
def test_bad_repo_ids_are_refused(folder, repo_id):
    with pytest.raises(ValueError, match="is not a Hub repository id.*NAMESPACE/NAME"):
        push_folder(folder, repo_id)


def test_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        push_folder(tmp_path / "nowhere", "alice/tiny", dry_run=True)


@pytest.mark.parametrize("argv", [["nowhere", "--repo-id", "alice/tiny"], ["{folder}", "--repo-id", "a b"]])
def test_cli_errors_exit_2_with_the_message(folder, capsys, argv):
    argv = [arg.format(folder=folder) for arg in argv]
    assert main(["push", *argv, "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("nmtq push: error: ")


# ---------------------------------------------------------------------------------------------- Trainer push_to_hub
def training_args(tmp_path, **fields):
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments(output_dir=str(tmp_path / "bible-de-en-qd4"), report_to="none", **fields)


def test_check_push_to_hub_passes_when_off_or_ready(tmp_path, fake_hub, monkeypatch):
    check_push_to_hub(training_args(tmp_path))
    assert fake_hub.reached == []
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    check_push_to_hub(training_args(tmp_path, push_to_hub=True, hub_model_id="alice/tiny"))
    assert fake_hub.reached == [constants.ENDPOINT] and fake_hub.calls == []  # checks only: creates nothing


def test_check_push_to_hub_refuses_an_unreachable_hub_or_no_token(tmp_path, fake_hub, monkeypatch):
    args = training_args(tmp_path, push_to_hub=True)  # the repo is named after output_dir, as the Trainer does
    with pytest.raises(ValueError, match="cannot push to bible-de-en-qd4 .*hf auth login"):
        check_push_to_hub(args)
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setattr(nmtq.hub, "reachable", lambda url, timeout=5.0: False)
    with pytest.raises(ValueError, match="unreachable.*cannot push to bible-de-en-qd4 \\(checked before training\\)"):
        check_push_to_hub(args)
    with pytest.raises(ValueError, match="--hub_model_id 'alice/a b' is not a Hub repository id"):
        check_push_to_hub(training_args(tmp_path, push_to_hub=True, hub_model_id="alice/a b"))


def test_the_token_resolution_is_huggingface_hubs(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    assert huggingface_hub.get_token() == SENTINEL  # what push_folder and check_push_to_hub rely on
