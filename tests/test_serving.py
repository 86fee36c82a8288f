"""The public Space's limits, tried as an attacker would: against the launched app on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import app
from admission import BatchAdmission, ClientAdmission, client_address
from bench.common import BrowserProtocol
from conftest import free_port, synthetic_xray


@pytest.fixture(scope="module")
def url(app_server):
    return app_server[0]


def upload(url: str, files: list[tuple[str, bytes]]) -> httpx.Response:
    return httpx.post(f"{url}gradio_api/upload", files=[("files", (name, data)) for name, data in files], timeout=30)


def png_bytes(tmp_path: Path, name: str, seed: int = 3) -> bytes:
    path = tmp_path / name
    synthetic_xray(1, seed, size=64).save(path)
    return path.read_bytes()


def test_no_rest_route_around_the_queue(url):
    response = httpx.post(f"{url}gradio_api/run/predict", json={"data": [None]}, timeout=30)
    assert response.status_code != 200


def test_run_history_and_monitoring_are_off(url):
    assert httpx.get(f"{url}gradio_api/runs", timeout=30).status_code != 200
    assert httpx.get(f"{url}monitoring", timeout=30).status_code != 200


def test_responses_are_never_sniffed(url):
    assert httpx.get(url, timeout=30).headers["x-content-type-options"] == "nosniff"


def spooled_parts() -> list[Path]:
    """Files of the parts these tests stream (x bytes) still in the parser's spool, outside any stored folder."""
    return [p for p in Path(app.UPLOAD_DIR).iterdir() if p.is_file() and p.read_bytes()[:4] == b"xxxx"]


def test_an_upload_of_too_many_files_is_refused_before_any_is_stored(url, tmp_path):
    response = upload(url, [(f"part{i}.png", b"x" * 2**16) for i in range(app.MAX_BATCH_FILES + 1)])
    assert response.status_code == 413 and "Too many files" in response.text
    # The parts already streamed were in the parser's spool files only, and the parser deleted them.
    assert not any(p.name.startswith("part") for p in Path(app.UPLOAD_DIR).rglob("*")) and not spooled_parts()
    assert upload(url, [("ok.png", png_bytes(tmp_path, "ok.png"))]).status_code == 200  # still serving


def answer(url: str, stored_path: str, api_name: str = "predict") -> dict:
    """Ask the queue about an already uploaded file, as the web page does; the JSON answer of /predict."""
    return BrowserProtocol(url).answer(api_name, stored_path)[0]


def test_an_answered_upload_is_deleted_and_cannot_be_fetched(url, tmp_path):
    name = "delete-me-after-answer.png"
    (stored,) = upload(url, [(name, png_bytes(tmp_path, name))]).json()
    assert Path(stored).is_file()
    assert answer(url, stored)["decision"] in ("NORMAL", "PNEUMONIA")
    assert not Path(stored).exists() and not any(p.name == name for p in Path(app.UPLOAD_DIR).rglob("*"))
    assert httpx.get(f"{url}gradio_api/file={stored}", timeout=30).status_code != 200


def test_identical_uploads_still_waiting_keep_their_file_until_the_last_answer(url, tmp_path):
    """Gradio stores identical files at one path: many people sending the same X-ray must all get answers."""
    name = "same-file-twice.png"
    data = png_bytes(tmp_path, name)
    (first,) = upload(url, [(name, data)]).json()
    (second,) = upload(url, [(name, data)]).json()
    assert first == second
    assert answer(url, first)["decision"] in ("NORMAL", "PNEUMONIA")
    assert Path(second).is_file()  # the other upload of it is still waiting
    assert answer(url, second)["decision"] in ("NORMAL", "PNEUMONIA")
    assert not Path(second).exists()


def test_unanswered_uploads_and_old_outputs_are_purged_but_examples_stay(tmp_path):
    folder = app.UploadFolder(str(tmp_path))
    stale = tmp_path / "abc123" / "never-answered.dcm"
    example = tmp_path / f"{app.EXAMPLES_PREFIX}x" / "normal.jpeg"
    for path in (stale, example):
        path.parent.mkdir()
        path.write_bytes(b"data")
        os.utime(path, (time.time() - 120, time.time() - 120))
    fresh = tmp_path / "fresh.csv"
    fresh.write_text("file")
    folder.purge(max_age_s=60)
    assert not stale.exists() and not stale.parent.exists()
    assert example.exists() and fresh.exists()
    # An upload named like the examples folder is an upload: it goes when answered, or when nobody asked about it
    named_like_an_example = tmp_path / "def456" / f"{app.EXAMPLES_PREFIX}keep.jpeg"
    unasked = tmp_path / "ghi789" / f"{app.EXAMPLES_PREFIX}unasked.jpeg"
    for path in (named_like_an_example, unasked):
        path.parent.mkdir()
        path.write_bytes(b"data")
    folder.register([str(named_like_an_example)])
    folder.discard(str(named_like_an_example))
    os.utime(unasked, (time.time() - 120, time.time() - 120))
    folder.purge(max_age_s=60)
    assert not named_like_an_example.exists() and not unasked.exists()


def test_the_purge_leaves_a_folder_just_made_for_a_file_about_to_be_written(tmp_path):
    """Gradio makes an upload's or an output's folder, then writes the file into it: a purge in between must not
    remove the folder (the request then failed with a bare "Error"). Empty folders go once old."""
    folder = app.UploadFolder(str(tmp_path))
    just_made, long_empty = tmp_path / "fresh-hash", tmp_path / "old-hash"
    just_made.mkdir()
    long_empty.mkdir()
    os.utime(long_empty, (time.time() - 120, time.time() - 120))
    folder.purge(max_age_s=60)
    assert just_made.is_dir() and not long_empty.exists()
    (just_made / "image.jpeg").write_bytes(b"the file Gradio was writing")
    assert (just_made / "image.jpeg").is_file()


