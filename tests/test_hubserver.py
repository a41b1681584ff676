"""End-to-end tests of `LocalHub` with the real `huggingface_hub` and `datasets` clients.

`huggingface_hub` reads `HF_ENDPOINT` at import time, so every client runs in a fresh interpreter.
"""

import json
import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest

from hubserver import LocalHub, hub_env


@pytest.fixture
def hub(tmp_path):
    with LocalHub(tmp_path / "hub") as hub:
        yield hub


def run_client(hub: LocalHub, hf_home, *script_parts: str, **env: str) -> str:
    """Run the script made of `script_parts` (each dedented) in a fresh interpreter talking to `hub`.

    Returns its stdout and fails the test if it fails.
    """
    script = "\n".join(textwrap.dedent(part) for part in script_parts)
    full_env = {**hub_env(hub, hf_home), "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run([sys.executable, "-c", script], env=full_env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"client failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_model_folder(folder, weights: bytes):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_create_upload_and_download(hub, tmp_path):
    folder = make_model_folder(tmp_path / "model", os.urandom(200_000))
    run_client(hub, tmp_path / "home", """
        import os
        from pathlib import Path
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        folder = Path(os.environ["FOLDER"])
        api = HfApi()
        assert api.whoami()["name"] == "user"
        assert api.create_repo("user/m").repo_id == "user/m"
        assert api.create_repo("user/m", exist_ok=True).repo_id == "user/m"
        try:
            api.create_repo("user/m")
            raise AssertionError("creating an existing repo must fail")
        except HfHubHTTPError as e:
            assert e.response.status_code == 409

        api.upload_folder(folder_path=folder, repo_id="user/m")
        path = hf_hub_download("user/m", "model.safetensors")
        assert Path(path).read_bytes() == (folder / "model.safetensors").read_bytes()

        snapshot = Path(snapshot_download("user/m"))
        assert sorted(p.name for p in snapshot.iterdir()) == [".gitattributes", "config.json", "model.safetensors"]
        for name in ("config.json", "model.safetensors"):
            assert (snapshot / name).read_bytes() == (folder / name).read_bytes()

        lfs = {s.rfilename: s.lfs for s in api.model_info("user/m", files_metadata=True).siblings}
        assert lfs["config.json"] is None and lfs["model.safetensors"].size == 200_000
    """, FOLDER=str(folder))
    assert any(method == "PUT" and path.startswith("/lfs-upload/") for method, path, _ in hub.requests)


def test_old_revisions_and_offline_cache(hub, tmp_path):
    home, old_weights, new_weights = tmp_path / "home", os.urandom(200_000), os.urandom(200_000)
    (tmp_path / "old.bin").write_bytes(old_weights)
    (tmp_path / "new.bin").write_bytes(new_weights)
    folder = make_model_folder(tmp_path / "model", old_weights)
    first = run_client(hub, home, """
        import os
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo("user/m")
        print(api.upload_folder(folder_path=os.environ["FOLDER"], repo_id="user/m").oid)
    """, FOLDER=str(folder)).strip()
    make_model_folder(folder, new_weights)
    run_client(hub, home, """
        import os
        from pathlib import Path
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download

        api, first = HfApi(), os.environ["FIRST"]
        second = api.upload_folder(folder_path=os.environ["FOLDER"], repo_id="user/m").oid
        assert second != first and api.model_info("user/m").sha == second
        assert [c.commit_id for c in api.list_repo_commits("user/m")][:2] == [second, first]

        def read(**kwargs):
            return Path(hf_hub_download("user/m", "model.safetensors", **kwargs)).read_bytes()

        assert read(revision=first) == Path(os.environ["OLD"]).read_bytes()
        assert read() == Path(os.environ["NEW"]).read_bytes()
        snapshot_download("user/m")
    """, FOLDER=str(folder), FIRST=first, OLD=str(tmp_path / "old.bin"), NEW=str(tmp_path / "new.bin"))

    served = len(hub.requests)
    run_client(hub, home, """
        import os
        from pathlib import Path
        from huggingface_hub import hf_hub_download, snapshot_download

        def read(**kwargs):
            return Path(hf_hub_download("user/m", "model.safetensors", **kwargs)).read_bytes()

        assert read() == Path(os.environ["NEW"]).read_bytes()
        assert read(revision=os.environ["FIRST"]) == Path(os.environ["OLD"]).read_bytes()
        snapshot = Path(snapshot_download("user/m"))
        assert (snapshot / "config.json").read_text() == '{"hidden_size": 8}'
    """, HF_HUB_OFFLINE="1", FIRST=first, OLD=str(tmp_path / "old.bin"), NEW=str(tmp_path / "new.bin"))
    assert len(hub.requests) == served, "offline clients must not reach the hub"


def test_missing_repo_revision_and_file_raise_client_errors(hub, tmp_path):
    run_client(hub, tmp_path / "home", """
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        from huggingface_hub.errors import (
            RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
        )

        api = HfApi()
        api.create_repo("user/m")
        api.create_repo("user/ds", repo_type="dataset")
        cases = [
            (lambda: hf_hub_download("user/missing", "config.json"), RepositoryNotFoundError),
            (lambda: snapshot_download("user/missing"), RepositoryNotFoundError),
            (lambda: api.model_info("user/missing"), RepositoryNotFoundError),
            (lambda: api.dataset_info("user/m"), RepositoryNotFoundError),
            (lambda: hf_hub_download("user/m", "missing.json"), RemoteEntryNotFoundError),
            (lambda: hf_hub_download("user/ds", "missing.json", repo_type="dataset"), RemoteEntryNotFoundError),
            (lambda: hf_hub_download("user/m", ".gitattributes", revision="nope"), RevisionNotFoundError),
            (lambda: api.model_info("user/m", revision="nope"), RevisionNotFoundError),
        ]
        for call, error in cases:
            try:
                call()
            except error:
                continue
            raise AssertionError(f"expected {error.__name__}")
    """)


def _request(hub: LocalHub, method: str, path: str, body: dict | None = None, token: str | None = None):
    """Send a raw request; return (status, X-Error-Code header)."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(hub.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.headers.get("X-Error-Code")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("X-Error-Code")


def test_writes_need_the_token_and_private_repos_are_hidden(hub):
    create = {"name": "p", "organization": "user", "visibility": "private"}
    assert _request(hub, "POST", "/api/repos/create", create)[0] == 401
    assert _request(hub, "POST", "/api/repos/create", create, token="hf_wrong")[0] == 401
    assert _request(hub, "POST", "/api/repos/create", create, token=hub.token)[0] == 200
    assert _request(hub, "GET", "/api/models/user/p", token=hub.token) == (200, None)
    assert _request(hub, "GET", "/api/models/user/p") == (404, "RepoNotFound")
    assert _request(hub, "POST", "/api/models/user/p/commit/main", {}, token="hf_wrong")[0] == 401


IMAGE_ROWS = """
    from PIL import Image

    def image_rows():
        colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 99, 199)]
        return [Image.new("RGB", (8, 6), color) for color in colors], [3, 1, 4, 1]
