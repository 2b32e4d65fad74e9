"""The ``nmtq`` command line: one subcommand per job, each a thin wrapper over a library function.

Example:
    >>> build_parser().parse_args(["export", "runs/student", "runs/export", "--huffman"]).huffman
    True
"""

from __future__ import annotations

import argparse
import copy
import errno
import json
import shlex
import sys
from collections.abc import Sequence

from . import files
from .errors import NmtqError
from .version import __version__

SPELLINGS = ("Every multi-word flag takes dashes or underscores alike, in every command: --num-beams and --num_beams "
             "are the same flag.")
"""The one place the two spellings are documented: the epilog of every command's --help."""


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help, listing each flag once (its dashed spelling); :data:`SPELLINGS` says the rest."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        aliases = getattr(action, "underscore_aliases", ())
        if aliases:
            action = copy.copy(action)
            action.option_strings = [name for name in action.option_strings if name not in aliases]
        return super()._format_action_invocation(action)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (``nmtq COMMAND: error: ...``, exit 2) without the usage;
    ``--help`` still shows it. Each ``--multi-word`` flag is also ``--multi_word``, as the recipe commands'
    ``HfArgumentParser`` takes both."""

    def __init__(self, *args, **kwargs) -> None:
        # no abbreviations, as the recipe commands: --num would match both spellings of --num-beams
        super().__init__(*args, **{"formatter_class": _HelpFormatter, "epilog": SPELLINGS, "allow_abbrev": False,
                                   **kwargs})

    def add_argument(self, *names: str, **kwargs) -> argparse.Action:
        aliases = ["--" + name[2:].replace("-", "_") for name in names if name.startswith("--") and "-" in name[2:]]
        action = super().add_argument(*names, *aliases, **kwargs)
        action.underscore_aliases = tuple(aliases)
        return action

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES}
"""Failed writes that are the machine's state, not nmtq's bug: no space, quota, read-only, permission."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _add_recipe_command(subparsers: argparse._SubParsersAction, name: str, help: str, func) -> None:
    """A command that takes ``--config RECIPE.yaml`` and ``--field value`` pairs (``--help`` lists the fields)."""
    parser = subparsers.add_parser(
        name, add_help=False, help=f"{help} (nmtq {name} --help for the fields).",
        description=f"nmtq {name} --config RECIPE.yaml [--field value ...]: fields of the recipe are overridden by "
                    "the command line.",
    )
    parser.set_defaults(func=func, takes_fields=True)  # --config and --field value pairs pass through


def _run_recipe(args: argparse.Namespace, classes: tuple[type, ...], run, output_dir: str) -> int:
    """``--help`` lists every field of ``classes``; otherwise parse the recipe and fields and call ``run``."""
    if "--help" in args.fields or "-h" in args.fields:
        from transformers import HfArgumentParser

        HfArgumentParser(classes, prog=f"nmtq {args.command}", epilog=SPELLINGS).print_help()
        return 0
    from .args import parse_train_args

    run(*parse_train_args(args.fields, classes, output_dir=output_dir, command=args.command))
    return 0


def _run_training_command(args: argparse.Namespace) -> int:
    """``nmtq train``, ``nmtq distill`` and ``nmtq distill-images``: :func:`nmtq.commands.run_recipe`."""
    from .commands import recipe_command

    command = recipe_command(args.command)
    return _run_recipe(args, command.classes, command.run, command.output_dir)


def _run_table(args: argparse.Namespace) -> int:
    from .table import TableArguments, make_table

    return _run_recipe(args, (TableArguments,), make_table, "runs/table")


