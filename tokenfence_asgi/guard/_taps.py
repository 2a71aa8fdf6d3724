"""Reading a guarded call's answer: its usage now (JSON), or as its body is read (a stream).

``_process_response`` hands each successful HTTP response of a guarded call here. A body read
already (a JSON answer, audio) gives its usage at once. A body still to be read (a stream,
``with_streaming_response``) is tapped at its decoded bytes (``iter_bytes`` / ``aiter_bytes``):
``Stream``, ``iter_lines``, ``read`` and ``parse`` all read through them, so every reader feeds
the same meter, and gzip is undone already. Server-sent events are parsed as they pass (the
SDK adapter reads each: usage, text produced); a usage-only chunk the guard asked for is
dropped. The end of the body, or ``close`` (``aclose``) before it, settles the call.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from tokenfence_asgi.errors import TokenFenceError
from tokenfence_asgi.guard._fenced import Fenced, GuardedCall, log
from tokenfence_asgi.web.problem import http_status

__all__ = ["tap_async", "tap_sync"]

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")
_MAX_BUFFER = 32 * 1024 * 1024  # a body larger than this is not parsed: the hold is charged


class _Reader:
    """Feeds a response body to the call's meter: SSE events, or a JSON document at the end."""

    __slots__ = ("buffer", "busy", "call", "checked", "done", "parsed", "sse", "state")

    def __init__(self, state: Fenced, call: GuardedCall, sse: bool, parsed: bool) -> None:
        self.state = state
        self.call = call
        self.sse = sse
        self.buffer = bytearray()
        self.busy = False  # inside the SDK's own read: a close() now is the end of the body
        self.parsed = parsed  # an event stream or JSON; not audio or an image
        self.done = False  # read ``data: [DONE]``: the SDK stops reading there
        self.checked = False  # the tools the answer called were checked

    def feed(self, chunk: bytes) -> bytes:
        """Read ``chunk``; return what to pass on (the usage chunk nobody asked for removed)."""
        if not self.parsed:
            return chunk
        self.buffer += chunk
        if len(self.buffer) > _MAX_BUFFER:  # not read any further: the hold is charged
            self.parsed = False
            self.call.usage = None
            self.call.sse = False
            rest = bytes(self.buffer) if self.sse and self.call.strip_usage else chunk
            self.buffer.clear()
            return rest
        if not self.sse:
            return chunk
        out = bytearray()
        start = 0
        for match in _EVENT_END.finditer(self.buffer):
            raw = bytes(self.buffer[start : match.end()])
            start = match.end()
            if self._event(raw) or not self.call.strip_usage:
                out += raw
        del self.buffer[:start]
        return chunk if not self.call.strip_usage else bytes(out)

    def unmetered(self) -> None:
        """The body is read raw, past the decoded bytes this reader sees: nothing of it can be
        counted, so the call is charged its hold (as a body too large to parse)."""
        self.parsed = False
        self.call.usage = None
        self.call.sse = False

    def flush(self) -> bytes:
        """The end of the body: parse what is left; return what is left to pass on."""
        if not self.parsed:
            return b""
        rest = bytes(self.buffer)
        self.buffer.clear()
        if not self.sse:
            _read_json(self.state, self.call, rest)
            return b""
        keep = self._event(rest) if rest.strip() else True
        return rest if self.call.strip_usage and keep else b""

    def _event(self, raw: bytes) -> bool:
        name: str | None = None
        data: list[bytes] = []
        for line in _LINE.split(raw):
            if line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
        text = b"\n".join(data)
        if text.startswith(b"[DONE]"):
            self.done = True
            return True
        if not data:
            return True
        try:
            payload = json.loads(text)
        except ValueError:
            return True
        self.call.tool_calls += self.state.adapter.stream_tool_calls(payload)
        return self.state.adapter.on_event(self.call, name, payload)


async def _checked(state: Fenced, reader: _Reader, response: Any) -> None:
    """A stream read whole (its end, or ``[DONE]``, before which the SDK stops reading):
    settle it, then check the tools it called against the policy, raising the refusal."""
    if reader.checked:
        return
    reader.checked = True
    await state.end(reader.call)
    try:
        await state.check_tools(reader.call)
    except TokenFenceError as exc:
        raise _refusal(state, exc, response) from None