"""

LOAD_AND_CHECK = """
    import datasets

    images, labels = image_rows()
    loaded = datasets.load_dataset("user/ds", split="train")
    assert loaded["label"] == labels
    for row, image in zip(loaded, images):
        assert row["image"].size == image.size and row["image"].getpixel((0, 0)) == image.getpixel((0, 0))
"""


def test_datasets_push_to_hub_and_load_dataset(hub, tmp_path):
    run_client(hub, tmp_path / "pusher", IMAGE_ROWS, """
        import datasets

        images, labels = image_rows()
        datasets.Dataset.from_dict({"image": images, "label": labels}).push_to_hub("user/ds")
    """)
    run_client(hub, tmp_path / "loader", IMAGE_ROWS, LOAD_AND_CHECK)


def test_parquet_upload_file_and_load_dataset(hub, tmp_path):
    run_client(hub, tmp_path / "pusher", IMAGE_ROWS, """
        import io
        import datasets
        from huggingface_hub import HfApi

        images, labels = image_rows()
        buffer = io.BytesIO()
        datasets.Dataset.from_dict({"image": images, "label": labels}).to_parquet(buffer)
        api = HfApi()
        api.create_repo("user/ds", repo_type="dataset")
        api.upload_file(path_or_fileobj=buffer.getvalue(), path_in_repo="data/train-00000-of-00001.parquet",
                        repo_id="user/ds", repo_type="dataset")
    """)
    run_client(hub, tmp_path / "loader", IMAGE_ROWS, LOAD_AND_CHECK)