def test_a_batch_csv_outlives_the_other_outputs_for_its_own_lifetime(tmp_path):
    """A person reads the table before downloading the CSV: it stays its own lifetime, and only a CSV the app
    wrote (in a folder of its prefix) does."""
    folder = app.UploadFolder(str(tmp_path))
    csv_file = tmp_path / f"{app.CSV_PREFIX}abc" / "pneumonia_predictions.csv"
    heatmap = tmp_path / "def" / "heatmap.jpeg"
    lookalike = tmp_path / f"{app.CSV_PREFIX}abc" / "film.png"
    for path in (csv_file, heatmap, lookalike):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"data")
        os.utime(path, (time.time() - 120, time.time() - 120))
    folder.purge(max_age_s=45, csv_max_age_s=600)
    assert csv_file.is_file() and not heatmap.exists() and not lookalike.exists()
    os.utime(csv_file, (time.time() - 700, time.time() - 700))
    folder.purge(max_age_s=45, csv_max_age_s=600)
    assert not csv_file.exists() and not csv_file.parent.exists()


def test_the_headline_never_says_certain():
    assert [app.shown_percent(p) for p in (0.99996, 0.9994, 0.5, 0.0012, 0.0004)] == ["> 99.9%", "99.9%", "50.0%", "0.1%", "< 0.1%"]


def test_only_files_in_the_upload_folder_can_be_referred_to(tmp_path):
    folder = app.UploadFolder(str(tmp_path))
    (tmp_path / "abc").mkdir()
    assert folder.holds(str(tmp_path / "abc" / "film.png"))
    for elsewhere in ("/etc/passwd", "app.py", str(tmp_path / ".." / "x.png"), str(tmp_path),
                      "https://example.com/film.png", "file:///etc/passwd", "bad\0name"):
        assert not folder.holds(elsewhere), elsewhere


def test_an_upload_waiting_in_the_queue_outlives_the_purge_of_outputs(tmp_path):
    """A batch queued behind another, or one still reading its files, must find them: only an upload nobody
    asks about for `waiting_max_age_s` goes."""
    folder = app.UploadFolder(str(tmp_path))
    waiting, forgotten, output = tmp_path / "h1" / "queued.png", tmp_path / "h2" / "forgotten.png", tmp_path / "x.csv"
    for path, age in ((waiting, 120), (forgotten, 900), (output, 120)):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"data")
        os.utime(path, (time.time() - age, time.time() - age))
    folder.register([str(waiting), str(forgotten)])
    folder.purge(max_age_s=45, waiting_max_age_s=600)
    assert waiting.is_file() and not forgotten.exists() and not output.exists()
    folder.discard(str(waiting))
    assert not waiting.exists() and not waiting.parent.exists()


def test_folders_of_a_killed_app_are_removed_at_the_next_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left_behind = tmp_path / f"{app.TEMP_PREFIX}{dead.pid}-abc"
    alive = tmp_path / f"{app.TEMP_PREFIX}{os.getpid()}-def"
    for folder in (left_behind, alive):
        folder.mkdir()
        (folder / "scan.dcm").write_bytes(b"patient data")
    app.remove_stale_folders(str(tmp_path))
    assert not left_behind.exists() and alive.exists()


def test_loopback_by_default_all_interfaces_on_a_space(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert app.server_name() == "127.0.0.1"
    monkeypatch.setenv("SPACE_ID", "user/space")
    assert app.server_name() == "0.0.0.0"


def test_sigterm_removes_every_upload_like_ctrl_c(trained_model, tmp_path):
    port = free_port()
    env = {**os.environ, "MODEL_ID": str(trained_model), "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "app.py"], env=env, cwd=Path(app.__file__).parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        (stored,) = upload(url, [("patient.dcm", b"DICM" * 100)]).json()  # an upload nobody asked to analyse
        assert Path(stored).is_file()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        process.kill()
    folders = list(Path(stored).parents)
    upload_root = next(p for p in folders if p.name.startswith(f"{app.TEMP_PREFIX}{process.pid}-"))
    assert not upload_root.exists()


def multipart_body(boundary: str, parts: int) -> bytes:
    chunks = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="part{i}.png"\r\n'
              f"Content-Type: image/png\r\n\r\nxxxx\r\n" for i in range(parts)]
    return ("".join(chunks) + f"--{boundary}--\r\n").encode()


@pytest.mark.parametrize("boundary_parameter", ["BOUNDARY=b0und4ry", 'boundary ="b0und4ry"'])
def test_the_upload_limits_hold_for_any_spelling_of_the_boundary(url, boundary_parameter):
    """Gradio's parser reads the boundary case-blind and with spaces: the count must read it the same way."""
    response = httpx.post(f"{url}gradio_api/upload", content=multipart_body("b0und4ry", app.MAX_BATCH_FILES + 1),
                          headers={"content-type": f"multipart/form-data; {boundary_parameter}"}, timeout=30)
    assert response.status_code == 413 and "Too many files" in response.text
    assert not spooled_parts()


def test_an_upload_of_a_form_field_gets_a_readable_400_not_a_traceback(url, capfd):
    response = httpx.post(f"{url}gradio_api/upload", files={"files": (None, "just a field")}, timeout=30)
    assert response.status_code == 400 and "must be a file with a file name" in response.text
    assert "Traceback" not in capfd.readouterr().err and not spooled_parts()


@pytest.mark.parametrize("chunk", [1, 5, 64, 100_000])
def test_the_part_check_reads_headers_split_across_any_chunks(chunk):
    from gradio.route_utils import MultiPartException

    from http_guard import BodyLimits

    field = b'--b0und4ry\r\nContent-Disposition: form-data; name="files"\r\n\r\nx\r\n'
    for body, refused in ((multipart_body("b0und4ry", 3), False), (field + multipart_body("b0und4ry", 2), True),
                          (multipart_body("b0und4ry", 2)[:-14] + field + b"--b0und4ry--\r\n", True)):
        limits = BodyLimits(b"b0und4ry", 10, 2**20, files_only=True)
        try:
            for start in range(0, len(body), chunk):
                limits.feed(body[start : start + chunk])
        except MultiPartException as error:
            assert refused and "form field" in error.message
        else:
            assert not refused


def test_the_audio_recording_route_is_closed(url):
    """It stores its body outside the upload folder, where no purge reaches; this app takes no audio."""
    response = httpx.post(f"{url}gradio_api/process_recording", content=multipart_body("b0und4ry", 1),
                          headers={"content-type": "multipart/form-data; boundary=b0und4ry"}, timeout=30)
    assert response.status_code == 404


def test_the_same_bytes_under_two_names_each_get_their_answer(url, tmp_path):
    """Gradio keeps both names in one folder (named by the content): one answer must not delete the other file."""
    data = png_bytes(tmp_path, "film.png", seed=17)  # bytes no other test sends: the folder is this test's alone
    (first,) = upload(url, [("patient-a.png", data)]).json()
    (second,) = upload(url, [("patient-b.png", data)]).json()
    assert Path(first).parent == Path(second).parent and first != second
    assert answer(url, first)["decision"] in ("NORMAL", "PNEUMONIA")
    assert Path(second).is_file() and not Path(first).exists()
    assert answer(url, second)["decision"] in ("NORMAL", "PNEUMONIA")
    assert not Path(second).parent.exists()


def answer_batch(url: str, stored_paths: list[str], headers: dict | None = None) -> list:
    """One /predict_batch request naming these stored paths (as they are, repeats included): its table's rows."""
    import uuid

    session = uuid.uuid4().hex
    httpx.post(f"{url}gradio_api/queue/join", timeout=30, headers=headers, json={
        "data": [[{"path": path, "meta": {"_type": "gradio.FileData"}} for path in stored_paths]],
        "fn_index": BrowserProtocol(url).endpoints["predict_batch"], "session_hash": session}).raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=120,
                      headers=headers) as stream:
        for line in stream.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                assert message.get("success"), message
                return message["output"]["data"][0]["data"]
    raise AssertionError("the event stream ended without a result")


