"""`make data` / stepsearch_lib.fetch against a real local HTTP server serving the shared data files:
checksum match and mismatch, an interrupted transfer resumed with a Range request, zip members unpacked
into the loaders' layout, the offline mirror used as is, and the hub's offline errors (tests run with
HF_HUB_OFFLINE=1: the hub cannot be reached here) turned into messages naming the file to fetch."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stepsearch_lib import fetch as F
from stepsearch_lib.config import get_config
from stepsearch_lib.data import load_questions
from stepsearch_lib.download import LOCK_FILE, ChecksumError, FetchError, http_download, read_lock, sha256_of


class FileServer:
    """A threaded HTTP server with HEAD, Range (206) and a switch that cuts the next GET short."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.ranges: list[str | None] = []
        self.cut_next_after: int | None = None
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self):
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                return data

            def do_HEAD(self):
                data = self._body()
                if data is not None:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()

            def do_GET(self):
                data = self._body()
                if data is None:
                    return
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut, server.cut_next_after = server.cut_next_after, None
                if cut is not None:  # promise the whole body, send part of it, drop the connection
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def shared_files(data_root) -> dict[str, bytes]:
    """Real data files of the mirror, and a zip laid out like the official MuSiQue archive."""
    musique_train = (data_root / "musique/musique_ans_train_subset.jsonl").read_bytes()
    musique_dev = (data_root / "musique/musique_ans_dev_subset.jsonl").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("data/musique_ans_v1.0_train.jsonl", musique_train)
        z.writestr("data/musique_ans_v1.0_dev.jsonl", musique_dev)
        z.writestr("__MACOSX/data/._musique_ans_v1.0_dev.jsonl", b"resource fork")
    return {
        "/hotpot_dev.json": (data_root / "hotpotqa/hotpot_dev_distractor_subset.jsonl").read_bytes(),
        "/bamboogle.jsonl": (data_root / "bamboogle/test.jsonl").read_bytes(),
        "/musique_v1.0.zip": buf.getvalue(),
        "/musique_train": musique_train,
    }


def test_checksum_match_and_file_appears_whole(tmp_path, shared_files):
    body = shared_files["/hotpot_dev.json"]
    with FileServer(shared_files) as srv:
        digest = http_download(
            srv.url("/hotpot_dev.json"), tmp_path / "h.json", sha256=hashlib.sha256(body).hexdigest(), progress=False
        )
    assert (tmp_path / "h.json").read_bytes() == body and digest == hashlib.sha256(body).hexdigest()
    assert not list(tmp_path.glob("*.part"))
    assert len(load_questions(tmp_path / "h.json")) == 1300  # the real loader reads what was fetched


def test_checksum_mismatch_keeps_nothing(tmp_path, shared_files):
    with FileServer(shared_files) as srv, pytest.raises(ChecksumError, match="expected sha256 0{64}"):
        http_download(srv.url("/hotpot_dev.json"), tmp_path / "h.json", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .part


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path, shared_files):
    body = shared_files["/hotpot_dev.json"]
    cut = len(body) // 3
    dest = tmp_path / "h.json"
    with FileServer(shared_files) as srv:
        srv.cut_next_after = cut
        with pytest.raises(FetchError, match="interrupted.*run again to resume"):
            http_download(srv.url("/hotpot_dev.json"), dest, progress=False)
        assert not dest.exists() and (tmp_path / "h.json.part").stat().st_size == cut
        http_download(srv.url("/hotpot_dev.json"), dest, sha256=hashlib.sha256(body).hexdigest(), progress=False)
        assert srv.ranges == [None, f"bytes={cut}-"]  # the second request asked only for the rest
    assert dest.read_bytes() == body and not (tmp_path / "h.json.part").exists()


def test_server_without_ranges_restarts_from_zero(tmp_path, shared_files):
    body = shared_files["/bamboogle.jsonl"]
    with FileServer(shared_files) as srv:
        srv.ignore_range, srv.cut_next_after = True, 100
        with pytest.raises(FetchError):
            http_download(srv.url("/bamboogle.jsonl"), tmp_path / "b.jsonl", progress=False)
        http_download(srv.url("/bamboogle.jsonl"), tmp_path / "b.jsonl", progress=False)
    assert (tmp_path / "b.jsonl").read_bytes() == body  # a 200 answer truncated the partial file first


