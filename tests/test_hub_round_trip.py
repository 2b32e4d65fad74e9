"""A packed export through the Hub and back, against a local folder that stands in for the Hub.

Uploads go through huggingface_hub's ``HfApi.create_repo`` and ``HfApi.create_commit`` (``nmtq push`` and
transformers' ``push_to_hub`` both call them); the stand-in applies each commit to a repository laid out as the Hub
cache lays out a download (``models--NS--NAME/snapshots/<commit>/``, ``refs/main``). Loading then goes through
``from_pretrained("NS/NAME")`` with a Hub id, in offline mode: transformers resolves the id in the cache exactly as
it does after a download. No socket is opened."""

import hashlib
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import CommitOperationAdd, HfApi, RepoUrl, constants

import nmtq.hub
from nmtq.cli import main
from nmtq.exported import load_exported

STUDENTS = {"qd": ["--method", "qd", "--bits", "3", "--max_steps", "2"]}


class LocalHub:
    """A folder in the Hub cache's layout; every commit is a new snapshot of the repository's files."""

    def __init__(self, root: Path) -> None:
        self.root, self.commits = root, []

    def repo(self, repo_id: str) -> Path:
        return self.root / f"models--{repo_id.replace('/', '--')}"

    def files(self, repo_id: str) -> dict[str, bytes]:
        repo = self.repo(repo_id)
        ref = repo / "refs" / "main"
        if not ref.is_file():
            return {}
        snapshot = repo / "snapshots" / ref.read_text()
        return {str(p.relative_to(snapshot)): p.read_bytes() for p in sorted(snapshot.rglob("*")) if p.is_file()}

    def create_repo(self, api, repo_id, **kwargs):
        (self.repo(repo_id) / "snapshots").mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"{constants.ENDPOINT}/{repo_id}")

    def create_commit(self, api, repo_id, operations, commit_message=None, **kwargs):
        files = self.files(repo_id)
        for op in operations:
            assert isinstance(op, CommitOperationAdd), op
            source = op.path_or_fileobj
            files[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes() \
                if isinstance(source, (str, Path)) else source.read()
        commit = hashlib.sha1(b"".join(k.encode() + v for k, v in sorted(files.items()))).hexdigest()
        snapshot = self.repo(repo_id) / "snapshots" / commit
        for name, data in files.items():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_bytes(data)
        (self.repo(repo_id) / "refs").mkdir(exist_ok=True)
        (self.repo(repo_id) / "refs" / "main").write_text(commit)
        self.commits.append((repo_id, sorted(op.path_in_repo for op in operations), commit_message))
        return SimpleNamespace(commit_url=f"{constants.ENDPOINT}/{repo_id}/commit/{commit}", oid=commit)


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw))
    monkeypatch.setattr(HfApi, "create_commit", lambda api, repo_id, operations, **kw:
                        hub.create_commit(api, repo_id, operations, **kw))
    monkeypatch.setattr(nmtq.hub, "reachable", lambda url, timeout=5.0: True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # downloads are answered by the cache: the stand-in
    monkeypatch.setenv("HF_TOKEN", "hf_local_stand_in")

    def refuse(*args, **kwargs):
        raise AssertionError("the stand-in Hub opens no socket")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return hub


def outputs(model, tokenizer):
    from conftest import ENGLISH, GERMAN

    batch = tokenizer(GERMAN[:3], text_target=ENGLISH[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits, model.generate(input_ids=batch["input_ids"],
                                                     attention_mask=batch["attention_mask"], num_beams=2,
                                                     max_new_tokens=6)


def test_a_pushed_export_loads_by_its_hub_id_and_pushes_back_the_same_bytes(distilled, local_hub, tmp_path,
                                                                              monkeypatch):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import nmtq  # noqa: F401  registers the quantization method "nmtq"

    out = tmp_path / "export"
    assert main(["export", str(distilled("qd")), str(out)]) == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # nmtq push refuses offline mode
    assert main(["push", str(out), "--repo-id", "alice/bible-qd3"]) == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pushed = local_hub.files("alice/bible-qd3")
    assert pushed == {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(local_hub.commits) == 1

    expected, tokenizer = load_exported(out)
    model = AutoModelForSeq2SeqLM.from_pretrained("alice/bible-qd3").eval()  # a Hub id, resolved in the cache
    assert "PackedLinear" in {type(m).__name__ for m in model.modules()}
    hub_tokenizer = AutoTokenizer.from_pretrained("alice/bible-qd3")
    assert hub_tokenizer("Am Anfang war das Wort.").input_ids == tokenizer("Am Anfang war das Wort.").input_ids
    for ours, theirs in zip(outputs(model, tokenizer), outputs(expected, tokenizer)):
        assert torch.equal(ours, theirs)

    # push_to_hub: save_pretrained into a temporary folder, then one commit of all of it
    model.push_to_hub("alice/bible-qd3-again")
    assert [c[0] for c in local_hub.commits] == ["alice/bible-qd3", "alice/bible-qd3-again"]
    again = local_hub.files("alice/bible-qd3-again")
    assert again["model.safetensors"] == pushed["model.safetensors"]
    assert {"config.json", "generation_config.json", "README.md"} <= set(again)
    shutil.rmtree(tmp_path / "export")  # nothing local is left to read: only the stand-in
    reloaded = AutoModelForSeq2SeqLM.from_pretrained("alice/bible-qd3-again").eval()
    for ours, theirs in zip(outputs(reloaded, tokenizer), outputs(expected, tokenizer)):
        assert torch.equal(ours, theirs)
