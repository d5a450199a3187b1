"""The OpenAI-compatible HTTP client: one endpoint's config, where it comes from, and the one request.

A key belongs to the URL it was entered with, and redirects are refused, so a key is never sent to another
server. `endpoint_chat(cfg)` serves the chat protocol (backend.chat) from such a server, for labels and
hypotheses alike."""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from backend.chat import ChatFn, ChatReply, LLMError, Messages  # noqa: F401 (LLMError, ChatFn: re-exported)


def same_endpoint(a: str | None, b: str | None) -> bool:
    """Whether two base URLs name the same endpoint (scheme, host, port and path; case and a trailing / ignored)."""
    if not a or not b:
        return False
    pa, pb = urllib.parse.urlsplit(a.strip().rstrip("/")), urllib.parse.urlsplit(b.strip().rstrip("/"))
    return (pa.scheme.lower(), pa.netloc.lower(), pa.path) == (pb.scheme.lower(), pb.netloc.lower(), pb.path)


@dataclass(frozen=True)
class LLMConfig:
    """An OpenAI-compatible chat endpoint.

    A key belongs to the URL it was entered with (`key_url`, the base URL by default): a config whose
    base URL differs from its key's URL (e.g. `dataclasses.replace(cfg, base_url=...)`) carries no key,
    so a key can never be sent to another server. The key is left out of repr()."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 300
    key_url: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        url = str(self.base_url or "").strip()
        if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).netloc:
            raise LLMError(f"The LLM base URL must start with http:// or https:// and name a server, not {url!r}.")
        if not str(self.model or "").strip():
            raise LLMError("Name the LLM model to use.")
        object.__setattr__(self, "base_url", url)
        object.__setattr__(self, "model", str(self.model).strip())
        key = (self.api_key or "").strip() or None
        if key is not None and self.key_url is None:
            object.__setattr__(self, "key_url", url)  # a key given with this URL belongs to it
        if key is not None and not same_endpoint(self.key_url, url):
            key = None  # a key entered for another server never goes here
        object.__setattr__(self, "api_key", key)
        if key is None:
            object.__setattr__(self, "key_url", None)

    @property
    def has_key(self) -> bool:
        return self.api_key is not None

    def headers(self) -> dict[str, str]:
        """Request headers: the key only when it belongs to this base URL."""
        out = {"Content-Type": "application/json"}
        if self.api_key and same_endpoint(self.key_url, self.base_url):
            out["Authorization"] = f"Bearer {self.api_key}"
        return out

    def chat_fn(self, max_tokens: int | None = None) -> ChatFn:
        """A ChatFn for this server (`endpoint_chat`), optionally with another reply-length limit."""
        return endpoint_chat(self, max_tokens)

    @classmethod
    def from_env(cls) -> "LLMConfig | None":
        """From SAEDASH_LLM_BASE_URL, SAEDASH_LLM_MODEL, SAEDASH_LLM_API_KEY; None when not configured."""
        url, model = os.environ.get("SAEDASH_LLM_BASE_URL"), os.environ.get("SAEDASH_LLM_MODEL")
        if not url or not model:
            return None
        return cls(url, model, os.environ.get("SAEDASH_LLM_API_KEY") or None)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "LLMConfig":
        """From a TOML or JSON file with base_url, model and optionally api_key, timeout_s, max_tokens."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise LLMError(f"The LLM config file {path} cannot be read: {exc}") from None
        data = data.get("llm", data) if isinstance(data, dict) else {}
        known = {"base_url", "model", "api_key", "timeout_s", "temperature", "max_tokens"}
        if not isinstance(data, dict) or not {"base_url", "model"} <= set(data) or set(data) - known:
            raise LLMError(f"The LLM config file {path} needs base_url and model (and may set {', '.join(sorted(known - {'base_url', 'model'}))}).")
        return cls(**data)


