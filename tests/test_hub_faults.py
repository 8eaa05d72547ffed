"""The Hub misbehaving during a push: server errors, dropped connections, slow answers (loopback Hub)."""

from __future__ import annotations

import pytest
from support.films import REPO_ROOT

from cxrdistill.hub import push_folder
from cxrdistill.models import ModelLoadError

RELEASE = REPO_ROOT / "models" / "mlcak-student-28"


def head(hub, repo_id: str) -> tuple[str, set[str]]:
    repo = hub.state.repos[repo_id]
    commit = repo.commits[repo.branches["main"]]
    return commit.oid, set(commit.files)


@pytest.mark.parametrize("status", [500, 0], ids=["http-500", "dropped-connection"])
def test_a_transient_failure_is_retried(hub, status):
    repo_id = f"tester/transient-{status}"
    push_folder(RELEASE, repo_id)
    before = head(hub, repo_id)
    hub.state.fail_next("POST", rf"/api/models/{repo_id}/commit/", status=status, times=1)
    push_folder(RELEASE, repo_id, commit_message="second push")  # huggingface_hub retries and the push lands
    assert head(hub, repo_id)[0] != before[0]
    assert not hub.state.failures[-1][3]  # the injected failure was consumed


def test_a_failed_commit_publishes_nothing_and_says_so(hub):
    repo_id = "tester/faults-500"
    push_folder(RELEASE, repo_id)
    before = head(hub, repo_id)
    # every commit attempt fails, the client's own retries included (about 25 s of its backoff)
    hub.state.fail_next("POST", rf"/api/models/{repo_id}/commit/", status=500, times=10)
    with pytest.raises(ModelLoadError, match="nothing was published"):
        push_folder(RELEASE, repo_id, commit_message="second push")
    assert head(hub, repo_id) == before  # no half-published revision
    hub.state.failures.clear()
    push_folder(RELEASE, repo_id, commit_message="third push")  # the Hub is back: the push goes through
    assert head(hub, repo_id)[0] != before[0]


def test_a_slow_hub_is_waited_for(hub):
    repo_id = "tester/faults-slow"
    hub.state.fail_next("POST", r"/preupload/", status=None, times=1, delay=1.5)
    commit = push_folder(RELEASE, repo_id)
    assert head(hub, repo_id)[0] == commit


def test_a_failed_tag_says_the_commit_landed_untagged(hub):
    repo_id = "tester/faults-tag"
    hub.state.fail_next("POST", r"/tag/", status=500, times=10)
    with pytest.raises(ModelLoadError, match="but tagging it 'v1' failed"):
        push_folder(RELEASE, repo_id, tag="v1")
    hub.state.failures.clear()
    assert head(hub, repo_id)[1] >= {"config.json", "model.safetensors"}


def test_the_token_is_never_logged_or_published(hub, tmp_path, caplog):
    import logging
    import os

    from cxrdistill.hub import pull
    from cxrdistill.models import load_model

    token = os.environ["HF_TOKEN"]  # set by conftest: the client sends it with every request
    caplog.set_level(logging.DEBUG)
    model = load_model(RELEASE)
    model.save_pretrained(tmp_path / "saved")
    push_folder(tmp_path / "saved", "tester/token-check", tag="v1")
    folder = pull("tester/token-check", revision="v1", local_dir=tmp_path / "pulled")
    assert token not in caplog.text
    for path in [*(tmp_path / "saved").iterdir(), *folder.iterdir()]:
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    repo = hub.state.repos["tester/token-check"]
    for commit in repo.commits.values():
        assert all(token.encode() not in data for data in commit.files.values())