def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Translate a data split with a model directory; print BLEU, chrF and perplexity.",
        description=f"Scores are sacreBLEU's (signature printed); {files.HYPOTHESES} and {files.METRICS} go to "
                    "--output-dir.",
    )
    parser.add_argument("model_dir", help="A directory with a seq2seq model and its tokenizer (save_pretrained).")
    parser.add_argument("--data", required=True, help="Data spec, e.g. bible, tsv:test.tsv, sacrebleu:wmt14.")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--source-lang", default="de")
    parser.add_argument("--target-lang", default="en")
    parser.add_argument("--source-lang-code", default=None,
                        help="A multilingual tokenizer's source code (NLLB deu_Latn, mBART-50 de_DE, M2M100 de; "
                             "default: the code of --source-lang).")
    parser.add_argument("--target-lang-code", default=None,
                        help="Its target code, forced as the first generated token (default: the code of "
                             "--target-lang).")
    parser.add_argument("--source-prefix", default=None,
                        help="T5's task prefix before every source (default: the model's task_specific_params).")
    parser.add_argument("--num-beams", type=_positive_int, default=4)
    parser.add_argument("--max-new-tokens", type=_positive_int, default=128)
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--max-length", type=_positive_int, default=None,
                        help="Score only pairs with at most this many pieces a side.")
    parser.add_argument("--output-dir", default=None, help=f"Where {files.HYPOTHESES} and {files.METRICS} go "
                                                          f"(default: MODEL_DIR/{files.EVALUATION_PREFIX}SPLIT).")
    parser.add_argument("--engine", default="transformers", choices=("transformers", "ctranslate2"),
                        help="Decode with transformers, or with CTranslate2 (a folder of `nmtq export --ctranslate2`, "
                             "or a model folder converted on the fly; needs nmtq[ct2]).")
    parser.add_argument("--compute-type", default="int8", help="CTranslate2's compute type (int8, float32, ...).")
    parser.add_argument("--inter-threads", type=_positive_int, default=1,
                        help="CTranslate2: batches decoded at once, the threads shared among them (2 on a 2-core CPU "
                             "decodes a small model faster than 1).")
    parser.add_argument("--use-vmap", action="store_true",
                        help="CTranslate2: score only the lexical shortlist of each batch (a folder exported with "
                             "--shortlist).")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_directory, format_metrics

    metrics = evaluate_directory(
        args.model_dir, args.data, split=args.split, source_lang=args.source_lang, target_lang=args.target_lang,
        max_length=args.max_length, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, output_dir=args.output_dir or files.evaluation_dir(args.model_dir, args.split),
        engine=args.engine, compute_type=args.compute_type, inter_threads=args.inter_threads,
        source_lang_code=args.source_lang_code, target_lang_code=args.target_lang_code,
        source_prefix=args.source_prefix, use_vmap=args.use_vmap,
    )
    print(format_metrics(metrics))
    return 0


def _add_export(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help=f"Write a quantized student as a Hub-ready folder: packed codes in one {files.WEIGHTS}, "
                       f"{files.CONFIG} with their quantization_config, tokenizer and model card.",
        description="Load it back with `import nmtq` and from_pretrained(OUT_DIR); the file's bytes are printed "
                    "beside the size accounting. Nothing is written unless every input checks out; an earlier "
                    "export in OUT_DIR is replaced.",
    )
    parser.add_argument("model_dir", help="The output_dir of `nmtq distill` with a quantized method (qd, dq, ptq).")
    parser.add_argument("out_dir", help="The folder to write (built beside it, then renamed into place).")
    parser.add_argument("--huffman", action="store_true",
                        help="Store the codes Huffman-coded (smaller when few levels dominate) instead of packed.")
    parser.add_argument("--dequantize", action="store_true",
                        help=f"Also write OUT_DIR/{files.DEQUANTIZED_DIR}/, a plain transformers checkpoint of the "
                             "decoded weights (Marian/FSMT/BART load it without nmtq; the LSTM student needs "
                             "`import nmtq.lstm`).")
    parser.add_argument("--teacher", default=None, help="The teacher's name for the model card.")
    parser.add_argument("--dataset", default=None, help="The test set's name for the model card.")
    parser.add_argument("--ctranslate2", nargs="?", const="int8", default=None, metavar="QUANTIZATION",
                        help="Instead, write a CTranslate2 model (Marian/BART students; int8 unless another "
                             "quantization is named) for `nmtq evaluate --engine ctranslate2`; needs nmtq[ct2]. "
                             "--huffman, --dequantize, --teacher and --dataset are refused with it.")
    parser.add_argument("--int8-bits", type=int, default=None, metavar="BITS",
                        help="With --ctranslate2 and an int8 type: bits of the weight codes, 2-8 (default: the "
                             "student's own if distilled with --bucket_size row --scaling absmax, else the widest "
                             "that --target-cpu multiplies exactly).")
    parser.add_argument("--target-cpu", default="here", metavar="{here,vnni,avx2}",
                        help="With --ctranslate2 and an int8 type: the kind of CPU the model will run on, which "
                             "sets the widest int8 codes: vnni (Intel's CPUs, where CTranslate2 uses MKL, or any "
                             "with AVX-512 VNNI or AVX-VNNI) multiplies 8-bit codes exactly; avx2 (other x86 CPUs, "
                             "without VNNI) sums pairs of products in 16 bits, which 8-bit codes can saturate, so "
                             "7 bits; here (default): this machine's kind.")
    parser.add_argument("--shortlist", default=None, metavar="DATA",
                        help="With --ctranslate2: save a lexical shortlist built from the training split of DATA "
                             "(a data spec, as --data takes) as CTranslate2's vocabulary map, for `nmtq evaluate "
                             "--engine ctranslate2 --use-vmap`: the most frequent target tokens, and for each "
                             "source token the target tokens that co-occur with it most (nmtq.shortlist).")
    parser.add_argument("--shortlist-size", default=None, metavar="PER_SOURCE,COMMON",
                        help="With --shortlist: target tokens per source token, and frequent ones always scored "
                             "(default 50,100, Bergamot's).")
    parser.add_argument("--force", action="store_true", help="With --ctranslate2: replace an existing OUT_DIR.")
    parser.set_defaults(func=_run_export)


def _check_ctranslate2_flags(args: argparse.Namespace) -> None:
    """Refuse, before anything is written, the flags of nmtq's own export that a CTranslate2 model has no use for."""
    given = {"--huffman": args.huffman, "--dequantize": args.dequantize, "--teacher": args.teacher is not None,
             "--dataset": args.dataset is not None}
    unused = [flag for flag, present in given.items() if present]
    if unused:
        one = len(unused) == 1
        raise NmtqError(f"{', '.join(unused)} {'is' if one else 'are'} for nmtq's own export (packed codes and a model "
                        f"card), which --ctranslate2 does not write: leave {'it' if one else 'them'} out, or drop "
                        "--ctranslate2")


def _shortlist(args: argparse.Namespace):
    """The shortlist ``nmtq export --ctranslate2 --shortlist DATA`` asks for (None without it), built with the
    model's tokenizer from DATA's training split; bad sizes or data fail before anything is written."""
    if args.shortlist is None:
        if args.shortlist_size is not None:
            raise NmtqError("--shortlist-size is for --shortlist DATA: add it, or leave --shortlist-size out")
        return None
    sizes = {}  # build_shortlist's own sizes unless --shortlist-size gives them
    if args.shortlist_size is not None:
        try:
            sizes["per_source"], sizes["common"] = (int(n) for n in args.shortlist_size.split(","))
        except ValueError:
            raise NmtqError(f"--shortlist-size {args.shortlist_size}: pass two numbers, PER_SOURCE,COMMON (e.g. "
                            "50,100)") from None
    from .data import load_corpus
    from .data_spec import check_data_spec
    from .shortlist import build_shortlist
    from .tokenizer import load_tokenizer

    check_data_spec(args.shortlist)
    pairs, _ = load_corpus(args.shortlist, "train")
    return build_shortlist(load_tokenizer(args.model_dir), pairs["source"], pairs["target"], **sizes)