def test_an_upload_is_counted_down_only_by_answers_to_the_client_that_sent_it(tmp_path):
    folder = app.UploadFolder(str(tmp_path))
    film = tmp_path / "hash" / "film.png"
    film.parent.mkdir()
    film.write_bytes(b"data")
    folder.register([str(film)], "alice")
    folder.register([str(film)], "bob")
    for _ in range(3):  # bob names it again and again: only his own upload is counted down
        folder.discard(str(film), "bob")
    folder.discard(str(film), "mallory")  # never sent it
    assert film.is_file()
    folder.discard(str(film), "alice")
    assert not film.exists() and not film.parent.exists()
    twice = tmp_path / "hash2" / "film.png"  # one client uploading the same file twice, then naming it twice
    twice.parent.mkdir()
    twice.write_bytes(b"data")
    folder.register([str(twice), str(twice)], "carol")
    folder.discard(str(twice), "carol")
    assert twice.is_file()
    folder.discard(str(twice), "carol")
    assert not twice.exists()


def test_on_a_space_another_client_naming_an_upload_twice_cannot_delete_it(space_url, tmp_path, monkeypatch):
    """Identical bytes share one stored path: a second client's batch that names it twice answers that client and
    leaves the first client's upload, still waiting, where it is."""
    url, _ = space_url
    monkeypatch.setenv("SPACE_ID", "user/pneumonia-xray")  # the client is the proxy's last X-Forwarded-For entry
    alice, bob = ({"x-forwarded-for": f"198.51.100.77, {address}"} for address in ("203.0.113.5", "203.0.113.6"))
    data = png_bytes(tmp_path, "shared.png", seed=23)  # bytes no other test sends
    files = [("files", ("shared.png", data))]
    (waiting,) = httpx.post(f"{url}gradio_api/upload", files=files, headers=alice, timeout=30).json()
    (mine,) = httpx.post(f"{url}gradio_api/upload", files=files, headers=bob, timeout=30).json()
    assert mine == waiting
    assert len(answer_batch(url, [mine, mine, str(Path(mine).parent / "." / Path(mine).name)], bob)) == 3
    assert Path(waiting).is_file()
    assert len(answer_batch(url, [waiting], alice)) == 1
    assert not Path(waiting).exists()


@pytest.mark.parametrize("where", ["path", "query", "x-forwarded-host", "x-gradio-server", "join"])
def test_an_overlong_url_or_host_header_is_refused_not_a_traceback_or_a_join_never_answered(url, where, capfd):
    """Gradio builds the request's own address from these (httpx refuses one over 65,536 characters): a page
    answered 500 with a traceback, and a queue join was accepted and then never answered."""
    from http_guard import MAX_ADDRESS_CHARS

    from http.client import HTTPConnection
    from urllib.parse import urlsplit

    long = "a" * 66_000  # httpx itself refuses such a URL: the request goes by the standard library
    address = urlsplit(url)
    connection = HTTPConnection(address.hostname, address.port, timeout=30)
    if where == "join":
        connection.request("POST", f"/gradio_api/queue/join?q={long}", body=json.dumps({"data": [None], "fn_index": 0}),
                           headers={"content-type": "application/json"})
    else:
        target = f"/{long}" if where == "path" else f"/config?q={long}" if where == "query" else "/config"
        connection.request("GET", target, headers={where: long} if where.startswith("x-") else {})
    response = connection.getresponse()
    assert response.status == (431 if where.startswith("x-") else 414)
    assert str(MAX_ADDRESS_CHARS) in response.read().decode() and "Traceback" not in capfd.readouterr().err
    connection.close()
    assert httpx.get(f"{url}config", params={"q": "a" * 1000}, timeout=30).status_code == 200


@pytest.mark.parametrize("header", ["x-forwarded-host"])  # Starlette already replaces a Host header it cannot parse
def test_a_host_header_gradio_cannot_parse_is_refused_not_a_traceback_or_a_join_never_answered(url, header, capfd):
    """A short but malformed forwarded host (a port that is no number) failed Gradio the same way as an overlong one."""
    response = httpx.get(f"{url}config", headers={header: "a:xyz"}, timeout=30)
    assert response.status_code == 400 and "not a valid host" in response.text
    joined = httpx.post(f"{url}gradio_api/queue/join", headers={header: "a:xyz"}, json={"data": [None], "fn_index": 0}, timeout=30)
    assert joined.status_code == 400 and "Traceback" not in capfd.readouterr().err
    assert httpx.get(f"{url}config", params={"q": "a" * 1000}, timeout=30).status_code == 200