def _checked_sync(state: Fenced, reader: _Reader, response: Any) -> None:
    """``_checked`` for a sync client's stream."""
    if reader.checked:
        return
    reader.checked = True
    _end_sync(state, reader.call)
    try:
        state.run(lambda: state.check_tools(reader.call))
    except TokenFenceError as exc:
        raise _refusal(state, exc, response) from None


def _refusal(state: Fenced, exc: TokenFenceError, response: Any) -> Exception:
    """A refused tool call of a streamed answer, as the SDK's status error of its request."""
    if http_status(exc) == 500:  # a bug or a configuration error: ours, as it is
        return exc
    request = response.request
    return state.adapter.error(exc, str(request.method).upper(), str(request.url))


def _read_json(state: Fenced, call: GuardedCall, content: bytes) -> None:
    try:
        body = json.loads(content) if content else None
    except ValueError:
        return  # not JSON (audio, an image): priced by its units
    if isinstance(body, Mapping):
        model = body.get("model")
        if isinstance(model, str):
            call.model = model
        call.usage = state.adapter.usage(call.kind, body)
        call.tool_calls = state.adapter.tool_calls(body)


def _observe(state: Fenced, call: GuardedCall, response: Any) -> _Reader | None:
    """Note a successful response; a reader when its body is still to be read."""
    call.observed = True
    kind = response.headers.get("content-type", "")
    if response.is_stream_consumed:  # read already: a JSON answer, audio, or a whole stream
        if "json" in kind:
            _read_json(state, call, response.content)
        elif "text/event-stream" in kind:
            reader = _Reader(state, call, True, True)
            reader.feed(response.content)
            reader.flush()
        return None
    call.streaming = True
    call.sse = "text/event-stream" in kind
    return _Reader(state, call, call.sse, call.sse or "json" in kind)


def tap_sync(state: Fenced, call: GuardedCall, response: Any) -> None:
    """Read the usage of a sync client's response, now or as its body is read."""
    reader = _observe(state, call, response)
    if reader is None:
        return
    iter_bytes, close = response.iter_bytes, response.close

    def tapped(chunk_size: int | None = None) -> Iterator[bytes]:
        chunks = iter_bytes(chunk_size)
        try:
            while True:
                reader.busy = True
                try:
                    chunk = next(chunks)
                except StopIteration:
                    break
                finally:
                    reader.busy = False
                out = reader.feed(chunk)
                if reader.done:
                    _checked_sync(state, reader, response)
                if out:
                    yield out
            tail = reader.flush()
            if tail:
                yield tail
            _checked_sync(state, reader, response)
        finally:
            _end_sync(state, call)

    def closing() -> None:
        close()
        if not reader.busy:  # the caller closed it (abandoned, or done reading)
            _end_sync(state, call)

    iter_raw = response.iter_raw

    def raw(chunk_size: int | None = None) -> Iterator[bytes]:
        if not reader.busy:  # the caller's own raw read, not the decoded one's
            reader.unmetered()
        return iter_raw(chunk_size)  # type: ignore[no-any-return]

    response.iter_bytes, response.close, response.iter_raw = tapped, closing, raw


def _end_sync(state: Fenced, call: GuardedCall) -> None:
    if call.state == "open":
        try:
            state.run(lambda: state.end(call))
        except RuntimeError as exc:  # closed by the garbage collector on a loop's thread
            log.warning("stream_not_settled", reservation=call.reservation.id, error=repr(exc))


def tap_async(state: Fenced, call: GuardedCall, response: Any) -> None:
    """Read the usage of an async client's response, now or as its body is read."""
    reader = _observe(state, call, response)
    if reader is None:
        return
    aiter_bytes, aclose = response.aiter_bytes, response.aclose

    async def tapped(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        chunks = aiter_bytes(chunk_size)
        try:
            while True:
                reader.busy = True
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    reader.busy = False
                out = reader.feed(chunk)
                if reader.done:
                    await _checked(state, reader, response)
                if out:
                    yield out
            tail = reader.flush()
            if tail:
                yield tail
            await _checked(state, reader, response)
        finally:
            await chunks.aclose()
            await state.end(call)

    async def closing() -> None:
        await aclose()
        if not reader.busy:
            await state.end(call)

    aiter_raw = response.aiter_raw

    def raw(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        if not reader.busy:  # the caller's own raw read, not the decoded one's
            reader.unmetered()
        return aiter_raw(chunk_size)  # type: ignore[no-any-return]

    response.aiter_bytes, response.aclose, response.aiter_raw = tapped, closing, raw
