"""Local, Hub-compatible HTTP server for offline tests.

`LocalHub` serves the part of the Hugging Face Hub HTTP API that the real `huggingface_hub` client and the
`datasets` library use to create repositories, commit files (inline or through the LFS batch protocol), list
trees and download files. `huggingface_hub` reads `HF_ENDPOINT` at import time, so clients must run in a
fresh interpreter started with the environment returned by `hub_env`.

Storage layout under `root_dir`:

    blobs/<sha256>                                    file contents, shared by all repositories
    repos/<type>/<namespace>/<name>/meta.json         visibility, creation date and branches
    repos/<type>/<namespace>/<name>/commits/<sha>.json    commit metadata and full file manifest
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_TOKEN = "hf_local_test_token"
DEFAULT_USERNAME = "user"

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# Files at least this large, binary files and files matching an LFS rule of `.gitattributes` go through LFS.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
LFS_PATTERNS = ("*.bin", "*.ckpt", "*.gz", "*.h5", "*.npy", "*.npz", "*.onnx", "*.parquet", "*.pt", "*.pth",
                "*.safetensors", "*.tar", "*.zip")
INITIAL_GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)

_NAME_RE = re.compile(r"[A-Za-z0-9][\w.-]*")
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_OID_RE = re.compile(r"[0-9a-f]{64}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


class HubError(Exception):
    """An error reply. `code` becomes the `X-Error-Code` header, which the client maps to its exception types."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}  # more fields of the JSON error body


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _regular_entry(data: bytes, sha256: str) -> dict:
    return {"size": len(data), "sha256": sha256, "oid": _git_blob_oid(data), "lfs": False}


def _lfs_entry(sha256: str, size: int) -> dict:
    return {"size": size, "sha256": sha256, "oid": _git_blob_oid(_lfs_pointer(sha256, size)), "lfs": True}


def _matches(patterns: list[str], path: str) -> bool:
    """Whether `path` matches a git-style pattern (patterns without a slash match the file name)."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch(path if "/" in p else name, p.lstrip("/")) for p in patterns)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _clean_path(path: str) -> str:
    parts = path.split("/")
    if not path or any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())


# ---------------------------------------------------------------------------------------------------- storage


class _Repo:
    """One repository on disk: `meta.json` and one immutable manifest per commit."""

    def __init__(self, store: _Store, repo_type: str, repo_id: str):
        self.store, self.type, self.id = store, repo_type, repo_id
        self.dir = store.root / "repos" / repo_type / repo_id

    @property
    def exists(self) -> bool:
        return (self.dir / "meta.json").is_file()

    @property
    def meta(self) -> dict:
        return _read_json(self.dir / "meta.json")

    @property
    def web_path(self) -> str:
        """Path of the repo page, also the prefix of its `/resolve/` and `.git/` URLs."""
        return URL_PREFIXES[self.type] + self.id

    def commit(self, sha: str) -> dict:
        return _read_json(self.dir / "commits" / f"{sha}.json")

    def resolve(self, revision: str) -> dict:
        """The commit a branch name or full commit sha points to."""
        sha = self.meta["refs"].get(revision)
        if sha is None and _SHA_RE.fullmatch(revision) and (self.dir / "commits" / f"{revision}.json").is_file():
            sha = revision
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commit(sha)

    def history(self, commit: dict) -> Iterator[dict]:
        """`commit` and its ancestors, newest first."""
        while True:
            yield commit
            if not commit["parents"]:
                return
            commit = self.commit(commit["parents"][0])

    def read(self, commit: dict, path: str) -> bytes | None:
        entry = commit["files"].get(path)
        return None if entry is None else self.store.blob_path(entry["sha256"]).read_bytes()

    def add_commit(self, branch: str, files: dict, title: str, message: str = "", parent: str | None = None) -> dict:
        """Record a commit on `branch` (the caller holds the store lock)."""
        record = {"title": title, "message": message, "date": _now(), "parents": [parent] if parent else [],
                  "files": dict(sorted(files.items()))}
        record["id"] = hashlib.sha1(json.dumps(record, sort_keys=True).encode() + os.urandom(16)).hexdigest()
        _write_json(self.dir / "commits" / f"{record['id']}.json", record)
        self.set_ref(branch, record["id"])
        return record

    def set_ref(self, branch: str, sha: str) -> None:
        meta = self.meta
        meta["refs"][branch] = sha
        _write_json(self.dir / "meta.json", meta)


class _Store:
    """Repositories and a content-addressed blob store under one root directory."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.RLock()
        self._announced: set[str] = set()  # LFS oids the batch endpoint handed out an upload URL for
        (root / "blobs").mkdir(parents=True, exist_ok=True)

    def repo(self, repo_type: str, repo_id: str) -> _Repo:
        return _Repo(self, repo_type, repo_id)

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def has_blob(self, sha256: str) -> bool:
        return bool(_OID_RE.fullmatch(sha256)) and self.blob_path(sha256).is_file()

    def put_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha256):
            _write_atomic(self.blob_path(sha256), data)
        return sha256

    def create_repo(self, repo: _Repo, private: bool) -> bool:
        """Create `repo` with an initial `.gitattributes` commit; False if it already exists."""
        with self.lock:
            if repo.exists:
                return False
            _write_json(repo.dir / "meta.json", {"private": private, "createdAt": _now(), "refs": {}})
            data = INITIAL_GITATTRIBUTES.encode()
            files = {".gitattributes": _regular_entry(data, self.put_blob(data))}
            repo.add_commit("main", files, title="initial commit")
            return True

    def delete_repo(self, repo: _Repo) -> None:
        with self.lock:
            shutil.rmtree(repo.dir)

    def announce_upload(self, oid: str) -> None:
        with self.lock:
            self._announced.add(oid)

    def accept_upload(self, oid: str, data: bytes) -> None:
        with self.lock:
            if oid not in self._announced:
                raise HubError(403, "No upload was requested for this object through the LFS batch endpoint")
            if hashlib.sha256(data).hexdigest() != oid:
                raise HubError(400, "Uploaded content does not match its sha256 oid")
            self.put_blob(data)
            self._announced.discard(oid)


