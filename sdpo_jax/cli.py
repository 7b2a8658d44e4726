"""What the command lines (`sdpo_jax.main`, `sdpo_jax.ttt`, `sdpo_jax.tools.*`) share.

* `PROJECT_ERRORS`: what counts as a project error (bad input: a config field, a data row, a checkpoint, the
  environment, the tokenizer) and its exit code; `exit_code(body)` turns one into a single `error:` line on
  stderr instead of a traceback.
* `define_config_flags` / `flags_parser`: the `--config` flag, `--print_config`, and the parsing of
  `--config.a.b=v` overrides: a typo gets the schema's "did you mean", a bad value one line, both exit code 2;
  keys under `env.options` may be new; `--help` lists the config groups.
* `validated_config`: validate before jax starts, start `jax.distributed` on multi-process launches, then
  validate what depends on the device count.

Imports nothing heavy at module level, so an entry point can call `sdpo_jax.skip_tpu_backend_on_a_cpu_host()`
before JAX is imported."""

from __future__ import annotations

import ast
import os
import re
import sys
from typing import Any, Callable

from absl import flags
from ml_collections import config_flags

# Project errors, "module:class" -> exit code. Resolved among the modules already imported (a module that is
# not imported raised nothing), so this list imports neither jax nor a tool's flags.
PROJECT_ERRORS = {
    "sdpo_jax.config:ConfigError": 2,
    "sdpo_jax.data:DataError": 2,
    "sdpo_jax.models.config:ModelConfigError": 2,
    "sdpo_jax.models.hf:CheckpointError": 2,
    "sdpo_jax.sharding:MeshError": 2,
    "sdpo_jax.tokenizer:TokenizerError": 2,
    "sdpo_jax.hub:SourceError": 2,
    "sdpo_jax.warm_start:StaleWarmStart": 2,
    "sdpo_jax.warm_start:WarmStartError": 4,  # the warm start's step cap hit: the run did not learn
    "sdpo_jax.envs.sandbox.host:SandboxUnavailable": 2,
    "sdpo_jax.tools.aot:TopologyError": 2,
    "sdpo_jax.tools.prepare_lcb:PrepareError": 2,
}
EXIT_BAD_INPUT = 2
_ENV_OPTIONS = "--config.env.options."
_HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")


def project_errors() -> dict[type[BaseException], int]:
    """The classes of `PROJECT_ERRORS` whose modules are imported, with their exit codes."""
    found = {}
    for spec, code in PROJECT_ERRORS.items():
        module, name = spec.split(":")
        if module in sys.modules:
            found[getattr(sys.modules[module], name)] = code
    return found


def print_error(message: Any) -> None:
    """`error: <message>` as one line on stderr (process 0 only on a multi-process launch; no backend starts)."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized() and jax.process_index() != 0:
        return
    print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)


def exit_code(body: Callable[[], int | None]) -> int:
    """`body()`'s exit code (None: 0); a project error instead prints one `error:` line and gives its code."""
    try:
        return body() or 0
    except Exception as err:
        code = next((code for cls, code in project_errors().items() if isinstance(err, cls)), None)
        if code is None:
            raise
        print_error(err)
        return code


# --------------------------------------------------------------------------------------- flags


def define_config_flags(help_string: str) -> flags.FlagHolder:
    """The `--config` file flag (with `--config.a.b=v` overrides) and `--print_config`. Its default is None so
    that nothing is parsed at import: `flags_parser` passes the entry point's default file when --config is
    absent."""
    flags.DEFINE_bool("print_config", False, "Print the resolved config (defaults, overrides, what validation "
                      "resolves) as JSON and exit without building anything.")
    return config_flags.DEFINE_config_file("config", None, help_string, lock_config=True)


def _literal(text: str) -> Any:
    """A command-line value as ml_collections reads one: a Python literal, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _config_arg(argv: list[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(("--config=", "-config="))), None)


def _override_paths(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0].split(".", 1)[1] for a in argv if re.match(r"-{1,2}(no)?config\.", a)]


def _culprit(argv: list[str], err: BaseException) -> str:
    """The message for an override ml_collections refused: the first override path the config lacks, with
    the schema's "did you mean" (the config file is loaded again to find it), else the refusal itself."""
    from sdpo_jax import config as config_lib

    try:
        cfg = flags.FLAGS["config"].parser.parse(_config_arg(argv))
        for path in _override_paths(argv):
            config_lib.check_field_path(cfg, path)
    except config_lib.ConfigError as bad:
        return f"--config.{path}: {bad}"
    except Exception:  # the file itself does not load: ml_collections' message says why
        pass
    return f"{type(err).__name__}: {err}"


