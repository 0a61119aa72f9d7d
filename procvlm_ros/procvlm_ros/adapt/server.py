"""
The local annotation page (``procvlm-adapt annotate`` without ``--stages``).

Like the official Flask annotator it serves every frame of the demonstration as JPEG (quality
70) and a page to scrub through them and mark where each stage ends; unlike it, it listens on
localhost only, refuses an empty or undecodable recording instead of showing dummy frames, keeps
stages editable (description, end frame, delete) and saves the annotation file
(``annotation.yaml``) instead of writing the training data directly. Standard library only.
"""

from __future__ import annotations

from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import io
import json
import logging
from pathlib import Path
import threading
from typing import Any

from PIL import Image

from procvlm_ros.adapt import annotation as ann
from procvlm_ros.adapt.frames import Demonstration
from procvlm_ros.core.errors import ConfigError

_LOG = logging.getLogger(__name__)
PAGE = Path(__file__).with_name('annotator.html')
FRAME_QUALITY = 70  # official page


class AnnotationServer:
    """
    Serve one demonstration on ``http://127.0.0.1:PORT/``; save to ``out_dir/annotation.yaml``.

    :param demo: The decoded demonstration.
    :param task: Task sentence shown on the page and saved in the file.
    :param out_dir: Directory of the annotation file.
    :param source: The ``source`` value written into the file.
    :param image_topic: The bag topic written into the file (empty for videos).
    :param port: TCP port; 0 picks a free one.
    :param initial: An existing annotation to start from, if any.
    """

    def __init__(self, demo: Demonstration, task: str, out_dir: str | Path, *, source: str,
                 image_topic: str = '', port: int = 0,
                 initial: ann.Annotation | None = None) -> None:
        self.demo, self.task = demo, task
        self.out_path = Path(out_dir) / ann.ANNOTATION_NAME
        self.source, self.image_topic = source, image_topic
        self.initial = initial
        self.saved = threading.Event()
        self._jpeg: dict[int, bytes] = {}
        self._httpd = ThreadingHTTPServer(('127.0.0.1', port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self._httpd.server_address[1]}/'

    def start(self) -> AnnotationServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AnnotationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ content

    def info(self) -> dict[str, Any]:
        stages = []
        if self.initial is not None:
            try:
                subs = ann.resolve_sub_tasks(self.initial, self.demo.times_s)
                stages = [{'description': d, 'end_frame': e} for d, e in subs
                          if d not in (ann.DONE, ann.NOT_DONE)]
            except ConfigError as e:
                _LOG.warning('existing annotation not loaded: %s', e)
        return {'task': self.task, 'total_frames': self.demo.num_frames, 'fps': self.demo.fps,
                'times_s': [round(t, 4) for t in self.demo.times_s], 'stages': stages,
                'done': True if self.initial is None else self.initial.done,
                'reason': '' if self.initial is None else self.initial.reason,
                'success_cutoff': ann.DEFAULT_CUTOFF if self.initial is None
                else self.initial.success_cutoff}

    def frame_jpeg(self, index: int) -> bytes:
        if index not in self._jpeg:
            out = io.BytesIO()
            Image.fromarray(self.demo.frames[index]).save(out, 'JPEG', quality=FRAME_QUALITY)
            self._jpeg[index] = out.getvalue()
        return self._jpeg[index]

    def save(self, payload: Any) -> Path:
        """Validate the page's stages against the demonstration, then write the file."""
        if not isinstance(payload, dict):
            raise ConfigError('expected a JSON object')
        data = {'task': self.task, 'source': self.source, 'done': payload.get('done'),
                'stages': payload.get('stages')}
        if self.image_topic:
            data['image_topic'] = self.image_topic
        if payload.get('done'):
            data['reason'] = payload.get('reason', '')
        else:
            data['success_cutoff'] = payload.get('success_cutoff', ann.DEFAULT_CUTOFF)
        annotation = ann.from_dict(data, 'page')
        ann.resolve_sub_tasks(annotation, self.demo.times_s)  # overlaps, ranges
        ann.save(annotation, self.out_path)
        self.saved.set()
        return self.out_path

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                _LOG.debug('%s ' + format, self.address_string(), *args)

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header('Content-Type', ctype)
                self.send_header('Content-Length', str(len(body)))
                self.send_header('Cache-Control', 'no-store')
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj).encode(), 'application/json')

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split('?', 1)[0]
                if path in ('/', '/index.html'):
                    self._send(HTTPStatus.OK, PAGE.read_bytes(), 'text/html; charset=utf-8')
                elif path == '/info':
                    self._json(HTTPStatus.OK, server.info())
                elif path.startswith('/frame/'):
                    try:
                        index = int(path[len('/frame/'):])
                    except ValueError:
                        index = -1
                    if not 0 <= index < server.demo.num_frames:
                        self._json(HTTPStatus.NOT_FOUND, {'error': f'no frame {path[7:]}'})
                        return
                    self._send(HTTPStatus.OK, server.frame_jpeg(index), 'image/jpeg')
                else:
                    self._json(HTTPStatus.NOT_FOUND, {'error': f'no such page {path}'})

            def do_POST(self) -> None:  # noqa: N802
                if self.path != '/save':
                    self._json(HTTPStatus.NOT_FOUND, {'error': 'POST /save only'})
                    return
                length = int(self.headers.get('Content-Length') or 0)
                try:
                    payload = json.loads(self.rfile.read(length) or b'null')
                    saved = server.save(payload)
                except (ValueError, ConfigError) as e:
                    self._json(HTTPStatus.BAD_REQUEST, {'error': str(e)})
                    return
                self._json(HTTPStatus.OK, {'status': 'saved', 'path': str(saved)})

        return Handler