def test_a_folder_sent_as_the_file_gets_a_readable_error(url, tmp_path):
    (stored,) = upload(url, [("folder-probe.png", png_bytes(tmp_path, "folder-probe.png"))]).json()
    with pytest.raises(RuntimeError) as failure:
        answer(url, str(Path(stored).parent))
    assert "is not a file" in str(failure.value) or "not an image" in str(failure.value)
    assert answer(url, stored)["decision"] in ("NORMAL", "PNEUMONIA")  # the upload itself still answers


def test_a_queue_request_of_megabytes_is_refused_before_gradio_reads_it(url):
    """Files go by path; a join carrying megabytes (a 5 MB bogus path) would only reach Gradio's parser and log."""
    payload = {"data": [{"path": "/tmp/" + "a" * 2**21, "meta": {"_type": "gradio.FileData"}}], "fn_index": 0,
               "session_hash": "big", "event_data": None, "trigger_id": None}
    response = httpx.post(f"{url}gradio_api/queue/join", json=payload, timeout=30)
    assert response.status_code == 413 and "Request too large" in response.text
    streamed = httpx.post(f"{url}gradio_api/queue/join", content=iter([b"{" + b" " * 2**20, b"}"]),
                          headers={"content-type": "application/json"}, timeout=30)  # no length given
    assert streamed.status_code == 413


def hold(monkeypatch, owner, name: str) -> tuple[threading.Event, threading.Event]:
    """`owner.name` holds its worker until the test sets `release`; `entered` is set once it runs."""
    entered, release = threading.Event(), threading.Event()
    original = getattr(owner, name)

    def held(*args, **kwargs):
        entered.set()
        release.wait(60)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, held)
    return entered, release


@pytest.fixture
def held_batch_worker(monkeypatch):
    """The running batch holds the batch worker until the test lets it go (`.release()`)."""
    entered, release = hold(monkeypatch, app, "predict_files")
    entered.release = release.set
    yield entered
    release.set()


def join(url: str, film: bytes, session: str, api_name: str, headers: dict | None = None) -> httpx.Response:
    """Upload `film` and ask the queue to run `api_name` on it (a one-file batch for predict_batch); no waiting."""
    (stored,) = upload(url, [(f"{api_name}-film.png", film)]).json()
    reference = {"path": stored, "meta": {"_type": "gradio.FileData"}}
    return httpx.post(f"{url}gradio_api/queue/join", timeout=30, headers=headers, json={
        "data": [[reference] if api_name == "predict_batch" else reference], "fn_index": BrowserProtocol(url).endpoints[api_name],
        "session_hash": session, "event_data": None, "trigger_id": None})


def join_batch(url: str, film: bytes, session: str, headers: dict | None = None) -> httpx.Response:
    return join(url, film, session, "predict_batch", headers)


def finish(url: str, sessions: list[str]) -> None:
    """Every admitted batch is answered once the worker is free."""
    for session in sessions:
        with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
            completed = [line for line in stream.iter_lines() if '"process_completed"' in line]
        assert completed and '"success": true' in completed[0].replace('"success":true', '"success": true')


def test_batches_cannot_crowd_the_queue_and_single_x_rays_still_get_answers(url, tmp_path, held_batch_worker):
    """One client sending batch after batch would fill the shared queue (64 events) and turn everyone away."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError

    film = png_bytes(tmp_path, "batch-film.png")
    sessions = ["crowd-running", *(f"crowd-waiting-{i}" for i in range(app.MAX_WAITING_BATCHES))]
    assert join_batch(url, film, sessions[0]).status_code == 200 and held_batch_worker.wait(30)
    assert join_batch(url, film, sessions[1]).status_code == 200
    again = join_batch(url, film, sessions[1])
    assert again.status_code == 422 and "Your previous batch is still waiting" in again.text
    for session in sessions[2:]:
        assert join_batch(url, film, session).status_code == 200
    crowded = join_batch(url, film, "crowd-one-more")
    assert crowded.status_code == 422 and f"{app.MAX_WAITING_BATCHES} batches are waiting" in crowded.text
    with pytest.raises(ValidationError, match="The Space is busy"):  # what an API user sees
        Client(url, verbose=False).predict([handle_file(tmp_path / "batch-film.png")], api_name="/predict_batch")
    (single,) = upload(url, [("single-film.png", png_bytes(tmp_path, "single-film.png"))]).json()
    assert answer(url, single)["decision"] in ("NORMAL", "PNEUMONIA")  # singles still have room
    held_batch_worker.release()
    finish(url, sessions)


def test_a_burst_of_simultaneous_batches_cannot_slip_past_the_count(url, tmp_path, held_batch_worker):
    """Gradio validates simultaneous joins at once, before any is queued: counting the queue alone let 6 of 40 in."""
    from concurrent.futures import ThreadPoolExecutor

    film = png_bytes(tmp_path, "burst-film.png", seed=29)
    assert join_batch(url, film, "burst-running").status_code == 200 and held_batch_worker.wait(30)
    sessions = [f"burst-{i}" for i in range(30)]
    with ThreadPoolExecutor(len(sessions)) as pool:
        codes = list(pool.map(lambda session: join_batch(url, film, session).status_code, sessions))
    assert codes.count(200) == app.MAX_WAITING_BATCHES and codes.count(422) == len(sessions) - app.MAX_WAITING_BATCHES
    held_batch_worker.release()
    finish(url, ["burst-running", *(s for s, code in zip(sessions, codes) if code == 200)])


def test_an_admitted_batch_counts_as_waiting_until_it_is_queued_or_started():
    now = [0.0]
    admission = BatchAdmission(settle_s=2.0, clock=lambda: now[0])
    assert admission.refusal(lambda: [], "a", max_waiting=1, seconds_each=60) is None
    assert "busy" in admission.refusal(lambda: [], "b", max_waiting=1, seconds_each=60)  # "a" is not in the queue yet, but counts
    assert "previous batch" in admission.refusal(lambda: [], "a", max_waiting=1, seconds_each=60)
    assert admission.refusal(lambda: ["a"], "b", max_waiting=2, seconds_each=60) is None  # "a" counted once, from the queue now
    assert "busy" in admission.refusal(lambda: ["a"], "c", max_waiting=2, seconds_each=60)
    admission.started("b")
    assert admission.refusal(lambda: [], "c", max_waiting=1, seconds_each=60) is None  # "a" left the queue and "b" runs: none wait
    now[0] = 2.5
    assert admission.refusal(lambda: [], "d", max_waiting=1, seconds_each=60) is None  # an admission never queued expires


@pytest.fixture(scope="module")
def space_url(trained_model):
    """The app as on a Space, where one client may have only so many requests waiting (3 here)."""
    from chestxray import PneumoniaClassifier

    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app, "MAX_WAITING_PER_CLIENT", 3)
        demo = app.build_demo(classifier, "tiny-test-model")
    port = free_port()
    app.serve(demo, "127.0.0.1", port, quiet=True)
    yield f"http://127.0.0.1:{port}/", classifier
    demo.close()


def test_one_client_cannot_fill_the_queue_and_is_told_why(space_url, tmp_path, monkeypatch):
    """A script sending request after request (any endpoint, a new session each) would fill the queue of 64."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import ValidationError

    url, classifier = space_url
    entered, release = hold(monkeypatch, classifier, "predict")
    monkeypatch.setattr(app, "MAX_WAITING_PER_CLIENT", 3)
    film = png_bytes(tmp_path, "client-film.png", seed=37)
    sessions = [f"client-{i}" for i in range(4)]
    try:
        assert join(url, film, sessions[0], "predict").status_code == 200 and entered.wait(30)  # running, not waiting
        for session in sessions[1:]:
            assert join(url, film, session, "predict").status_code == 200
        refused = join(url, film, "client-one-more", "predict")
        assert refused.status_code == 422 and "You have 3 requests waiting" in refused.text
        with pytest.raises(ValidationError, match="requests waiting"):  # what an API user sees
            Client(url, verbose=False).predict(handle_file(tmp_path / "client-film.png"), api_name="/predict")
    finally:
        release.set()
    finish(url, sessions)