# ---------------------------------------------------------------------------------------------------- tree views


def _file_info(path: str, entry: dict) -> dict:
    info = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
    if entry["lfs"]:
        pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
        info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
    return info


def _under(files: dict, folder: str) -> list[tuple[str, str]]:
    prefix = folder + "/"
    return sorted((path, entry["oid"]) for path, entry in files.items() if path.startswith(prefix))


def _folder_info(path: str, files: dict) -> dict:
    oid = hashlib.sha1(json.dumps(_under(files, path)).encode()).hexdigest()
    return {"type": "directory", "path": path, "size": 0, "oid": oid}


def _path_info(files: dict, path: str) -> dict | None:
    """Tree entry of a file or folder, None if `path` does not exist."""
    if path in files:
        return _file_info(path, files[path])
    return _folder_info(path, files) if _under(files, path) else None


def _list_tree(files: dict, folder: str, recursive: bool) -> list[dict]:
    prefix = f"{folder}/" if folder else ""
    folders, out = set(), []
    for path, entry in files.items():
        if not path.startswith(prefix):
            continue
        segments = path[len(prefix):].split("/")
        for depth in range(1, len(segments) if recursive else min(len(segments), 2)):
            folders.add(prefix + "/".join(segments[:depth]))
        if recursive or len(segments) == 1:
            out.append(_file_info(path, entry))
    out += [_folder_info(path, files) for path in folders]
    return sorted(out, key=lambda info: info["path"])


def _last_commit(repo: _Repo, commit: dict, path: str) -> dict:
    """The most recent commit, up to `commit`, that changed `path` (a file or a folder)."""

    def state(c: dict) -> object:
        return c["files"][path]["oid"] if path in c["files"] else _under(c["files"], path)

    current, last = state(commit), commit
    for older in itertools.islice(repo.history(commit), 1, None):
        if state(older) != current:
            break
        last = older
    return {"id": last["id"], "title": last["title"], "date": last["date"]}


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """Inclusive (start, end) asked by a single-range `Range` header; None if there is no usable one."""
    match = _RANGE_RE.fullmatch(header.replace(" ", ""))
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last or size - 1), size - 1)
    else:
        start, end = max(size - int(last), 0), size - 1
    if start > end:
        raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _gitattributes_lfs_patterns(text: str) -> list[str]:
    return [parts[0] for parts in map(str.split, text.splitlines()) if len(parts) > 1 and "filter=lfs" in parts]


def _gitignore_patterns(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith(("#", "!"))]


