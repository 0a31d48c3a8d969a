"""A tiny, randomly initialised model directory for tests of every package.

``make_tiny_model(path)`` builds a 2-layer, 32-wide BERT-like encoder with a small WordPiece
vocabulary (built here, offline, from a fixed word list plus single characters so any text
tokenises) and exports it through :func:`models.export.export_model_dir` -- the same code path
as a trained model -- so the runtime under test is the shipping runtime. It takes seconds; the
first build in a process is cached and later calls copy it.

Its predictions are arbitrary (random weights) but deterministic (fixed seed).
"""

from __future__ import annotations

import shutil
import string
import tempfile
import threading
from pathlib import Path

from finsent.models.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.models.modeldir import ModelInfo

TINY_MAX_LENGTH = 64
_WORD_LIST = (
    "the a an of to in on for and or but is are was were be has have had it its this that with as at by from "
    "shares stock stocks market markets price prices profit loss revenue earnings quarter year rate rates bank "
    "fed oil gold dollar euro bond bonds yield yields dividend ipo merger deal buy sell up down rise rises fall "
    "falls jump jumps drop drops beat miss cut cuts raise raises record high low strong weak growth sales company "
    "inc ceo analyst analysts upgrade downgrade target percent million billion new not no more less after before"
)
_WORDS = _WORD_LIST.split()
_lock = threading.Lock()
_built: Path | None = None


def tiny_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return specials + _WORDS + chars + ["##" + c for c in string.ascii_lowercase + string.digits]


def tiny_tokenizer():  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tiny_vocab()))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    return tok


def _tiny_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=tiny_tokenizer().get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=TINY_MAX_LENGTH + 2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _build(out: Path) -> Path:
    import torch

    from finsent.models.export import export_model_dir
    from finsent.models.modeling import MultiTaskClassifier, build_encoder

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = _tiny_config()
    model = MultiTaskClassifier(build_encoder(config), len(SENTIMENT_LABELS), len(TOPIC_LABELS), dropout=0.0)
    # random init gives near-uniform probabilities; a larger head scale makes outputs depend visibly on input
    with torch.no_grad():
        model.sentiment_head.weight.mul_(20)
        model.topic_head.weight.mul_(20)
    info = ModelInfo(
        "tiny-random-auto",
        SENTIMENT_LABELS,
        TOPIC_LABELS,
        TINY_MAX_LENGTH,
        {"base_model": "random (tests only)", "num_heads": 2, "hidden_size": 32},
    )
    card = "# tiny random model\n\nRandomly initialised; for tests only. Predictions are meaningless.\n"
    export_model_dir(model, tokenizer, out, info, card=card)
    return out


def make_tiny_model(path: str | Path) -> Path:
    """Build (or copy the cached build of) the tiny model into ``path``; returns ``path``."""
    global _built
    path = Path(path)
    with _lock:
        if _built is None or not (_built / "model.onnx").is_file():
            _built = _build(Path(tempfile.mkdtemp(prefix="finsent-tiny-model-")))
        path.mkdir(parents=True, exist_ok=True)
        for item in _built.iterdir():
            if item.is_file():
                shutil.copyfile(item, path / item.name)
    return path


def make_tiny_base(path: str | Path) -> Path:
    """A tiny random *pretrained-style* encoder directory (config + weights + tokenizer.json).

    ``finsent train --base-model DIR`` accepts it in place of MiniLM, so the whole
    train -> export -> score pipeline can run in a test in seconds.
    """
    import torch

    from finsent.models.modeling import build_encoder

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    build_encoder(_tiny_config(), "sdpa").save_pretrained(str(path))
    tiny_tokenizer().save(str(path / "tokenizer.json"))
    return path