def test_on_a_space_one_client_has_one_batch_waiting_whatever_its_sessions(space_url, tmp_path, monkeypatch):
    url, _ = space_url
    entered, release = hold(monkeypatch, app, "predict_files")
    monkeypatch.setattr(app, "MAX_WAITING_PER_CLIENT", 3)
    monkeypatch.setenv("SPACE_ID", "user/pneumonia-xray")  # the client is the proxy's last X-Forwarded-For entry
    film = png_bytes(tmp_path, "owner-film.png", seed=41)
    client = lambda address: {"x-forwarded-for": f"198.51.100.77, {address}"}  # noqa: E731
    sessions = ["owner-running", "owner-waiting", "owner-other-client"]
    try:
        assert join_batch(url, film, sessions[0], client("203.0.113.1")).status_code == 200 and entered.wait(30)
        assert join_batch(url, film, sessions[1], client("203.0.113.2")).status_code == 200
        time.sleep(2.5)  # past the admissions' settle time: the queue's own events are counted now
        another_session = join_batch(url, film, "owner-another-session", client("203.0.113.2"))
        assert another_session.status_code == 422 and "Your previous batch is still waiting" in another_session.text
        assert join_batch(url, film, sessions[2], client("203.0.113.3")).status_code == 200  # another client may
    finally:
        release.set()
    finish(url, sessions)


def test_a_client_is_its_address_and_on_a_space_the_proxy_s_last_entry(monkeypatch):
    from types import SimpleNamespace

    request = SimpleNamespace(headers={"x-forwarded-for": "6.6.6.6, 203.0.113.9"}, client=SimpleNamespace(host="10.0.0.2"))
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert client_address(request) == "10.0.0.2"
    monkeypatch.setenv("SPACE_ID", "user/pneumonia-xray")
    assert client_address(request) == "203.0.113.9"  # what the client wrote itself (6.6.6.6) is not trusted
    # One IPv6 subscriber holds a /64: each of its addresses is the same client, a neighbouring /64 is another.
    ipv6 = lambda address: client_address(SimpleNamespace(headers={"x-forwarded-for": address}, client=None))
    assert ipv6("2001:db8:1:2::1") == ipv6("2001:db8:1:2:ffff:eeee:dddd:cccc") == "2001:db8:1:2::/64"
    assert ipv6("2001:db8:1:3::1") != ipv6("2001:db8:1:2::1")
    assert ipv6("::ffff:203.0.113.9") == "203.0.113.9" and ipv6("not an address") == "not an address"
    # Two header lines (a proxy adding its own line): the last entry of the last line, never the client's first
    from starlette.datastructures import Headers

    two_lines = Headers(raw=[(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.7")])
    assert client_address(SimpleNamespace(headers=two_lines, client=None)) == "198.51.100.7"


def test_a_burst_from_one_client_is_counted_before_it_is_queued():
    now = [0.0]
    admission = ClientAdmission(settle_s=5.0, clock=lambda: now[0])
    assert [admission.refusal(lambda: [], "a", max_waiting=2) is None for _ in range(3)] == [True, True, False]
    assert admission.refusal(lambda: [], "b", max_waiting=2) is None  # another client is not held up
    assert admission.refusal(lambda: ["a", "a"], "a", max_waiting=2) is not None  # queued now: counted once
    admission.started("a")
    assert admission.refusal(lambda: ["a"], "a", max_waiting=2) is None  # one ran; the other still waits
    for _ in range(3):
        admission.started("a")
    assert admission.refusal(lambda: [], "a", max_waiting=2) is None  # all answered: a fast sequential client is fine
    admission.refusal(lambda: [], "c", max_waiting=1)
    now[0] = 6.0
    assert admission.refusal(lambda: [], "c", max_waiting=1) is None  # an admission never started expires
    assert admission.refusal(lambda: [], "a", max_waiting=0) is None  # 0: no limit


@pytest.mark.parametrize("fn_index", [999, -1, "999", 999.0])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32"])  # FastAPI's json.loads reads them all
def test_a_join_for_an_endpoint_the_app_does_not_have_gets_a_400_not_a_traceback(url, fn_index, encoding, capfd):
    body = json.dumps({"data": [], "fn_index": fn_index, "session_hash": "probe", "event_data": None, "trigger_id": None})
    response = httpx.post(f"{url}gradio_api/queue/join", content=body.encode(encoding), timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and "Unknown endpoint" in response.text
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("api_name, data", [
    ("predict", ["/etc/passwd"]),  # a bare path, not a reference to an upload
    ("predict", [123]),
    ("predict", [{"path": "x.png"}]),  # no FileData marker
    ("predict", []),  # fewer values than inputs
    ("predict_batch", ["not a list of files"]),
    # A well-formed reference to a file this app never received: Gradio would download a URL (no limit of size or
    # time, holding the worker) and refuse a path outside its folders with a traceback.
    ("predict", [{"path": "https://example.com/film.png", "meta": {"_type": "gradio.FileData"}}]),
    ("predict", [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}]),
    ("predict_batch", [[{"path": "app.py", "meta": {"_type": "gradio.FileData"}}]]),
])
def test_a_join_whose_values_cannot_reach_the_function_gets_a_readable_422_not_a_traceback(url, api_name, data, capfd):
    config = httpx.get(f"{url}config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    response = httpx.post(f"{url}gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": "bad"},
                          timeout=30)
    assert response.status_code == 422
    assert any(text in response.text for text in ("upload the file first", "takes 1 value(s); the request sent 0",
                                                  "does not download files from URLs"))
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("route", ["call/nope", "call/v2/nope", "run/nope", "api/nope", "run/predict", "api/predict_batch"])
def test_a_call_naming_an_endpoint_the_app_does_not_have_gets_a_404_not_a_traceback(url, route, capfd):
    response = httpx.post(f"{url}gradio_api/{route}", json={"data": [None], "fn_index": 99}, timeout=30)
    assert response.status_code == 404 and "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("route, body, expected", [
    ("call/predict", {}, 'a "data" list'),
    ("call/predict", {"data": ["x"]}, "upload the file first"),
    ("call/predict", {"data": []}, "takes 1 value(s)"),
    ("call/predict", {"data": [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}]}, "did not receive"),
    ("queue/join", {"data": [None], "fn_index": 0, "session_hash": "s" * 900_000}, "session_hash is too long"),
])
def test_the_curl_routes_and_joins_get_the_same_checks_and_a_readable_422(url, route, body, expected, capfd):
    response = httpx.post(f"{url}gradio_api/{route}", json=body, timeout=30)
    assert response.status_code == 422 and expected in response.json()["detail"][0]["message"]
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("route", ["call/show_upload", "call/v2/show_upload"])
def test_the_page_s_private_events_have_no_api_route(url, route, capfd):
    response = httpx.post(f"{url}gradio_api/{route}", json={"data": [None]}, timeout=30)
    assert response.status_code == 404 and "Traceback" not in capfd.readouterr().err