def _value_hint(message: str) -> str:
    """What a field refused a value takes: its type and the value the config holds."""
    field = re.search(r"--config\.([\w.]+)=", message)
    node = flags.FLAGS["config"].value
    try:
        for key in field.group(1).split("."):
            node = node[key]
    except (AttributeError, KeyError, TypeError):  # not a config field's value
        return ""
    name = field.group(1)
    return f" ({name} is of type {type(node).__name__}, e.g. its value here: --config.{name}={node!r})"


def _print_help(doc: str) -> None:
    from sdpo_jax import config as config_lib

    print(doc.strip() + "\n\nflags:")
    for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
        for flag in module_flags if not module.startswith("absl") else ():  # absl's own: --helpfull
            print(f"  --{flag.name}: {flag.help}")
    groups = {**config_lib.base_config(), "warm_start": config_lib.warm_start_defaults(),
              "ttt": config_lib.ttt_defaults()}
    print("\nconfig fields (--config.GROUP.FIELD=VALUE; warm_start and ttt are groups only some configs add; "
          "new keys only under env.options):")
    print("  top level: " + ", ".join(k for k, v in groups.items() if not hasattr(v, "keys")))
    for name, group in groups.items():
        if hasattr(group, "keys"):
            print(f"  {name}: " + (", ".join(group.keys()) or "(free-form keywords, e.g. "
                                    f"--config.{name}.feedback=True)"))
    print("\nAdd --print_config to print every field's resolved value (JSON) and exit; --helpfull lists absl's "
          "flags too.")


def flags_parser(default_config: str | None, doc: str) -> Callable[[list[str]], list[str]]:
    """absl's `app.run(..., flags_parser=...)` for a command line with a `--config` flag: `--help` lists the
    config groups; the default file when --config is absent; `--config.env.options.KEY=VALUE` may name a new
    key; a flag error (unknown override, bad value, unknown flag, stray argument) is one `error:` line and
    exit code 2."""

    def parse(argv: list[str]) -> list[str]:
        if any(a in _HELP_FLAGS for a in argv[1:]):
            _print_help(doc)
            sys.exit(0)
        if _config_arg(argv) is None and default_config is not None:
            if not os.path.exists(default_config):
                print_error(f"no --config given and the default {default_config} does not exist (configs/ ships "
                            f"with the repository, not the wheel): pass --config=PATH/TO/configs/"
                            f"{os.path.basename(default_config)}")
                sys.exit(EXIT_BAD_INPUT)
            argv = [argv[0], f"--config={default_config}", *argv[1:]]
        config_file = (_config_arg(argv) or "").split(":", 1)[0]
        if config_file and not os.path.isfile(config_file):
            print_error(f"--config={config_file}: no such file; pass a config file such as configs/demo.py")
            sys.exit(EXIT_BAD_INPUT)
        options = [a for a in argv if a.startswith(_ENV_OPTIONS)]
        argv = [a for a in argv if not a.startswith(_ENV_OPTIONS)]
        sys.argv = argv  # ml_collections finds the overrides in sys.argv
        try:
            rest = flags.FLAGS(argv)
        except flags.Error as err:
            print_error(f"{err}{_value_hint(str(err))}")
            sys.exit(EXIT_BAD_INPUT)
        except (AttributeError, KeyError, ValueError) as err:
            print_error(_culprit(argv, err))
            sys.exit(EXIT_BAD_INPUT)
        if len(rest) > 1:
            print_error(f"unexpected arguments {rest[1:]}: every setting is a flag, e.g. --config.train.steps=10")
            sys.exit(EXIT_BAD_INPUT)
        _set_env_options(options)
        return rest

    return parse


def _set_env_options(options: list[str]) -> None:
    """Apply `--config.env.options.KEY=VALUE` (a new key is fine: env.options holds env.score's keywords)."""
    config = flags.FLAGS["config"].value
    for arg in options:
        key, sep, text = arg[len(_ENV_OPTIONS):].partition("=")
        if not sep or not key.isidentifier():
            print_error(f"{arg}: write --config.env.options.KEYWORD=VALUE (KEYWORD a Python name env.score takes, "
                        "VALUE a Python literal or a string)")
            sys.exit(EXIT_BAD_INPUT)
        with config.env.options.unlocked():
            config.env.options[key] = _literal(text)


# --------------------------------------------------------------------------------------- validation


def validated_config(config_flag, validate: Callable[..., None]) -> Any:
    """The config of `--config` checked by `validate(cfg)` and, after `jax.distributed` starts, by
    `validate(cfg, num_devices=...)` (raises ConfigError); None after `--print_config` printed it."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax / grain INFO lines drown the progress
    cfg = config_flag.value
    validate(cfg)  # schema, types, ranges, paths: before jax starts
    if flags.FLAGS["print_config"].value:
        print(cfg.to_json_best_effort(indent=2))
        return None

    import jax

    from sdpo_jax import sharding

    sharding.maybe_initialize_distributed()  # a multi-host slice: every host runs this same command
    validate(cfg, num_devices=jax.device_count())
    return cfg
