"""Why the app leaves an upload's empty folder for a while: Gradio's upload of a file races its removal.

    python bench/upload_race.py                  # remove the files only (what the app does): no errors
    python bench/upload_race.py --remove-folders # also remove their folders at once (what it did): HTTP 500s

Gradio stores an upload as <upload folder>/<sha256 of the content>/<name>: it creates the folder, then renames the
file into it. A thread here does to every upload what the app's request does (delete the file, and with
--remove-folders its folder too) while ``--clients`` clients upload one identical file ``--uploads`` times in all;
it prints the HTTP status codes and writes them to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remove-folders", action="store_true")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=800)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    upload_root = Path(tempfile.mkdtemp())
    os.environ["GRADIO_TEMP_DIR"] = str(upload_root)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = gr.Interface(lambda file: "ok", gr.File(), "text")
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    data = os.urandom(200_000)
    stop = threading.Event()

    def consume_everything():
        while not stop.is_set():
            for folder in upload_root.glob("*/"):
                for file in folder.glob("*"):
                    file.unlink(missing_ok=True)
                if args.remove_folders:
                    try:
                        folder.rmdir()
                    except OSError:
                        pass

    def upload(_):
        return httpx.post(f"{url}gradio_api/upload", files={"files": ("same.png", data)}, timeout=60).status_code

    consumer = threading.Thread(target=consume_everything, daemon=True)
    consumer.start()
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            codes = list(pool.map(upload, range(args.uploads)))
    finally:
        stop.set()
        demo.close()
    report = {
        "remove_folders": args.remove_folders,
        "uploads": len(codes),
        "status_codes": {str(code): codes.count(code) for code in sorted(set(codes))},
    }
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