# ---------------------------------------------------------------------------------------------------- HTTP


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    file: tuple[Path, int, int] | None = None  # (path, offset, length) streamed instead of `body`

    @classmethod
    def json(cls, obj, status: int = 200, headers: dict | None = None) -> _Reply:
        return cls(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


_REPO = r"(?P<repo_id>[^/]+/[^/]+)"
_API = r"/api/(?P<type>models|datasets|spaces)/" + _REPO
_WEB = r"/(?:(?P<type>datasets|spaces)/)?" + _REPO
_ROUTES = [
    (method, re.compile(pattern), name)
    for method, pattern, name in [
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", _API + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", _API + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", _API + r"/refs", "refs"),
        ("GET", _API + r"/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", _API + r"/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", _API + r"/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", _API + r"/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", _WEB + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
        ("GET", _WEB + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to a `route_<name>` method and writes its `_Reply`."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def _handle(self) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.body = self._read_body()
        try:
            self.authenticated = self._authenticate()
            reply = self._route(url.path)
        except HubError as e:
            headers = {**e.headers, "X-Error-Message": e.message.encode("ascii", "replace").decode()}
            if e.code:
                headers["X-Error-Code"] = e.code
            reply = _Reply.json({**e.extra, "error": e.message}, e.status, headers)
        except Exception as e:  # a server bug: report it to the client instead of dropping the connection
            reply = _Reply.json({"error": f"LocalHub internal error: {e!r}"}, 500)
        self.hub.requests.append((self.command, self.path, reply.status))
        self._send(reply)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    # -- plumbing

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailer headers
            pass
        return b"".join(chunks)

    def _authenticate(self) -> bool:
        header = self.headers.get("Authorization")
        if header is None:
            return False
        if header != f"Bearer {self.hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def _route(self, path: str) -> _Reply:
        method = "GET" if self.command == "HEAD" else self.command
        for route_method, pattern, name in _ROUTES:
            if route_method == method and (match := pattern.fullmatch(path)):
                groups = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                return getattr(self, f"route_{name}")(**groups)
        raise HubError(404, f"LocalHub does not implement {self.command} {path}")

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(reply.file[2] if reply.file else len(reply.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if reply.file is None:
            self.wfile.write(reply.body)
            return
        path, offset, remaining = reply.file
        with open(path, "rb") as f:
            f.seek(offset)
            while remaining > 0 and (chunk := f.read(min(remaining, 1 << 20))):
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not valid JSON") from None

    def _require_auth(self) -> None:
        if not self.authenticated:
            raise HubError(401, "You must be authenticated to perform this action")

    def _repo(self, type: str | None, repo_id: str, write: bool = False) -> _Repo:
        if write:
            self._require_auth()
        repo = self.hub.store.repo(REPO_TYPES[type or "models"], repo_id)
        valid_id = len(parts := repo_id.split("/")) == 2 and all(map(_NAME_RE.fullmatch, parts))
        if not valid_id or not repo.exists or (repo.meta["private"] and not self.authenticated):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.hub.url}/{repo.web_path}"

    # -- account and repositories

    def route_whoami(self) -> _Reply:
        self._require_auth()
        name = self.hub.username
        return _Reply.json({
            "type": "user", "id": name, "name": name, "fullname": name, "email": f"{name}@localhost",
            "emailVerified": True, "isPro": False, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        })

    def _repo_from_body(self) -> tuple[_Repo, dict]:
        body = self._json_body()
        namespace, name = body.get("organization") or self.hub.username, body.get("name") or ""
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIXES or not (_NAME_RE.fullmatch(namespace) and _NAME_RE.fullmatch(name)):
            raise HubError(400, f"Invalid repo: type={repo_type!r}, id={namespace}/{name}")
        return self.hub.store.repo(repo_type, f"{namespace}/{name}"), body

    def route_create_repo(self) -> _Reply:
        self._require_auth()
        repo, body = self._repo_from_body()
        private = body.get("visibility") == "private" or bool(body.get("private"))
        if not self.hub.store.create_repo(repo, private):
            raise HubError(409, f"You already created this {repo.type} repo", extra={"url": self._repo_url(repo)})
        return _Reply.json({"url": self._repo_url(repo), "name": repo.id, "id": repo.id})

    def route_delete_repo(self) -> _Reply:
        self._require_auth()
        repo, _ = self._repo_from_body()
        if not repo.exists:
            raise HubError(404, "Repository not found", "RepoNotFound")
        self.hub.store.delete_repo(repo)
        return _Reply.json({})

    def route_validate_yaml(self) -> _Reply:
        return _Reply.json({"errors": [], "warnings": []})

    def route_repo_info(self, type: str, repo_id: str, rev: str = "main") -> _Reply:
        repo = self._repo(type, repo_id)
        meta, commit = repo.meta, repo.resolve(rev)
        with_blobs = _truthy(self.query.get("blobs"))
        siblings = []
        for path, entry in commit["files"].items():
            sibling = {"rfilename": path}
            if with_blobs:
                info = _file_info(path, entry)
                sibling.update(size=info["size"], blobId=info["oid"])
                if "lfs" in info:
                    sibling["lfs"] = {"sha256": entry["sha256"], "size": entry["size"],
                                      "pointerSize": info["lfs"]["pointerSize"]}
            siblings.append(sibling)
        return _Reply.json({
            "id": repo.id, "author": repo.id.split("/")[0], "sha": commit["id"], "private": meta["private"],
            "createdAt": meta["createdAt"], "lastModified": commit["date"], "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        })

    def route_refs(self, type: str, repo_id: str) -> _Reply:
        refs = self._repo(type, repo_id).meta["refs"]
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in refs.items()]
        return _Reply.json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def route_commits(self, type: str, repo_id: str, rev: str) -> _Reply:
        repo = self._repo(type, repo_id)
        return _Reply.json([
            {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
             "authors": [{"user": self.hub.username}]}
            for c in repo.history(repo.resolve(rev))
        ])

    def route_create_branch(self, type: str, repo_id: str, branch: str) -> _Reply:
        repo = self._repo(type, repo_id, write=True)
        start = repo.resolve(self._json_body().get("startingPoint") or "main")
        with self.hub.store.lock:
            if branch in repo.meta["refs"]:
                raise HubError(409, f"Branch {branch} already exists")
            repo.set_ref(branch, start["id"])
        return _Reply.json({})

    # -- trees

    def route_tree(self, type: str, repo_id: str, rev: str, path: str = "") -> _Reply:
        repo = self._repo(type, repo_id)
        commit = repo.resolve(rev)
        folder = path.strip("/")
        if folder and not _under(commit["files"], folder):
            raise HubError(404, f"{folder} is not a folder of the repo", "EntryNotFound")
        entries = _list_tree(commit["files"], folder, _truthy(self.query.get("recursive")))
        if _truthy(self.query.get("expand")):
            for entry in entries:
                entry["lastCommit"] = _last_commit(repo, commit, entry["path"])
        return _Reply.json(entries)

    def route_paths_info(self, type: str, repo_id: str, rev: str) -> _Reply:
        repo = self._repo(type, repo_id)
        commit = repo.resolve(rev)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            body = self._json_body()
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = parse_qs(self.body.decode())
            paths, expand = form.get("paths", []), _truthy(form.get("expand", [""])[-1])
        infos = [info for path in paths if (info := _path_info(commit["files"], path.strip("/")))]
        if expand:
            for info in infos:
                info["lastCommit"] = _last_commit(repo, commit, info["path"])
        return _Reply.json(infos)

    # -- uploads

    def route_preupload(self, type: str, repo_id: str, rev: str) -> _Reply:
        repo = self._repo(type, repo_id, write=True)
        commit = repo.resolve(rev)
        body = self._json_body()
        lfs_patterns = _gitattributes_lfs_patterns((repo.read(commit, ".gitattributes") or b"").decode())
        gitignore = body.get("gitIgnore") or (repo.read(commit, ".gitignore") or b"").decode()
        ignored = _gitignore_patterns(gitignore)
        files = []
        for item in body.get("files", []):
            path, sample = item["path"], base64.b64decode(item.get("sample", ""))
            lfs = item.get("size", 0) >= LFS_SIZE_THRESHOLD or b"\0" in sample or _matches(lfs_patterns, path)
            existing = commit["files"].get(path)
            oid = existing and (existing["sha256"] if existing["lfs"] else existing["oid"])
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": _matches(ignored, path), "oid": oid})
        return _Reply.json({"files": files, "commitOid": commit["id"]})

    def route_lfs_batch(self, repo_id: str, type: str | None = None) -> _Reply:
        self._repo(type, repo_id, write=True)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "LocalHub only supports the LFS 'upload' operation")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid", ""), obj.get("size", 0)
            item = {"oid": oid, "size": size, "authenticated": True}
            if not _OID_RE.fullmatch(oid):
                item["error"] = {"code": 422, "message": "Invalid sha256 oid"}
            elif not self.hub.store.has_blob(oid):
                self.hub.store.announce_upload(oid)
                item["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{oid}", "header": {}}}
            objects.append(item)
        return _Reply.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                           headers={"Content-Type": "application/vnd.git-lfs+json"})

    def route_lfs_upload(self, oid: str) -> _Reply:
        self.hub.store.accept_upload(oid, self.body)
        return _Reply()

    def route_commit(self, type: str, repo_id: str, rev: str) -> _Reply:
        repo = self._repo(type, repo_id, write=True)
        if _truthy(self.query.get("create_pr")):
            raise HubError(400, "LocalHub does not support pull requests")
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "Commit payload must be ndjson") from None
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        store = self.hub.store
        with store.lock:
            if rev not in repo.meta["refs"]:
                raise HubError(404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
            head = repo.resolve(rev)
            if header.get("parentCommit") not in (None, head["id"]):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head["files"])
            for line in lines:
                self._apply_operation(files, line.get("key"), line.get("value") or {})
            commit = repo.add_commit(rev, files, header.get("summary") or "Update",
                                     header.get("description") or "", parent=head["id"])
        return _Reply.json({"success": True, "commitOid": commit["id"], "hookOutput": "", "pullRequestUrl": None,
                            "commitUrl": f"{self._repo_url(repo)}/commit/{commit['id']}"})

    def _apply_operation(self, files: dict, key: str, value: dict) -> None:
        if key == "header":
            return
        if key not in ("file", "lfsFile", "deletedFile", "deletedFolder"):
            raise HubError(400, f"Unknown commit operation {key!r}")
        path = _clean_path(value.get("path", "").strip("/") if key == "deletedFolder" else value.get("path", ""))
        store = self.hub.store
        if key == "file":
            content = value.get("content", "")
            data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            files[path] = _regular_entry(data, store.put_blob(data))
        elif key == "lfsFile":
            oid = value.get("oid", "")
            if not store.has_blob(oid):
                raise HubError(422, f"LFS object {oid} of {path} was not uploaded")
            files[path] = _lfs_entry(oid, store.blob_path(oid).stat().st_size)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        else:
            inside = [p for p, _ in _under(files, path)]
            if not inside:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in inside:
                del files[p]

    # -- downloads

    def route_resolve(self, repo_id: str, rev: str, path: str, type: str | None = None) -> _Reply:
        repo = self._repo(type, repo_id)
        commit = repo.resolve(rev)
        entry = commit["files"].get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit["id"]})
        size = entry["size"]
        headers = {
            "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"',
            "X-Repo-Commit": commit["id"],
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start, end, status = 0, size - 1, 200
        if byte_range := _byte_range(self.headers.get("Range", ""), size):
            (start, end), status = byte_range, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return _Reply(status, headers=headers, file=(self.hub.store.blob_path(entry["sha256"]), start, end - start + 1))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub

    def handle_error(self, request, client_address) -> None:
        pass  # clients closing connections early is normal; route errors are already answered with a 500


# ---------------------------------------------------------------------------------------------------- public API


class LocalHub:
    """A Hub-compatible HTTP server on 127.0.0.1 (random port) storing its repositories under `root_dir`.

    Use as a context manager or call `start()` / `stop()`. `requests` records `(method, target, status)` of
    every request served, which shows what a client did.
    """

    def __init__(self, root_dir: str | os.PathLike, *, token: str = DEFAULT_TOKEN,
                 username: str = DEFAULT_USERNAME):
        self.root = Path(root_dir)
        self.token, self.username = token, username
        self.store = _Store(self.root)
        self.requests: list[tuple[str, str, int]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.hub = self
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="LocalHub",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


# Variables that would make a client subprocess use another cache, another token or offline mode.
_CLIENT_OVERRIDES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                     "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE",
                     "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH")


def hub_env(hub: LocalHub, hf_home: str | os.PathLike) -> dict[str, str]:
    """A copy of `os.environ` for a client process that talks to `hub` and caches under `hf_home`."""
    env = {key: value for key, value in os.environ.items() if key not in _CLIENT_OVERRIDES}
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    env.update(
        HF_ENDPOINT=hub.url,
        HF_TOKEN=hub.token,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY=no_proxy,
        no_proxy=no_proxy,
    )
    return env


def client(hub: "LocalHub", hf_home, script: str, **env: str) -> str:
    """Run a Python `script` in a fresh process that talks to `hub` with its own `HF_HOME`;
    returns its standard output (a failure fails the test)."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    full_env = {**hub_env(hub, hf_home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), **env}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full_env, cwd=repo,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout
