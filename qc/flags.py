"""Command-line flags generated from a pydantic settings model: each field becomes `--field-name` with its
description and default as help, so a default is written once, in the model."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path

from pydantic import BaseModel

__all__ = ["add_model_flags", "given"]


def _unwrap(annotation):
    """`X | None` -> X."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _help(field) -> str:
    text = field.description or ""
    if field.default is not None and field.default_factory is None and not field.is_required():
        shown = field.default if not isinstance(field.default, bool) else str(field.default).lower()
        text += f" (default {shown})"
    return text.replace("%", "%%")


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], skip: tuple[str, ...] = (),
                    positional: tuple[str, ...] = ()) -> None:
    """One flag per field of `model` (fields in `positional` become positional arguments). Flags default to
    None, so only what is given overrides a config file or the model's own default (see `given`)."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind = _unwrap(field.annotation)
        kwargs: dict = {"help": _help(field), "dest": name}
        if typing.get_origin(kind) is list:
            kwargs |= {"nargs": "+", "metavar": name.upper()}
            kind = typing.get_args(kind)[0]
        if typing.get_origin(kind) is typing.Literal:
            kwargs |= {"choices": list(typing.get_args(kind)), "type": type(typing.get_args(kind)[0])}
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind in (int, float, str, Path):
            kwargs["type"] = kind
        else:
            raise TypeError(f"{model.__name__}.{name}: no flag for {field.annotation}")
        if name in positional:
            kwargs.pop("dest")
            parser.add_argument(name, **kwargs)
        else:
            parser.add_argument("--" + name.replace("_", "-"), default=None, **kwargs)


def given(args: argparse.Namespace, model: type[BaseModel]) -> dict:
    """The model's fields that were given on the command line."""
    return {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}
