"""A loopback server that speaks the part of the Hugging Face Hub HTTP API that huggingface_hub uses for model repos
(and Space repos: the same routes under ``/api/spaces`` and ``/spaces``; a Space is stored as ``spaces/<id>``).

Tests point ``HF_ENDPOINT`` at it before huggingface_hub is imported and drive the unchanged client against it:
``create_repo``, ``upload_folder``, ``push_to_hub``, ``hf_hub_download``, ``snapshot_download``, ``from_pretrained``,
branches and tags. Repos live in memory; every commit is a full snapshot with a 40-hex id; files are stored as git
blobs (the ``ETag`` is the blob id, as on the Hub). Uploads are always "regular" (never LFS / Xet). Binds 127.0.0.1.

Standard library only. ``HubState.fail_next`` lets reliability tests make the next matching requests fail.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    title: str
    message: str
    parent: str | None
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        return self.commits.get(revision) if _HEX40.match(revision) else None


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, body: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.body = status, code, message, body


@dataclass
class HubState:
    repos: dict[str, Repo] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[tuple[str, str]] = field(default_factory=list)
    # (method, path regex, status, how many times, delay s): fail or slow matching requests, for reliability tests
    failures: list[list] = field(default_factory=list)

    def fail_next(
        self, method: str, path_pattern: str, status: int | None = 500, times: int = 1, delay: float = 0.0
    ) -> None:
        """The next ``times`` requests matching ``method`` and ``path_pattern`` wait ``delay`` seconds, then get
        ``status`` (0: the connection is dropped without an answer; ``None``: answered normally, only slowly)."""
        with self.lock:
            self.failures.append([method, re.compile(path_pattern), status, times, delay])

    def new_commit(self, repo: Repo, files: dict[str, bytes], title: str, message: str, parent: str | None) -> Commit:
        digest = hashlib.sha1(f"{repo.repo_id}:{parent}:{title}:{len(repo.commits)}".encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_id(files[path]).encode())
        now = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
        commit = Commit(digest.hexdigest(), dict(files), title, message, parent, now)
        repo.commits[commit.oid] = commit
        return commit


class _Handler(BaseHTTPRequestHandler):
    server_version = "LoopbackHub/1.0"
    protocol_version = "HTTP/1.1"

    @property
    def state(self) -> HubState:
        return self.server.state  # type: ignore[attr-defined]

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{self.headers.get('Host') or f'{host}:{port}'}"

    def log_message(self, format, *args):  # keep test output clean
        pass

    # ------------------------------------------------------------------------------------------- plumbing

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query)
        body = self._body()
        injected = None
        with self.state.lock:
            self.state.requests.append((method, url.path))
            for failure in self.state.failures:
                if failure[3] > 0 and failure[0] == method and failure[1].search(url.path):
                    failure[3] -= 1
                    injected = failure
                    break
        if injected is not None:
            time.sleep(injected[4])
            if injected[2] == 0:  # drop the connection: no status line, no body
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if injected[2] is not None:
                self._send_json({"error": "injected failure"}, status=injected[2])
                return
        try:
            result = self._route(method, segments, query, body)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._send_json(error.body or {"error": error.message}, status=error.status, headers=headers)
            return
        if isinstance(result, tuple):
            self._send_bytes(*result, head=method == "HEAD")
        else:
            self._send_json(result)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        return data

    def _send_json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_bytes(self, data: bytes, headers: dict, head: bool) -> None:
        status, start, end = 200, 0, len(data)
        match = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if match and not head:
            start = int(match.group(1))
            end = int(match.group(2)) + 1 if match.group(2) else len(data)
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data[start:end])

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # ---------------------------------------------------------------------------------------------- routes

    def _route(self, method: str, s: list[str], query: dict, body: bytes):
        if s[:2] == ["api", "whoami-v2"]:
            return {"name": USER, "type": "user", "orgs": [], "auth": {"type": "access_token"}}
        if s[:3] == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if s[:3] == ["api", "repos", "delete"] and method == "DELETE":
            payload = json.loads(body or b"{}")
            prefix = "spaces/" if payload.get("type") == "space" else ""
            repo_id = f"{prefix}{payload.get('organization') or USER}/{payload['name']}"
            self._repo(repo_id)
            del self.state.repos[repo_id]
            return {}
        if s[:2] == ["api", "validate-yaml"]:
            return {"errors": [], "warnings": []}
        if len(s) >= 4 and s[:2] == ["api", "models"]:
            return self._model_api(method, f"{s[2]}/{s[3]}", s[4:], query, body)
        if len(s) >= 4 and s[:2] == ["api", "spaces"]:
            return self._model_api(method, f"spaces/{s[2]}/{s[3]}", s[4:], query, body)
        if len(s) >= 6 and s[0] == "spaces" and s[3] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(f"spaces/{s[1]}/{s[2]}", s[4], "/".join(s[5:]))
        if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve_file(f"{s[0]}/{s[1]}", s[3], "/".join(s[4:]))
        raise HubError(404, None, f"no route for {method} /{'/'.join(s)}")

    def _create_repo(self, payload: dict):
        kind = payload.get("type") or "model"
        if kind not in ("model", "space"):
            raise HubError(400, None, f"the loopback Hub serves model and space repos, not {kind!r}")
        if kind == "space" and payload.get("sdk") not in ("gradio", "docker", "static", "streamlit"):
            raise HubError(400, None, f"a Space needs an sdk, got {payload.get('sdk')!r}")
        repo_id = ("spaces/" if kind == "space" else "") + f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                raise HubError(409, None, "You already created this model repo", {"error": "exists", "url": url})
            repo = Repo(repo_id, private=bool(payload.get("private")))
            commit = self.state.new_commit(
                repo, {".gitattributes": b"*.safetensors filter=lfs\n"}, "initial commit", "", None
            )
            repo.branches["main"] = commit.oid
            self.state.repos[repo_id] = repo
        return {"url": url, "name": repo_id}

    def _repo(self, repo_id: str) -> Repo:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _model_api(self, method: str, repo_id: str, rest: list[str], query: dict, body: bytes):
        repo = self._repo(repo_id)
        action = rest[0] if rest else ""
        if not rest or action == "revision":
            commit = self._commit(repo, rest[1] if rest else "main")
            return self._info(repo, commit, blobs="blobs" in query)
        if action == "tree":
            commit = self._commit(repo, rest[1])
            prefix = "/".join(rest[2:])
            return self._tree(commit, prefix, recursive=query.get("recursive", ["false"])[0].lower() == "true")
        if action == "paths-info":
            commit = self._commit(repo, rest[1])
            paths = parse_qs(body.decode()).get("paths", []) if body else []
            return [self._entry(p, commit.files[p]) for p in paths if p in commit.files]
        if action == "preupload":
            self._commit(repo, rest[1])
            files = json.loads(body)["files"]
            return {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                ],
                "commitOid": None,
            }
        if action == "commit" and method == "POST":
            return self._create_commit(repo, rest[1], body)
        if action == "refs":

            def ref(kind, name, oid):
                return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}

            return {
                "branches": [ref("heads", n, o) for n, o in repo.branches.items()],
                "tags": [ref("tags", n, o) for n, o in repo.tags.items()],
                "converts": [],
            }
        if action == "commits":
            commit = self._commit(repo, rest[1])
            history = []
            while commit is not None:
                history.append(
                    {
                        "id": commit.oid,
                        "title": commit.title,
                        "message": commit.message,
                        "authors": [{"user": USER}],
                        "date": commit.date,
                    }
                )
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return history
        if action == "tag":
            if method == "POST":
                commit = self._commit(repo, rest[1])
                tag = json.loads(body)["tag"]
                with self.state.lock:
                    if tag in repo.tags:
                        raise HubError(409, None, f"Tag {tag} already exists")
                    repo.tags[tag] = commit.oid
                return {}
            if method == "DELETE":
                if repo.tags.pop(rest[1], None) is None:
                    raise HubError(404, "RevisionNotFound", f"no tag {rest[1]}")
                return {}
        if action == "branch":
            branch = "/".join(rest[1:])
            if method == "POST":
                payload = json.loads(body or b"{}")
                start = self._commit(repo, payload.get("startingPoint") or "main")
                with self.state.lock:
                    if branch in repo.branches:
                        raise HubError(409, None, f"Branch {branch} already exists")
                    repo.branches[branch] = start.oid
                return {}
            if method == "DELETE":
                if repo.branches.pop(branch, None) is None:
                    raise HubError(404, "RevisionNotFound", f"no branch {branch}")
                return {}
        if action == "settings" and method == "PUT":
            payload = json.loads(body or b"{}")
            if "private" in payload:
                repo.private = bool(payload["private"])
            return {}
        raise HubError(404, None, f"no model route {method} {'/'.join(rest)}")

    def _create_commit(self, repo: Repo, revision: str, body: bytes):
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision} (commits go to branches)")
        header, additions, deletions, folders = {}, {}, [], []
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, None, f"unsupported encoding {value.get('encoding')}")
                additions[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                deletions.append(value["path"])
            elif key == "deletedFolder":
                folders.append(value["path"].rstrip("/") + "/")
            else:
                raise HubError(400, None, f"the loopback Hub does not support {key!r} operations (no LFS)")
        with self.state.lock:
            head = repo.commits[repo.branches[branch]]
            parent = header.get("parentCommit")
            if parent and parent != head.oid:
                raise HubError(412, None, f"parentCommit {parent} is not the head of {branch}")
            files = {p: d for p, d in head.files.items() if p not in deletions and not p.startswith(tuple(folders))}
            files.update(additions)
            commit = self.state.new_commit(
                repo, files, header.get("summary", ""), header.get("description", ""), head.oid
            )
            repo.branches[branch] = commit.oid
        return {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{commit.oid}",
            "pullRequestUrl": None,
            "hookOutput": "",
        }

    def _entry(self, path: str, data: bytes) -> dict:
        return {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}

    def _tree(self, commit: Commit, prefix: str, recursive: bool) -> list[dict]:
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries, directories = [], set()
        for path in sorted(commit.files):
            if not path.startswith(base):
                continue
            relative = path[len(base) :]
            if "/" in relative and not recursive:
                directories.add(base + relative.split("/")[0])
                continue
            if "/" in relative:
                parts = relative.split("/")[:-1]
                directories.update(base + "/".join(parts[: i + 1]) for i in range(len(parts)))
            entries.append(self._entry(path, commit.files[path]))
        if base and not entries and not directories:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist")
        return [{"type": "directory", "path": d, "oid": "0" * 40} for d in sorted(directories)] + entries

    def _info(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = [
            {"rfilename": p, **({"size": len(d), "blobId": git_blob_id(d)} if blobs else {})}
            for p, d in sorted(commit.files.items())
        ]
        return {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id.removeprefix("spaces/"),
            "modelId": repo.repo_id.removeprefix("spaces/"),
            "author": repo.repo_id.removeprefix("spaces/").split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "lastModified": commit.date,
            "createdAt": min(c.date for c in repo.commits.values()),
        }

    def _resolve_file(self, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {revision}")
        data = commit.files[path]
        return data, {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_id(data)}"'}


class LoopbackHub:
    """Run the loopback Hub in a daemon thread on 127.0.0.1 (``port=0``: any free port)."""

    def __init__(self, port: int = 0) -> None:
        self.state = HubState()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.server.daemon_threads = True
        self.server.state = self.state  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, name="loopback-hub", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