def test_values_by_parameter_name_get_the_same_checks_and_a_good_request_still_joins(url, tmp_path, capfd):
    """`/call/v2/NAME` is what the API recorder's cURL snippet calls."""
    (stored,) = upload(url, [("named.png", png_bytes(tmp_path, "named.png", seed=31))]).json()
    reference = {"path": stored, "meta": {"_type": "gradio.FileData"}}
    for body, expected in (({"x": 1}, "`x` is not a valid key-word argument"), ({}, "No value provided for required argument: path"),
                           ([], "parameters by name"), ({"path": "bare.png"}, "upload the file first"),
                           ({"path": {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}}, "did not receive")):
        response = httpx.post(f"{url}gradio_api/call/v2/predict", json=body, timeout=30)
        assert response.status_code == 422 and expected in response.json()["detail"][0]["message"], body
    joined = httpx.post(f"{url}gradio_api/call/v2/predict", json={"path": reference}, timeout=30)
    assert joined.status_code == 200 and "event_id" in joined.json()
    with httpx.stream("GET", f"{url}gradio_api/call/predict/{joined.json()['event_id']}", timeout=60) as events:
        assert "event: complete" in "".join(events.iter_text())
    assert "Traceback" not in capfd.readouterr().err


def test_an_event_stream_for_a_session_without_events_and_overlong_ids_are_refused_up_front(url, capfd):
    stream = httpx.get(f"{url}gradio_api/queue/data", params={"session_hash": "no-such-session"}, timeout=30)
    assert stream.status_code == 404 and "join the queue first" in stream.text
    for route, key in (("queue/data", "session_hash"), ("upload_progress", "upload_id"), ("upload", "upload_id")):
        method = httpx.post if route == "upload" else httpx.get
        response = method(f"{url}gradio_api/{route}", params={key: "x" * 4_000}, timeout=30)
        assert response.status_code == 400 and f"The {key} is too long" in response.text
    assert "Traceback" not in capfd.readouterr().err


def test_a_results_stream_for_an_event_nobody_sent_is_refused_up_front(url, capfd):
    for route in ("call/predict/deadbeef", "call/v2/predict/deadbeef", "call/nosuch/deadbeef"):
        response = httpx.get(f"{url}gradio_api/{route}", timeout=30)
        assert response.status_code == 404 and "send the request (POST) first" in response.text
    log = capfd.readouterr().err
    assert "Traceback" not in log and "already started" not in log


@pytest.mark.parametrize("meta", [None, "gradio.FileData", [1], 7])
def test_a_file_reference_of_an_odd_shape_gets_a_422_not_a_500(url, meta, capfd):
    config = httpx.get(f"{url}config", timeout=30).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "predict")
    response = httpx.post(f"{url}gradio_api/queue/join", timeout=30,
                          json={"data": [{"path": "x", "meta": meta}], "fn_index": fn_index, "session_hash": "odd"})
    assert response.status_code == 422 and "Traceback" not in capfd.readouterr().err