def operator_llm_config() -> LLMConfig | None:
    """The endpoint the person running the server configured: the SAEDASH_LLM_* environment variables, else
    the TOML/JSON file named by SAEDASH_LLM_CONFIG; None when neither is set. Read fresh on every call."""
    cfg = LLMConfig.from_env()
    if cfg is None and os.environ.get("SAEDASH_LLM_CONFIG"):
        path = Path(os.environ["SAEDASH_LLM_CONFIG"]).expanduser()
        if not path.is_file():
            raise LLMError(f"SAEDASH_LLM_CONFIG names {path}, which is not a file.")
        cfg = LLMConfig.from_file(path)
    return cfg


def session_llm_config(operator: LLMConfig | None, base_url: str = "", model: str = "",
                       api_key: str = "") -> LLMConfig | None:
    """The endpoint one dashboard session uses: the operator's, with what the session entered.

    Empty fields fall back to the operator's URL and model. A key typed in the session goes only to the URL
    typed with it; the operator's key only to the operator's URL, so a session that points elsewhere
    without typing a key sends none. None when no URL or model is known."""
    url = (base_url or "").strip() or (operator.base_url if operator else "")
    name = (model or "").strip() or (operator.model if operator else "")
    if not url or not name:
        return None
    if (api_key or "").strip():
        return LLMConfig(url, name, api_key.strip(), **_tuning(operator))
    if operator is not None:  # the operator's key keeps its own URL; __post_init__ drops it elsewhere
        return replace(operator, base_url=url, model=name)
    return LLMConfig(url, name)


def _tuning(cfg: LLMConfig | None) -> dict[str, Any]:
    return {} if cfg is None else {"timeout_s": cfg.timeout_s, "temperature": cfg.temperature, "max_tokens": cfg.max_tokens}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would forward the Authorization header to wherever a server points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def chat_completion(cfg: LLMConfig, messages: list[dict[str, str]]) -> tuple[str, dict]:
    """One chat completion: (reply text, the answer's `usage` dict, empty when it has none), or LLMError.

    The one HTTP call to a server: the key goes only to the URL it was entered with (cfg.headers), and
    redirects are refused, so a key never follows one."""
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": cfg.model, "messages": messages, "temperature": cfg.temperature,
                       "max_tokens": cfg.max_tokens}).encode()
    req = urllib.request.Request(url, data=body, headers=cfg.headers(), method="POST")
    try:
        with _OPENER.open(req, timeout=cfg.timeout_s) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise LLMError(f"LLM endpoint {url} answered HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise LLMError(f"Cannot reach the LLM endpoint {url}: {getattr(exc, 'reason', exc)}") from exc
    except json.JSONDecodeError as exc:
        raise LLMError(f"LLM endpoint {url} did not answer JSON: {exc}") from exc
    try:
        text = str(payload["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"Unexpected answer from {url}: {str(payload)[:300]}") from exc
    usage = payload.get("usage") if isinstance(payload, dict) else None
    return text, usage if isinstance(usage, dict) else {}


def chat(cfg: LLMConfig, messages: list[dict[str, str]]) -> str:
    """One chat completion; returns the reply text or raises LLMError (redirects are refused)."""
    return chat_completion(cfg, messages)[0]


def endpoint_chat(cfg: LLMConfig, max_tokens: int | None = None) -> ChatFn:
    """A ChatFn for an OpenAI-compatible server (an ``LLMConfig``) that keeps ``usage``.

    The request, the key's handling and the errors are ``chat_completion``'s."""
    cfg = dataclasses.replace(cfg, max_tokens=max_tokens) if max_tokens else cfg

    def complete(messages: Messages) -> ChatReply:
        text, usage = chat_completion(cfg, list(messages))

        def count(key: str) -> int | None:
            value = usage.get(key)
            return int(value) if isinstance(value, (int, float)) else None

        return ChatReply(text, count("prompt_tokens"), count("completion_tokens"))

    return complete
