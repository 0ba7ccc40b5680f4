"""Splitting a reasoning model's thinking (`<think>…</think>`) from its answer, in a stream."""

from __future__ import annotations

from pipeserve.textutil import partial_suffix


class ThinkSplitter:
    """Routes text to reasoning until the closing tag, then to content.

    The opening tag is optional (templates such as DeepSeek-R1's and Qwen3's open it in the prompt) and
    dropped when the output starts with it. An output that never closes its thinking is all reasoning.
    """

    def __init__(self, open_tag: str, close_tag: str) -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.thinking = True
        self._held = ""
        self._started = False
        self._content_started = False

    def feed(self, text: str) -> tuple[str, str]:
        """(reasoning, content) released by `text`."""
        if not self.thinking:
            return "", self._content(text)
        buffer = self._held + text
        if not self._started:
            stripped = buffer.lstrip()
            if len(stripped) < len(self.open_tag) and self.open_tag.startswith(stripped):
                self._held = buffer
                return "", ""
            if stripped.startswith(self.open_tag):
                buffer = stripped[len(self.open_tag) :]
            self._started = True
        end = buffer.find(self.close_tag)
        if end >= 0:
            self.thinking, self._held = False, ""
            return buffer[:end], self._content(buffer[end + len(self.close_tag) :])
        keep = partial_suffix(buffer, (self.close_tag,))
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], ""

    def flush(self) -> str:
        """Held text at the end of the output: still thinking, so it is reasoning."""
        held, self._held = self._held, ""
        return held if self.thinking else ""

    def _content(self, text: str) -> str:
        if not self._content_started:
            text = text.lstrip()  # the blank lines between the thinking and the answer
            self._content_started = bool(text)
        return text