def test_a_multipart_body_outside_the_upload_route_gets_the_small_body_limit(url):
    body = b'--zzz\r\nContent-Disposition: form-data; name="data"\r\n\r\n' + b"A" * (2 * 2**20) + b"\r\n--zzz--\r\n"
    response = httpx.post(f"{url}gradio_api/queue/join", content=body, timeout=30,
                          headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert response.status_code == 413 and len(response.content) < 10_000  # not the body quoted back


@pytest.mark.parametrize("route", ["file=https://example.com/film.png", "file=HTTP:/example.com/x", "proxy=https://example.com/",
                                   "custom_component/abc/client/def/x.js"])
def test_the_space_relays_no_url_and_serves_no_custom_component(url, route):
    assert httpx.get(f"{url}gradio_api/{route}", timeout=30).status_code == 404


@pytest.mark.parametrize("body, content_type, status", [
    (b'{"data": [null], "fn_index": 0, "session_hash": "\\udc80"}', "application/json", 400),  # a lone surrogate
    (b"\xff\xfe\xfd not text" * 100, "text/plain", 400),
    (b'{"component_id": 999999, "fn_name": "x", "data": null, "session_hash": "s"}', "application/json", 404),
])
def test_bodies_that_would_break_gradio_s_handlers_are_refused_first(url, body, content_type, status, capfd):
    route = "component_server" if b"component_id" in body else "queue/join"
    response = httpx.post(f"{url}gradio_api/{route}", content=body, headers={"content-type": content_type}, timeout=30)
    assert response.status_code == status and "Traceback" not in capfd.readouterr().err


def test_a_refused_join_reaches_a_gradio_client_user_as_a_readable_validation_error(app_client, url):
    from gradio_client.exceptions import ValidationError

    with pytest.raises(ValidationError, match="does not download files from URLs"):
        app_client.predict({"path": "https://example.com/film.png", "meta": {"_type": "gradio.FileData"}}, api_name="/predict")
    refused = httpx.post(f"{url}gradio_api/queue/join", json={"data": [], "fn_index": 999, "session_hash": "x"})
    assert refused.json() == {"detail": "Unknown endpoint (fn_index)."}  # other refusals: FastAPI's own shape


def test_the_api_page_s_examples_are_a_local_x_ray_not_a_url_the_app_refuses(url):
    """The "Use via API" page writes each parameter's example inside handle_file(...): Gradio's own is a PDF's URL."""
    info = httpx.get(f"{url}gradio_api/info", timeout=30).json()["named_endpoints"]
    examples = {name: [p["example_input"] for p in endpoint["parameters"]] for name, endpoint in info.items()}
    assert examples["/predict"][0]["url"] == app.API_EXAMPLE_FILE and examples["/predict_batch"][0][0]["url"] == app.API_EXAMPLE_FILE
    assert "http" not in json.dumps(examples)
    config = httpx.get(f"{url}config", timeout=30).json()
    upload = next(c for c in config["components"] if c["props"].get("elem_id") == "xray-upload")
    assert (upload["type"], upload["props"]["name"]) == ("file", "file")  # still Gradio's own file component


def test_one_file_sent_to_the_batch_endpoint_is_told_to_send_a_list(app_client, tmp_path):
    """The developer did use handle_file: the message says what is wrong (one file where a list belongs)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import ValidationError

    synthetic_xray(1, 5, size=64).save(tmp_path / "one-film.png")
    with pytest.raises(ValidationError, match=r"is a list of files, and the request sent one file: send it as a list"):
        app_client.predict(handle_file(tmp_path / "one-film.png"), api_name="/predict_batch")
    rows = app_client.predict([handle_file(tmp_path / "one-film.png")], api_name="/predict_batch")[0]["data"]
    assert [row[0] for row in rows] == ["one-film.png"]


@pytest.mark.parametrize("body, status, expected", [
    ({"data": [1], "fn_index": 0, "session_hash": "x"}, 200, None),  # what the page sends for the second example
    ({"data": [None], "fn_index": 0, "session_hash": "x"}, 422, "There is no example null"),
    ({"data": [2], "fn_index": 0, "session_hash": "x"}, 422, "numbered 0 to 1"),
    ({"data": ["1"], "fn_index": 0, "session_hash": "x"}, 422, 'There is no example "1"'),
    ({"data": [], "fn_index": 0, "session_hash": "x"}, 422, "takes 1 value(s)"),
])
def test_the_page_s_example_loader_is_the_one_event_served_outside_the_queue(examples_app_url, body, status, expected, capfd):
    config = httpx.get(f"{examples_app_url}config", timeout=30).json()
    loader = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "load_example")
    response = httpx.post(f"{examples_app_url}gradio_api/run/predict", json={**body, "fn_index": loader}, timeout=30)
    assert response.status_code == status
    if expected:
        assert expected in response.json()["detail"][0]["message"]
    queued = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "predict")
    assert httpx.post(f"{examples_app_url}gradio_api/run/predict", json={**body, "fn_index": queued}).status_code == 404
    assert httpx.post(f"{examples_app_url}gradio_api/call/load_example", json={"data": [99]}).status_code == 404  # no API
    assert "Traceback" not in capfd.readouterr().err


def test_the_curl_route_of_a_real_endpoint_still_answers(url):
    response = httpx.post(f"{url}gradio_api/call/predict", json={"data": [None]}, timeout=30)
    assert response.status_code == 200 and "event_id" in response.json()  # the curl route of "Use via API"


def test_a_join_for_a_real_endpoint_still_reaches_the_queue(url, tmp_path):
    (stored,) = upload(url, [("joined.png", png_bytes(tmp_path, "joined.png", seed=23))]).json()
    assert answer(url, stored)["decision"] in ("NORMAL", "PNEUMONIA")  # the join's body was handed on intact
    malformed = httpx.post(f"{url}gradio_api/queue/join", json={"data": "not a list", "fn_index": 0, "session_hash": "x"})
    assert malformed.status_code == 422  # Gradio's own validation, as before


def test_an_upload_abandoned_half_way_leaves_no_spooled_parts(url):
    import socket
    from urllib.parse import urlparse

    address = urlparse(url)
    body = multipart_body("b0und4ry", 3).replace(b"xxxx", b"x" * 2**16)
    head = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: {address.hostname}\r\nContent-Type: multipart/form-data; "
            f"boundary=b0und4ry\r\nContent-Length: {len(body) * 10}\r\n\r\n").encode()
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(head + body[: len(body) - 10])  # two parts whole, the third cut short; then the client goes
        time.sleep(1.0)
    deadline = time.monotonic() + 10
    while spooled_parts() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not spooled_parts()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e400"])
def test_numbers_gradio_cannot_serialise_are_refused_before_they_reach_it(url, number, capfd):
    body = '{"data": [%s], "fn_index": 0, "session_hash": "probe", "event_data": null, "trigger_id": null}' % number
    response = httpx.post(f"{url}gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "finite" in response.text
    assert "Traceback" not in capfd.readouterr().err


def test_a_request_of_thousands_of_values_is_refused_before_gradio_lists_each_in_its_error(url, capfd):
    batch_endpoint = BrowserProtocol(url).endpoints["predict_batch"]
    response = httpx.post(f"{url}gradio_api/queue/join", timeout=30, json={
        "data": [[1] * 6500], "fn_index": batch_endpoint, "session_hash": "values", "event_data": None, "trigger_id": None})
    assert response.status_code == 413 and "Too many values" in response.text and len(response.content) < 1000
    assert len(capfd.readouterr().err) < 10_000


def test_the_browser_only_event_cannot_be_queued(url):
    """The batch tab clears its table in the browser; joining that event's index would queue a function-less job."""
    dependencies = httpx.get(f"{url}config", timeout=30).json()["dependencies"]
    browser_only = [d["id"] for d in dependencies if not d.get("backend_fn")]
    assert len(browser_only) == 1
    for index in browser_only:
        response = httpx.post(f"{url}gradio_api/queue/join", timeout=30, json={
            "data": [], "fn_index": index, "session_hash": "js", "event_data": None, "trigger_id": None})
        assert response.status_code == 400


def test_a_request_naming_thousands_of_files_is_refused_before_gradio_prepares_them(url, tmp_path):
    (stored,) = upload(url, [("many-refs.png", png_bytes(tmp_path, "many-refs.png", seed=31))]).json()
    reference = {"path": stored, "meta": {"_type": "gradio.FileData"}}
    batch_endpoint = BrowserProtocol(url).endpoints["predict_batch"]
    files_before = len([p for p in Path(app.UPLOAD_DIR).iterdir() if p.is_file()])
    started = time.perf_counter()
    response = httpx.post(f"{url}gradio_api/queue/join", timeout=30, json={
        "data": [[reference] * 6000], "fn_index": batch_endpoint, "session_hash": "refs", "event_data": None, "trigger_id": None})
    assert response.status_code == 413 and "Too many files" in response.text
    assert time.perf_counter() - started < 2
    # Gradio 6.31 leaves an empty temporary file for each file it prepares (the purge takes them): none were made
    assert len([p for p in Path(app.UPLOAD_DIR).iterdir() if p.is_file()]) - files_before < 10


def test_uploads_are_refused_while_they_would_leave_the_disk_short():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from http_guard import HttpGuard

    free = [3 * 2**30]

    async def stored(request):
        await request.body()
        return PlainTextResponse("stored")

    guarded = Starlette(routes=[Route("/gradio_api/upload", stored, methods=["POST"])],
                        middleware=[Middleware(HttpGuard, free_disk_bytes=lambda: free[0], min_free_disk_bytes=2**30)])
    with TestClient(guarded) as client:
        files = {"files": ("film.png", b"x" * 1000)}
        assert client.post("/gradio_api/upload", files=files).text == "stored"
        free[0] = 2**30 + 500  # this upload would leave less than the reserve
        refused = client.post("/gradio_api/upload", files=files)
        assert refused.status_code == 503 and "short of disk space" in refused.text


def test_one_client_may_upload_only_so_much_in_the_window_its_uploads_stay_on_disk():
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.requests import Request
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from admission import client_address
    from http_guard import HttpGuard, UploadQuota

    now = [0.0]
    quota = UploadQuota(max_bytes=5000, window_s=600, clock=lambda: now[0])

    async def stored(request):
        await request.body()
        return PlainTextResponse("stored")

    guarded = Starlette(routes=[Route("/gradio_api/upload", stored, methods=["POST"])],
                        middleware=[Middleware(HttpGuard, max_upload_bytes=4000, upload_quota=quota,
                                               client_of=lambda scope: client_address(Request(scope)))])
    film = {"files": ("film.png", b"x" * 1500)}  # about 1.7 kB with the multipart framing
    with TestClient(guarded) as client:
        assert client.post("/gradio_api/upload", files={"files": ("f.png", b"x" * 5000)}).status_code == 413  # over one request's limit
        assert quota.used("testclient") == 0  # a refused body holds nothing on disk
        assert [client.post("/gradio_api/upload", files=film).text for _ in range(2)] == ["stored"] * 2
        refused = client.post("/gradio_api/upload", files=film)
        assert refused.status_code == 429 and "one client may upload at most" in refused.text
        assert quota.used("testclient") == pytest.approx(2 * 1700, abs=300)  # what was read
        now[0] = 601  # the first uploads have left the disk (the purge) and the window
        assert client.post("/gradio_api/upload", files=film).text == "stored"
    with TestClient(guarded, client=("203.0.113.9", 5000)) as other:  # another client has its own allowance
        assert other.post("/gradio_api/upload", files=film).text == "stored"


def test_parallel_uploads_count_at_their_declared_size_before_they_are_read():
    from http_guard import UploadQuota

    quota = UploadQuota(max_bytes=1000, window_s=600, clock=lambda: 0.0)
    first = quota.reserve("a", 600)
    assert first is not None and quota.reserve("a", 600) is None  # the first is still streaming
    UploadQuota.settle(first, 100)  # it turned out smaller
    assert quota.reserve("a", 600) is not None and quota.reserve("b", 1000) is not None


def test_the_page_and_its_api_twins_share_one_worker_so_their_uploads_do_not_add_up(trained_model):
    """/predict, /analyse and the page's own event each decode one upload: run side by side, four of the worst
    admissible files held four decoded images at once (3.9 GB). They share one concurrency group of one."""
    from chestxray import PneumoniaClassifier

    demo = app.build_demo(PneumoniaClassifier.from_pretrained(trained_model), "tiny-test-model")
    demo.queue(default_concurrency_limit=1)
    groups = {fn.fn.__name__: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values() if fn.fn}
    assert groups["show_upload"] == groups["predict"] == groups["analyse"] == (app.SINGLE_XRAY, "default")
    assert groups["predict_batch"][0] != app.SINGLE_XRAY  # a batch has its own worker and its own time budget
    assert demo._queue.default_concurrency_limit == 1