def test_fetch_source_unpacks_zip_members_and_records_checksums(tmp_path, shared_files, data_root):
    with FileServer(shared_files) as srv:
        src = F.Source(
            "musique",
            "qa",
            "test",
            url=srv.url("/musique_v1.0.zip"),
            archive="musique/musique_v1.0.zip",
            members=(
                ("musique_ans_v1.0_train.jsonl", "musique/musique_ans_v1.0_train.jsonl"),
                ("musique_ans_v1.0_dev.jsonl", "musique/musique_ans_v1.0_dev.jsonl"),
            ),
        )
        assert F.fetch_source(src, tmp_path, progress=False) == "downloaded"
        assert F.fetch_source(src, tmp_path, progress=False) == "present"
        (tmp_path / "musique/musique_ans_v1.0_dev.jsonl").unlink()  # unpacking redone from the kept archive
        assert F.fetch_source(src, tmp_path, progress=False) == "downloaded" and len(srv.ranges) == 1
    train = load_questions(tmp_path / "musique/musique_ans_v1.0_train.jsonl")
    assert len(train) == len(load_questions(data_root / "musique/musique_ans_train_subset.jsonl"))
    lock = read_lock(tmp_path)
    assert lock["musique/musique_v1.0.zip"]["sha256"] == hashlib.sha256(shared_files["/musique_v1.0.zip"]).hexdigest()
    assert lock["musique/musique_v1.0.zip"]["origin"].endswith("/musique_v1.0.zip")


def test_first_download_digest_is_enforced_later(tmp_path, shared_files):
    """Trust on first use: a source that changes after its first download is refused."""
    with FileServer(shared_files) as srv:
        src = F.Source("hotpotqa-dev", "qa", "test", url=srv.url("/hotpot_dev.json"), dest="hotpotqa/dev.json")
        F.fetch_source(src, tmp_path, progress=False)
        first = read_lock(tmp_path)["hotpotqa/dev.json"]["sha256"]
        srv.files["/hotpot_dev.json"] = shared_files["/hotpot_dev.json"].replace(b"Wilhelm", b"Wilhelx", 1)
        with pytest.raises(ChecksumError, match=first):
            F.fetch_source(src, tmp_path, progress=False, force=True)
    assert sha256_of(tmp_path / "hotpotqa/dev.json") == first  # the good copy is untouched
    assert not (tmp_path / "hotpotqa/dev.json.part").exists()


def test_parts_fetched_earlier_are_checked_and_joined_without_a_new_download(tmp_path):
    """Search-R1's index comes in hub parts: parts already on disk (recorded digests) are not fetched
    again -- the hub is offline in tests, so any download attempt would fail -- and are joined in order."""
    from stepsearch_lib.download import record

    src = F.BY_NAME["wiki18-e5-index"]
    parts = {"part_aa": b"first half|", "part_ab": b"second half"}
    for name, body in parts.items():
        piece = tmp_path / "index/wiki-18-e5" / name
        piece.parent.mkdir(parents=True, exist_ok=True)
        piece.write_bytes(body)
        record(tmp_path, f"index/wiki-18-e5/{name}", hashlib.sha256(body).hexdigest(), len(body), "test")
    assert F.fetch_source(src, tmp_path, progress=False) == "downloaded"
    assert (tmp_path / src.dest).read_bytes() == b"first half|second half"
    assert not (tmp_path / "index/wiki-18-e5/part_aa").exists()


def test_zip_without_a_member_names_what_it_holds(tmp_path, shared_files):
    with FileServer(shared_files) as srv:
        src = F.Source(
            "x",
            "qa",
            "test",
            url=srv.url("/musique_v1.0.zip"),
            archive="x.zip",
            members=(("musique_ans_v1.0_test.jsonl", "musique/test.jsonl"),),
        )
        with pytest.raises(FetchError, match=r"x\.zip: expected one member named 'musique_ans_v1.0_test.jsonl'"):
            F.fetch_source(src, tmp_path, progress=False)
    assert not (tmp_path / "musique/test.jsonl").exists()