def _run_export(args: argparse.Namespace) -> int:
    if args.ctranslate2:
        _check_ctranslate2_flags(args)
        from .ct2 import convert_to_ctranslate2
        from .runs import show_messages

        show_messages()  # the warnings about int8 codes the target CPU can saturate
        out = convert_to_ctranslate2(args.model_dir, args.out_dir, quantization=args.ctranslate2, force=args.force,
                                     int8_bits=args.int8_bits, target_cpu=args.target_cpu,
                                     shortlist=_shortlist(args))
        info = json.loads((out / files.CT2_INFO).read_text(encoding="utf-8"))
        codes = f", {info['int8_bits']}-bit codes for {info['int8_target_cpu']} CPUs" if info.get("int8_bits") else ""
        print(f"CTranslate2 model ({args.ctranslate2}{codes}) of {args.model_dir} written to {out}")
        return 0
    for flag, value, default in (("--int8-bits", args.int8_bits, None), ("--target-cpu", args.target_cpu, "here"),
                                 ("--shortlist", args.shortlist, None),
                                 ("--shortlist-size", args.shortlist_size, None)):
        if value != default:
            raise NmtqError(f"{flag} {value} is for CTranslate2 models: add --ctranslate2, or leave it out")
    from .export import export_model

    report = export_model(args.model_dir, args.out_dir, huffman=args.huffman, dequantize=args.dequantize,
                          teacher=args.teacher, dataset=args.dataset)
    print(f"exported {args.model_dir} to {report.out_dir}\n{report.size}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _add_push(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push", help="Upload an exported folder to a model repository on the Hugging Face Hub, in one commit.",
        description="The repository is created if needed. The token comes from HF_TOKEN or `hf auth login` and is "
                    "never printed. Nothing is created unless the folder, the id, the network and the token check "
                    "out; pickle files are refused.",
    )
    parser.add_argument("folder", help="The OUT_DIR of `nmtq export` (or a save_pretrained folder with safetensors).")
    parser.add_argument("--repo-id", required=True, help="NAME or NAMESPACE/NAME of the model repository.")
    parser.add_argument("--private", action="store_true",
                        help="Make the repository private when it is created (an existing one keeps its visibility).")
    parser.add_argument("--dry-run", action="store_true", help="List the files and their bytes; upload nothing.")
    parser.add_argument("--commit-message", default=None, help="The commit's message (default: Upload FOLDER ...).")
    parser.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> int:
    from .push import push_folder

    report = push_folder(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run,
                         commit_message=args.commit_message)
    for note in report.notes:
        print(f"note: {note}")
    if args.dry_run:
        print(f"{report.listing()}\ndry run: these files would go to {args.repo_id}; nothing was uploaded")
    else:
        print(f"pushed {len(report.files)} files ({report.total_bytes:,} bytes) to {report.repo_url} in one commit: "
              f"{report.commit_url}")
    return 0


def _add_env(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "env", help="Print the versions, CPU (AVX2, AVX-512, VNNI), threads and GPU that numbers are measured with.",
        description=f"The block that every {files.METRICS}, {files.TABLE_JSON} and benchmark JSON carries under "
                    "\"environment\"; paste it into a bug report or beside a result.",
    )
    parser.add_argument("--json", action="store_true", help="Print it as JSON instead of '- key: value' lines.")
    parser.set_defaults(func=_run_env)


def _run_env(args: argparse.Namespace) -> int:
    from .env import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per command."""
    parser = _OneLineParser(
        prog="nmtq", description="Compress translation models by distillation and quantization.")
    parser.add_argument("--version", action="version", version=f"nmtq {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_OneLineParser)
    _add_recipe_command(subparsers, "train", "Train a translation teacher from a recipe", _run_training_command)
    _add_recipe_command(subparsers, "distill", "Distil a teacher into a shallower, quantized student",
                        _run_training_command)
    _add_recipe_command(subparsers, "distill-images", "Train, distil and quantize an image classifier (CIFAR "
                                                      "ResNets; the same methods)", _run_training_command)
    _add_recipe_command(subparsers, "table", "Train or reuse a teacher, distil students with every method and "
                                             "print one table of BLEU (or accuracy) against bytes", _run_table)
    _add_evaluate(subparsers)
    _add_export(subparsers)
    _add_push(subparsers)
    _add_env(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nmtq`` console script and of ``python -m nmtq``; returns the exit status."""
    parser = build_parser()
    args, fields = parser.parse_known_args(argv)
    if getattr(args, "takes_fields", False):
        args.fields = fields
    elif fields:
        print(f"nmtq {args.command}: error: unrecognized arguments: {' '.join(fields)} (see nmtq {args.command} "
              "--help)", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except NmtqError as err:  # say what to fix, without a stack trace; anything else is a bug and keeps its trace
        print(f"nmtq {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = _resume_command(args)
        print(f"nmtq {args.command}: interrupted" + (f"; the checkpoints written so far are kept; go on with: "
                                                      f"{resume}" if resume else ""), file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        resume = _resume_command(args)
        where = f" writing {err.filename}" if err.filename else ""
        print(f"nmtq {args.command}: error: {err.strerror}{where}: free space or choose a writable folder, then run "
              "again" + (f" (the checkpoints are kept: {resume})" if resume else ""), file=sys.stderr)
        return 2


def _resume_command(args: argparse.Namespace) -> str | None:
    """The same training command resuming from its newest complete checkpoint (None for other commands)."""
    if args.command not in ("train", "distill", "distill-images"):
        return None
    fields = list(args.fields)
    for spelling in ("--resume_from_checkpoint", "--resume-from-checkpoint"):
        while spelling in fields:
            i = fields.index(spelling)
            del fields[i:i + 2]
    return shlex.join(["nmtq", args.command, *fields, "--resume_from_checkpoint", "last"])