def test_cli_downloads_then_verify_detects_tampering(tmp_path, shared_files, monkeypatch, capsys):
    with FileServer(shared_files) as srv:
        src = F.Source("bamboogle-http", "qa", "test", url=srv.url("/bamboogle.jsonl"), dest="bamboogle/test.jsonl")
        monkeypatch.setattr(F, "SOURCES", (src,))
        monkeypatch.setattr(F, "BY_NAME", {src.name: src})
        assert F.main(["--profile", "cpu", "--data-root", str(tmp_path), "--only", "bamboogle-http"]) == 1
    out = capsys.readouterr().out
    assert "to download: 21.6 kB" in out or "to download:" in out
    assert "still missing" in out  # the cpu profile reads more than this one file
    assert F.main(["--data-root", str(tmp_path), "--verify"]) == 0
    (tmp_path / "bamboogle/test.jsonl").write_text("tampered\n")
    assert F.main(["--data-root", str(tmp_path), "--verify"]) == 1
    assert "bamboogle/test.jsonl: sha256" in capsys.readouterr().out


def test_offline_mirror_is_used_and_nothing_downloaded(capsys):
    if not F.MIRROR.is_dir():
        pytest.skip("no offline mirror beside the project")
    before = sorted(p.name for p in F.MIRROR.rglob("*"))
    assert F.main(["--profile", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "offline mirror" in out and "nothing is downloaded" in out
    assert sorted(p.name for p in F.MIRROR.rglob("*")) == before and not (F.MIRROR / LOCK_FILE).exists()


def test_the_mirror_is_recognised_through_a_symlink_and_never_written(tmp_path, capsys):
    if not F.MIRROR.is_dir():
        pytest.skip("no offline mirror beside the project")
    link = tmp_path / "data-link"
    link.symlink_to(F.MIRROR.resolve(), target_is_directory=True)
    assert F.is_mirror(link) and F.is_mirror(link / "musique") and not F.is_mirror(tmp_path)
    assert F.main(["--profile", "cpu", "--data-root", str(link)]) == 0
    assert "nothing is downloaded" in capsys.readouterr().out
    with pytest.raises(FetchError, match="read-only"):
        F.fetch_source(F.BY_NAME["hotpotqa-dev"], link, progress=False)


def test_large_downloads_need_yes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(F, "source_size", lambda s, probe=True: (70 * F.GB, False))
    assert F.main(["--data-root", str(tmp_path), "--with", "index"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name,needle",
    [
        ("bamboogle", "https://huggingface.co/datasets/RUC-NLPIR/FlashRAG_datasets/resolve/main/bamboogle/test.jsonl"),
        ("wiki18-corpus", "https://huggingface.co/datasets/PeterJinGo/wiki-18-corpus/resolve/main/wiki-18.jsonl.gz"),
        ("wiki18-e5-index", "https://huggingface.co/datasets/PeterJinGo/wiki-18-e5-index/resolve/main/part_aa"),
        ("stepsearch-data", "huggingface-cli download Zill1/StepSearch-musi-dataset --repo-type dataset"),
    ],
)
def test_hub_offline_error_names_the_file_to_fetch(tmp_path, name, needle):
    with pytest.raises(FetchError) as err:
        F.fetch_source(F.BY_NAME[name], tmp_path, progress=False)
    msg = str(err.value)
    assert needle in msg and "by hand" in msg and str(tmp_path) in msg
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_model_hub_offline_error(tmp_path):
    with pytest.raises(FetchError, match="huggingface-cli download Qwen/Qwen2.5-3B-Instruct"):
        F.fetch_models(["Qwen/Qwen2.5-3B-Instruct"])


def test_gpu_profile_reads_the_catalogue_files():
    cfg = get_config("gpu")
    provided = {o for s in F.SOURCES for o in s.outputs()}
    assert set(F.profile_files(cfg)) <= provided
    assert cfg.data_root == F.PROJECT_ROOT / "data"
    assert all(json.dumps(s.outputs()) for s in F.SOURCES)
